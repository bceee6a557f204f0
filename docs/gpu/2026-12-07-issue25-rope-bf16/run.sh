#!/usr/bin/env bash
# Issue 25, 2026-12-07 (fourth session): the run that decides fuse_rope for FP4 and the levers for BF16, with the
# peers in the same run. In order, most decisive first (the device time may cut it): stock; FP4 + fuse_rope; BF16
# with everything (its fused kernels, the four levers, fuse_rope); then FP4's and BF16's defaults (each image
# compared with its variant's as soon as both ran); the peers a user builds: stock+compile, then stock+fp8 last (its full-graph compile of the fp8 model
# took 302-305 s in the 2026-12-06 runs). --concurrency with no values: no images/min runs. Left out for the device
# time (16 minutes left after seven failed starts): the every-layer LoRA (--lora names the two the issue's
# ratios use), fuse_rope's CUDA tests (the kernel's passed on an H100 on
# 2026-12-07; the images compared here check it end to end) and the kernel probe (../2026-12-07-issue25-levers-psnr/).
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r42 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-rope-bf16/run.sh > /tmp/r42/run.log 2>&1 &)
#   then calls that wait on /tmp/r42/DONE, copying run.log and bench.summary.json into $OUT every 10 s.
set -u
R=/tmp/r42
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full \
    --targets stock,fp4+rope,bf16+fused+rows+qkv+mod+gn+rope,fp4,bf16,stock+compile,stock+fp8 \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --concurrency --lora random-r16-0,random-r16-1 --out $R/bench.json 2>&1 | grep -v Warning
date
touch $R/DONE
