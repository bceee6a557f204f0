#!/usr/bin/env bash
# Issue 25 (2026-12-06, evening session): both services with and without compile_autotune (inductor's
# coordinate-descent tuning of the compiled blocks: what torchao's set_inductor_config=True turns on for the
# stock+fp8 peer; measured 4.3% faster per fp8 block in ../2026-12-06-issue25-block-probe/), end to end
# through HTTP, with what it costs in time to ready on a cold inductor cache. Stock diffusers in the same
# run. 1024x1024, 28 steps; the services' prompt cache off (the benchmark's default: like for like).
#   device: carry [".whl"]; first call:
#   mkdir -p /tmp/r25d && (setsid nohup bash docs/gpu/2026-12-06-issue25-autotune/run.sh > /tmp/r25d/run.log 2>&1 &)
#   later calls wait for /tmp/r25d/DONE.
set -u
R=/tmp/r25d
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full --targets stock,fp4,fp4+autotune,bf16,bf16+autotune --sizes 1024 \
    --steps 28 --concurrency --repeats 2 --unseen 768 --out $R/bench.json
date
touch $R/DONE
