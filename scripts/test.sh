#!/usr/bin/env bash
# The test command: bootstrap the virtual environment, then run the whole suite on the CPU with the
# tiny model. Extra arguments go to pytest. Fails on any failure, and when no test ran (exit 5).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh" || exit 1
cd "$ROOT"
"${FLUX_API_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
rc=$?
[ $rc -eq 5 ] && echo "test.sh: no tests ran: that is a failure" >&2
exit $rc
