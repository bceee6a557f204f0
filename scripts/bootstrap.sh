#!/usr/bin/env bash
# Create the project's virtual environment (.venv) on first run and install the project into it.
# On a machine without an NVIDIA GPU, torch is installed first as torch==2.13.0 (set FLUX_API_TORCH to
# change it; elsewhere add PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU build),
# so that no multi-GB CUDA build of torch lands on a CPU-only machine. With a GPU, the CUDA build and
# bitsandbytes are installed. Re-running is cheap: it reinstalls only when pyproject.toml changed. It also
# installs Debian's chromium (for the browser test) where it is missing, as root with apt-get.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLUX_API_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# The browser test (tests/test_ui.py) drives Debian's chromium package (never a browser download of
# Playwright's own). CI machines run as root on Debian with only what the repo installs, so install it
# there when it is missing. Where that cannot be done, say so and go on: the test then fails in CI
# (CI=true) and is skipped, saying why, elsewhere.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: /usr/bin/chromium is missing: apt-get update && apt-get install -y chromium (for tests/test_ui.py)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } >&2 \
      || echo "bootstrap: installing chromium failed; tests/test_ui.py cannot run" >&2
  else
    echo "bootstrap: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get):" \
         "tests/test_ui.py cannot run; install Debian's chromium package for it" >&2
  fi
fi

stamp="$VENV/.flux_api-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
[ -f "$stamp" ] && exit 0

pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="gpu,test"
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "${FLUX_API_TORCH:-torch}"
else
  extras="test"
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "${FLUX_API_TORCH:-torch==2.13.0}"
fi
echo "bootstrap: installing flux_api[$extras] into $VENV" >&2
"${pip[@]}" -e "$ROOT[$extras]"
rm -f "$VENV"/.flux_api-*
touch "$stamp"
