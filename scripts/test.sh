#!/usr/bin/env bash
# The test command: bootstrap the virtual environment, then run the suite on the CPU with the tiny model.
#   ./scripts/test.sh           everything, both tiers (what CI runs); prints the slowest tests and the time
#   ./scripts/test.sh --quick   the in-process tier only: tests marked `socket` (a real server or a service
#                               process of their own) or `slow` are left out
# Other arguments go to pytest. Fails on any failure, and when no test ran (exit 5).
#
# Two passes. The first spreads the test files over FLUX_TEST_WORKERS processes (pytest-xdist,
# --dist loadfile: a file's tests stay in one process, with its module fixtures; default: the cores, at
# most 4), each with its share of the cores for torch. The second runs the tests marked `serial` in one
# process: the OpenAPI fuzz, whose cases schemathesis gives one node id, which xdist cannot share out
# (serial tests are socket tests, so --quick has one pass).
# FLUX_TEST_WORKERS=1: one process, one pass.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tier="full suite"
marks=""
args=(--durations=10)
for a in "$@"; do
  if [ "$a" = --quick ]; then
    tier="quick tier"
    marks="not socket and not slow"
  else
    args+=("$a")
  fi
done
"$ROOT/scripts/bootstrap.sh" --test || exit 1
cd "$ROOT"
PY="${FLUX_API_VENV:-$ROOT/.venv}/bin/python"
cores=$(nproc)
workers=${FLUX_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
start_us=${EPOCHREALTIME//[.,]/}
if [ "$workers" -le 1 ]; then
  "$PY" -m pytest ${marks:+-m "$marks"} "${args[@]}"
  rc=$?
else
  # One torch thread pool per worker, the cores shared out (torch would otherwise take them all in each).
  OMP_NUM_THREADS=$(( cores / workers > 0 ? cores / workers : 1 )) \
    "$PY" -m pytest -n "$workers" --dist loadfile -m "${marks:-not serial}" "${args[@]}"
  rc1=$?
  rc2=5
  if [ -z "$marks" ]; then  # the quick tier has no serial tests: they are socket tests (conftest checks)
    "$PY" -m pytest -m serial "${args[@]}"
    rc2=$?
  fi
  # 5 is "no tests ran": fine for one pass (a file given on the command line has no serial tests),
  # a failure when both ran nothing.
  if [ $rc1 -ne 0 ] && [ $rc1 -ne 5 ]; then rc=$rc1
  elif [ $rc2 -ne 0 ] && [ $rc2 -ne 5 ]; then rc=$rc2
  elif [ $rc1 -eq 5 ] && [ $rc2 -eq 5 ]; then rc=5
  else rc=0
  fi
fi
ds=$(( (${EPOCHREALTIME//[.,]/} - start_us) / 100000 ))  # tenths of a second
echo "test.sh: $tier took $((ds / 10)).$((ds % 10)) s wall time, pytest included, $workers worker(s) (exit $rc)"
[ $rc -eq 5 ] && echo "test.sh: no tests ran: that is a failure" >&2
exit $rc
