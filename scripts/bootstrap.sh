#!/usr/bin/env bash
# Create the project's virtual environment (.venv) on first run and install the project into it.
#   bootstrap.sh          what serving needs: flux_api (with bitsandbytes where there is a GPU); what the
#                         start scripts run
#   bootstrap.sh --test   that and the test extras (schemathesis, openai, playwright, Ray) and Debian's
#                         chromium for the browser test; what scripts/test.sh runs
# On a machine without an NVIDIA GPU, torch is installed first as torch==2.13.0 (set FLUX_API_TORCH to
# change it; elsewhere add PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU build),
# so that no multi-GB CUDA build of torch lands on a CPU-only machine. With a GPU, the CUDA build and
# bitsandbytes are installed. Re-running is cheap: it reinstalls only when pyproject.toml changed or the
# test extras are asked for the first time. A service never waits for the test extras or a browser.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLUX_API_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
for_tests=false
[ "${1-}" = --test ] && for_tests=true

# The stamp says what is installed for this pyproject.toml: its text is the extras ("" or "gpu" to
# serve, "test" or "gpu,test" for the tests too). Any stamp is enough to serve; the tests need "test".
stamp="$VENV/.flux_api-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [ -f "$stamp" ] && { ! $for_tests || grep -q test "$stamp"; }; then
  installed=true
else
  installed=false
fi

if $for_tests && [ ! -x /usr/bin/chromium ]; then
  # The browser test (tests/test_ui.py) drives Debian's chromium package (never a browser download of
  # Playwright's own). CI machines run as root on Debian with only what the repo installs, so install it
  # there when it is missing. Where that cannot be done, say so and go on: the test then fails in CI
  # (CI=true) and is skipped, saying why, elsewhere.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: /usr/bin/chromium is missing: apt-get update && apt-get install -y chromium (for tests/test_ui.py)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } >&2 \
      || echo "bootstrap: installing chromium failed; tests/test_ui.py cannot run" >&2
  else
    echo "bootstrap: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get):" \
         "tests/test_ui.py cannot run; install Debian's chromium package for it" >&2
  fi
fi
$installed && exit 0

# pip picks torch: it honours this machine's pip configuration, which may point at a local wheel (see
# above). uv installs it and everything else, in parallel: about 12 s here where pip took about 130 s. The
# venv is made without pip (ensurepip alone takes 7 s), with the pip of the Python that makes it as
# the tool where it has one; uv then puts pip into the venv.
# Bytecode: Python writes it for what a process imports, on first import (a first start pays about
# 25 s for it, once). Where PYTHONDONTWRITEBYTECODE forbids that, every start would compile torch
# again (37 s instead of 12), so what this run installs is compiled here (the whole venv on a first
# run: about 45 s on 2 cores, once); also for the tests, whose many processes would each compile the
# same modules at once. uv compiles only what it installs: packages already in the venv keep what they had.
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  if "$PY" -m pip --version >/dev/null 2>&1; then "$PY" -m venv --without-pip "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
tool_py="$VENV/bin/python"
"$tool_py" -m pip --version >/dev/null 2>&1 || tool_py="$PY"
pip=("$tool_py" -m pip install -q --disable-pip-version-check)
extras=()
torch_spec="${FLUX_API_TORCH:-torch==2.13.0}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras+=(gpu)
  torch_spec="${FLUX_API_TORCH:-torch}"
fi
$for_tests && extras+=(test)
extras="$(IFS=,; echo "${extras[*]}")"
target="$ROOT${extras:+[$extras]}"
torch_req=()
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  report="$(mktemp)"
  "${pip[@]}" --dry-run --no-deps --ignore-installed --report "$report" "$torch_spec"
  torch_req=("torch @ $("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["install"][0]["download_info"]["url"])' "$report")")
  rm -f "$report"
fi
echo "bootstrap: installing ${torch_req[*]:+${torch_req[*]} and }flux_api${extras:+[$extras]} into $VENV" >&2
compile=()
{ $for_tests || [ -n "${PYTHONDONTWRITEBYTECODE-}" ]; } && compile=(--compile-bytecode)
uv="$VENV/.tools/bin/uv"
if [ -x "$uv" ] || "${pip[@]}" --no-compile --target "$VENV/.tools" uv; then
  "$uv" pip install -q --python "$VENV/bin/python" "${compile[@]}" "${torch_req[@]}" pip -e "$target"
else
  echo "bootstrap: uv could not be installed; installing with pip (slower)" >&2
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip -q
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check $( [ ${#compile[@]} = 0 ] && echo --no-compile) "${torch_req[@]}" -e "$target"
fi
rm -f "$VENV"/.flux_api-*
echo "$extras" > "$stamp"
