#!/usr/bin/env bash
# Superseded by ../2026-12-07-issue25-rope-bf16/run.sh (fourth session), which ran these targets reordered.
# Issue 25: the next run, written 2026-12-07 (third session) and not run as written: what run.sh's run lost to the device
# time. FP4's defaults now include compile_persistent_rows, fuse_qkv, precompute_modulation and split_group_norm, so
# `fp4` is them. In order, most decisive first: stock; FP4 defaults; FP4 + fuse_rope (timed and compared with the
# defaults); BF16 with everything (its fused kernels, the four levers, fuse_rope) and BF16's defaults (compared as
# soon as both ran); the peers a user builds (stock+fp8, stock+compile); then BF16 everything but fuse_rope.
# --concurrency with no values: no images/min runs. About 3.5 minutes a service target (most of it the start).
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r41 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-levers-psnr/next.sh > /tmp/r41/run.log 2>&1 &)
#   then calls that wait on /tmp/r41/DONE, copying run.log, rope_probe.log and bench.summary.json into $OUT every 10 s.
set -u
R=/tmp/r41
source "$(dirname "$0")/../prepare.sh"
python3 -m pytest -q -p no:cacheprovider tests/test_qk_rope.py tests/test_group_norm.py -k cuda 2>&1 | tail -3
# fuse_rope's kernel against inductor's code, alone and with the attention, at 4 / 8 / 16 warps (about a minute)
timeout 300 python3 "$(dirname "$0")/rope_probe.py" 2>&1 | grep -v Warning | tee $R/rope_probe.log | tail -3
python3 -m flux_api.bench --model full \
    --targets stock,fp4,fp4+rope,bf16+fused+rows+qkv+mod+gn+rope,bf16,stock+fp8,stock+compile,bf16+fused+rows+qkv+mod+gn \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --concurrency --out $R/bench.json 2>&1 | grep -v Warning
date
touch $R/DONE
