#!/usr/bin/env bash
# Everything a fresh Debian machine of this project's kind needs: Python deps (editable install),
# a Julia (one on PATH, else Debian bullseye's julia 1.5.3), and the Fashion-MNIST data files.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

PY=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_updated=0
apt_update() { [ $apt_updated -eq 1 ] || { $SUDO apt-get update -qq; apt_updated=1; }; }

# 1. Julia: prefer whatever is on PATH (or named by PYJLFA_JULIA); otherwise Debian's archive.
if [ -n "${PYJLFA_JULIA:-}" ] && [ -x "${PYJLFA_JULIA}" ]; then
  echo "setup: using Julia at $PYJLFA_JULIA"
elif command -v julia >/dev/null 2>&1; then
  echo "setup: using Julia at $(command -v julia)"
else
  echo "setup: installing julia from Debian bullseye (no Julia on PATH)"
  src=/etc/apt/sources.list.d/pyjlfa-bullseye.list
  if [ ! -f "$src" ]; then
    # Same mirror the machine's bookworm entries use; pinned low so bookworm stays preferred.
    mirror=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
                grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'; } \
              | grep -E '/debian/?$' | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "deb ${mirror%/} bullseye main" | $SUDO tee "$src" >/dev/null
    printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' \
      | $SUDO tee /etc/apt/preferences.d/pyjlfa-bullseye >/dev/null
    apt_updated=0
  fi
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq julia/bullseye >/dev/null
  echo "setup: $(julia --version)"
fi

# Debian's julia 1.5.3 (bullseye) with bookworm's libunwind 1.6 crashes (SIGSEGV) whenever a
# compiled function throws: the unwinder cannot walk its JIT frames. Bullseye's libunwind 1.3.2,
# placed in Julia's private library folder (first on libjulia's RUNPATH), fixes Julia alone.
julia_exe=${PYJLFA_JULIA:-$(command -v julia)}
throws_ok() { ( "$julia_exe" --startup-file=no -e 'f(x) = x > 0 ? throw(ArgumentError("x")) : x; g() = try f(1) catch e; e end; g()' ) >/dev/null 2>&1; }
if ! throws_ok; then
  privdir=$(dirname "$(readlink -f /usr/lib/x86_64-linux-gnu/libjulia.so.1 2>/dev/null || echo /nonexistent/x)")/julia
  if [ -d "$privdir" ] && "$julia_exe" --version | grep -q '1\.5\.'; then
    echo "setup: $("$julia_exe" --version) crashes on exceptions with this libunwind; adding bullseye's libunwind8 to $privdir"
    tmp=$(mktemp -d)
    apt_update
    (cd "$tmp" && apt-get download -qq libunwind8/bullseye 2>/dev/null && dpkg -x libunwind8_*.deb x)
    $SUDO cp -a "$tmp"/x/usr/lib/x86_64-linux-gnu/libunwind.so.8* "$privdir"/
    rm -rf "$tmp"
  fi
  throws_ok || { echo "setup: $julia_exe still crashes when an exception is thrown" >&2; exit 1; }
fi

# 2. Fashion-MNIST from Debian's package (IDX files, gzip).
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && [ -z "${PYJLFA_FASHION_MNIST:-}" ]; then
  echo "setup: installing dataset-fashion-mnist"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# 2b. Chromium (Debian's package), with which tests/test_docs.py opens the built documentation site.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "setup: installing chromium (the documentation site's browser test)"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# 3. Python side: the package itself (editable, so the bundled Julia package is the source tree's)
#    and the test tools (the `test` extra: pytest, scikit-learn, dask, matplotlib, pandas, hypothesis, mkdocs, ...).
# (run from / so that the current folder is not on sys.path: this asks whether *this* tree is installed,
# or put on PYTHONPATH, as a second checkout of the repository may be.)
if ! (cd / && "$PY" -c "import pathlib, sys, pytest, sklearn, safetensors, dask, distributed, matplotlib, pandas, hypothesis, mkdocs, material, mkdocstrings_handlers.python, pyjlfa; sys.exit(pathlib.Path(pyjlfa.__file__).parent.resolve() != pathlib.Path(sys.argv[1]).resolve())" "$root/pyjlfa") >/dev/null 2>&1; then
  echo "setup: pip install -e .[test]"
  "$PY" -m pip install -q -e ".[test]"
fi
# Bytecode for the package's modules once, here: where PYTHONDONTWRITEBYTECODE is set (as on this
# project's machines) every process would otherwise compile them again (0.2 s of each start).
"$PY" -m compileall -q pyjlfa >/dev/null || true

# 4. A prebuilt Julia system image with the package's common paths compiled in, so a new process
#    trains at once (julia/FeedbackAlignment/precompile/build_image.jl; kept in ~/.cache/pyjlfa,
#    rebuilt when the sources change). It takes 4-9 minutes, so nothing waits for it: by default it
#    is built in the background (scripts/build_image.sh --background) while pyjlfa starts without it.
#    PYJLFA_BUILD_IMAGE=0 skips it, =1 builds it now and waits, =later leaves it to the caller (main.sh).
case "${PYJLFA_BUILD_IMAGE:-background}" in
  0) echo "setup: Julia system image skipped (PYJLFA_BUILD_IMAGE=0): pyjlfa starts Julia without it (slower" \
          "first steps); \`bash scripts/build_image.sh\` builds it (4-9 min)" ;;
  later) ;;
  1|foreground) bash scripts/build_image.sh || true ;;   # a failed build is reported; the set-up goes on
  *) bash scripts/build_image.sh --background ;;
esac
