#!/usr/bin/env bash
# Issue 25, NOT RUN yet (written 2026-12-06; the GPU time ran out): the FP4 service with and without
# compile_autotune (inductor's coordinate-descent tuning, what torchao's set_inductor_config=True turns on
# for the stock+fp8 peer; measured 4.3% faster per block in docs/gpu/2026-12-06-issue25-block-probe/),
# end to end, and what it costs in time to ready. Stock in the same run. Results into /tmp/r25c
# (device call: carry [".whl"], the script started with setsid in the background).
set -u
R=/tmp/r25c
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full --targets stock,fp4,fp4+autotune --sizes 1024 \
    --steps 28 --repeats 2 --out $R/bench.json
date
touch $R/DONE
