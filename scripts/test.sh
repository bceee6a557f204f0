#!/usr/bin/env bash
# The test command: bootstrap the virtual environment, then run the suite on the CPU with the tiny model.
#   ./scripts/test.sh           everything, both tiers (what CI runs); prints the slowest tests and the time
#   ./scripts/test.sh --quick   the in-process tier only: tests marked `socket` (a real server or a service
#                               process of their own) or `slow` are left out, and `twin` (the FP4 run of a
#                               test that runs on both services: the quick tier checks it on BF16; the
#                               core image contracts are not twins and run on both)
# Other arguments go to pytest. Fails on any failure, and when no test ran (exit 5).
#
# The test files are spread over FLUX_TEST_WORKERS processes (pytest-xdist, --dist loadfile: a file's
# tests stay in one process, with its module fixtures; default: the cores, at most 4), each with its
# share of the cores for torch (unless OMP_NUM_THREADS is set). FLUX_TEST_WORKERS=1, --pdb or your own
# -n: one process, or the processes you chose.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tier="full suite"
args=(--durations=10)
for a in "$@"; do
  if [ "$a" = --quick ]; then
    tier="quick tier"
    # test_fuzz.py is socket and slow as a whole, and costly even to collect (schemathesis builds its cases
    # at collection, ~5 s a process): not imported at all here
    args+=(-m "not socket and not slow and not twin" --ignore=tests/test_fuzz.py)
  else
    args+=("$a")
  fi
done
"$ROOT/scripts/bootstrap.sh" --test || exit 1
cd "$ROOT"
cores=$(nproc)
own=""
workers=${FLUX_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
if ! [[ "$workers" =~ ^[0-9]+$ ]]; then
  echo "test.sh: FLUX_TEST_WORKERS must be a number of processes, not '$workers'" >&2
  exit 2
fi
for a in "${args[@]}"; do  # options that want one process, or that choose the processes themselves
  case "$a" in --pdb|--trace|-n|-n[0-9]*|--numprocesses*|no:xdist) workers=1; own="as given" ;; esac
done
if [ "$workers" -gt 1 ]; then
  args=(-n "$workers" --dist loadfile "${args[@]}")
  # one torch thread pool per worker, the cores shared out (torch would otherwise take them all in each)
  : "${OMP_NUM_THREADS:=$(( cores / workers > 0 ? cores / workers : 1 ))}"
  export OMP_NUM_THREADS
fi
# Let Python cache compiled modules (a set PYTHONDONTWRITEBYTECODE, as in some sandboxes and CI images, made
# every run recompile, and pytest assertion-rewrite, the ~400 modules of its plugins: ~5 s a process), in
# the tests and the service processes they start. The caches are __pycache__ folders in the virtual
# environment, flux_api/ and tests/, which git ignores (the wheel test copies the tree without them).
unset PYTHONDONTWRITEBYTECODE
start_us=${EPOCHREALTIME//[.,]/}
"${FLUX_API_VENV:-$ROOT/.venv}/bin/python" -m pytest "${args[@]}"
rc=$?
ds=$(( (${EPOCHREALTIME//[.,]/} - start_us) / 100000 ))  # tenths of a second
echo "test.sh: $tier took $((ds / 10)).$((ds % 10)) s wall time, pytest included, ${own:-$workers} worker(s) (exit $rc)"
[ $rc -eq 5 ] && echo "test.sh: no tests ran: that is a failure" >&2
exit $rc
