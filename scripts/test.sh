#!/usr/bin/env bash
# The test command: bootstrap the virtual environment, then run the suite on the CPU with the tiny model.
#   ./scripts/test.sh           everything, both tiers (what CI runs); prints the slowest tests and the time
#   ./scripts/test.sh --quick   the in-process tier only: tests marked `socket` (a real server or a service
#                               process of their own) or `slow` are left out; about 2.5 minutes on 2 cores
# Other arguments go to pytest. Fails on any failure, and when no test ran (exit 5).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tier="full suite"
args=(--durations=10)
for a in "$@"; do
  if [ "$a" = --quick ]; then
    tier="quick tier"
    args=(-m "not socket and not slow")
  fi
done
for a in "$@"; do
  [ "$a" = --quick ] || args+=("$a")
done
"$ROOT/scripts/bootstrap.sh" --test || exit 1
cd "$ROOT"
start_us=${EPOCHREALTIME//[.,]/}
"${FLUX_API_VENV:-$ROOT/.venv}/bin/python" -m pytest "${args[@]}"
rc=$?
ds=$(( (${EPOCHREALTIME//[.,]/} - start_us) / 100000 ))  # tenths of a second
echo "test.sh: $tier took $((ds / 10)).$((ds % 10)) s wall time, pytest included (exit $rc)"
[ $rc -eq 5 ] && echo "test.sh: no tests ran: that is a failure" >&2
exit $rc
