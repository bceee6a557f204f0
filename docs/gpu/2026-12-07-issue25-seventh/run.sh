#!/usr/bin/env bash
# Issue 25: the seventh session's run (2026-12-07/08 night). First `probe.py` (cuDNN's fp8 attention at FLUX's
# shapes, about a minute), then the benchmark, the decisive targets first so a run cut short still answers: stock;
# FP4 with attention=cudnn-fp8 and FP4's defaults (the image compared); BF16's peer and BF16's new defaults (fused
# kernels and the four levers, untimed alone so far); stock+fp8 last (its full-graph fp8 compile takes about 5 minutes).
# No --concurrency: the device minutes left (issue 25 asks latency).
#   device: carry [".whl"] (`bash docs/gpu/wheels.sh pytest pluggy iniconfig`: with nvidia-cudnn-frontend, and pytest for tests/test_fp8_attention.py); rm -rf /tmp/src && cp -r "$PWD" /tmp/src
#   && cd /tmp/src && mkdir -p /tmp/r47 && (setsid nohup bash docs/gpu/2026-12-07-issue25-seventh/run.sh > /tmp/r47/run.log 2>&1 &)
#   then calls that wait on /tmp/r47/DONE, copying run.log and bench.summary.json into $OUT every 10 s.
set -u
R=/tmp/r47
source "$(dirname "$0")/../prepare.sh"
python3 docs/gpu/2026-12-07-issue25-seventh/probe.py 2>&1 | grep --line-buffered -v Warning
python3 -m pytest -q -p no:cacheprovider tests/test_fp8_attention.py -k "kernel or problem" 2>&1 | tail -15
date
python3 -m flux_api.bench --model full \
    --targets stock,fp4+fp8attn,fp4,bf16,stock+compile,stock+fp8 \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --lora random-r16-0,random-r16-1 \
    --out $R/bench.json 2>&1 | grep --line-buffered -v Warning
date
touch $R/DONE
