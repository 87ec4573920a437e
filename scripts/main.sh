#!/usr/bin/env bash
# The main job: set up (if needed), then train BP, FA and DFA on Fashion-MNIST and print a table.
# The Julia system image (4-9 min to build) is not waited for: training starts without it if need be,
# and the build starts in the background afterwards (PYJLFA_BUILD_IMAGE=0: not at all).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${PYJLFA_BUILD_IMAGE:-background}
PYJLFA_BUILD_IMAGE=later bash scripts/setup.sh
"${PYTHON:-python3}" examples/compare_rules.py "$@"
case "$build" in
  0) ;;
  1|foreground) bash scripts/build_image.sh || true ;;
  *) bash scripts/build_image.sh --background ;;
esac
