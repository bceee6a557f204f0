#!/usr/bin/env bash
# Create the project's virtual environment (.venv) on first run and install the project into it.
# On a machine without an NVIDIA GPU, torch is installed first as torch==2.13.0 (set FLUX_API_TORCH to
# change it; elsewhere add PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU build),
# so that no multi-GB CUDA build of torch lands on a CPU-only machine. With a GPU, the CUDA build and
# bitsandbytes are installed. Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLUX_API_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PY" -m venv "$VENV"
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
