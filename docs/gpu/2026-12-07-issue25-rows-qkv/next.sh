#!/usr/bin/env bash
# Issue 25: the next run, written 2026-12-07 and NOT RUN yet. run.sh's run (run.log) was cut by the device time
# before any image was compared and before BF16's fused kernels met their comparison; this one decides the defaults:
# each target's image is compared with stock's and with its service's defaults as soon as both ran (the bench's
# HEADLINE lines and bench.summary.json, both written after every target: a run cut short keeps them). In order:
# FP4 with every lever written (compile_persistent_rows, fuse_qkv, precompute_modulation, split_group_norm), BF16
# with its fused kernels (now off by default) and with everything; then each FP4 lever alone; then the peers.
# --concurrency with no values: no images/min runs (about a minute a target in run.sh's run).
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r32 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-rows-qkv/next.sh > /tmp/r32/run.log 2>&1 &)
#   and keep a call waiting on /tmp/r32/DONE at all times, copying run.log and bench.summary.json into $OUT
#   every 10 s (a call cut by the device time still returns them); a machine no call holds is given back after 30 s idle.
set -u
R=/tmp/r32
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full \
    --targets stock,fp4,fp4+rows+qkv+mod+gn,bf16,bf16+fused,bf16+fused+rows+qkv+mod+gn,fp4+qkv,fp4+mod,fp4+rows,fp4+gn,stock+fp8,stock+compile \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --concurrency --out $R/bench.json 2>&1 | grep -v Warning
date
touch $R/DONE
