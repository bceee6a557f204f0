#!/usr/bin/env bash
# Issue 25, a probe, NOT RUN yet (written 2026-12-06; no GPU machine could be started for it): does
# inductor's coordinate-descent tuning (what torchao's set_inductor_config=True turns on for the
# stock+fp8 peer) speed up the FP4 service's regionally compiled step, and what does it cost in time to
# ready? Stock in the same run. Results into /tmp/r25c (device call: carry [".whl"], setsid in the background).
set -u
R=/tmp/r25c
source "$(dirname "$0")/../prepare.sh"
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 python3 -m flux_api.bench --model full --targets stock,fp4 --sizes 1024 \
    --steps 28 --repeats 2 --out $R/bench.json
date
touch $R/DONE
