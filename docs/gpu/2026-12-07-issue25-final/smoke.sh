#!/usr/bin/env bash
# Issue 25: what five minutes of device time could still answer after run.sh never got a machine (2026-12-07,
# fifth session): that compile_vae + compile_text_encoder (never run on a GPU) start, serve, and compile nothing
# after warm-up, and FP4's latency with them, to hold against FP4's defaults on an H100 in earlier runs (2.724 s).
#   device: carry [".whl"]; same launch as run.sh, with R=/tmp/r45.
set -u
R=/tmp/r45
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full --targets fp4+vae+t5 --sizes 1024 --steps 28 --repeats 3 --unseen 768 \
    --out $R/bench.json 2>&1 | grep --line-buffered -v Warning
date
touch $R/DONE
