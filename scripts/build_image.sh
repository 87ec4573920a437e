#!/usr/bin/env bash
# Builds pyjlfa's Julia system image (julia/FeedbackAlignment/precompile/build_image.jl) unless the
# cache already holds one for the current sources. 4-9 minutes on 2 cores. Nothing waits for it:
# until it is there, pyjlfa starts Julia without it (slower first steps) and says so.
#
#     bash scripts/build_image.sh               # build now; waits for a build already running
#     bash scripts/build_image.sh --background  # start the build detached (niced) and return at once
#
# One build at a time per cache folder (flock on <cache>/build.lock); the output goes to <cache>/build.log.
set -euo pipefail
cd "$(dirname "$0")/.."

julia_exe=${PYJLFA_JULIA:-$(command -v julia || true)}
[ -n "$julia_exe" ] || { echo "build_image: no julia found (run scripts/setup.sh first)" >&2; exit 1; }
cache=${PYJLFA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pyjlfa}
mkdir -p "$cache"
lock=$cache/build.lock
log=$cache/build.log
builder=julia/FeedbackAlignment/precompile/build_image.jl

if [ "${1:-}" = "--background" ]; then
  if status=$("$julia_exe" --startup-file=no "$builder" --check 2>&1); then
    echo "setup: $status"
    exit 0
  fi
  if ! flock -n "$lock" true; then
    echo "setup: a Julia system image is already being built in the background (log: $log)"
    exit 0
  fi
  # Detached from this shell and its output (so a pipe reading main.sh ends when main.sh does);
  # nice, so that the work the user started keeps the CPU.
  setsid nohup nice -n 10 flock "$lock" bash -c '"$@" >"$0" 2>&1' "$log" "$julia_exe" --startup-file=no "$builder" \
    </dev/null >/dev/null 2>&1 &
  echo "setup: building the Julia system image in the background (4-9 min; log: $log); until it is" \
       "ready, pyjlfa starts without it (slower first steps)"
  exit 0
fi

start=$(date +%s)
# (the log is opened once the lock is held: a running build's log is not cut short)
if flock "$lock" bash -c '"$@" >"$0" 2>&1' "$log" "$julia_exe" --startup-file=no "$builder" "$@"; then
  echo "setup: $(tail -n1 "$log") (step took $(( $(date +%s) - start )) s)"
else
  echo "setup: building the Julia system image FAILED after $(( $(date +%s) - start )) s; pyjlfa will load" \
       "the package without it (slower start). Last lines of $log:" >&2
  tail -n 15 "$log" >&2
  exit 1
fi
