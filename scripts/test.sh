#!/usr/bin/env bash
# Every test: set up (if needed), then pytest, which includes the cross-language tests and runs
# the Julia package's own test suite (julia/FeedbackAlignment/test/runtests.jl) directly.
# A missing Julia system image is built in the background meanwhile (nice'd); the suite runs on
# whatever image is there when it starts, and tests/test_image.py (run last) waits for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest "$@"
