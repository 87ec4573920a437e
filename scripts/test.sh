#!/usr/bin/env bash
# Every test: set up (if needed), then pytest, which includes the cross-language tests and runs
# the Julia package's own test suite (julia/FeedbackAlignment/test/runtests.jl) directly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest "$@"
