#!/usr/bin/env bash
# The main job: set up (if needed), then train BP, FA and DFA on Fashion-MNIST and print a table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" examples/compare_rules.py "$@"
