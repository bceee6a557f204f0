#!/usr/bin/env bash
# Issue 25: the next run, written 2026-12-07 (fourth session) and NOT RUN yet. fuse_rope measured slower on FP4 in
# run.sh's run (0.0958 -> 0.0987 s a step; LoRA / base 1.075 -> 1.099), so first the kernel probe that says where:
# the kernel alone against inductor's code at 4 / 8 / 16 warps, and with the attention after it (about a minute).
# Then, most decisive first: stock; BF16 with its fused kernels and the four levers (no fuse_rope) and BF16's
# defaults (the image compared as soon as both ran); compile_vae and compile_text_encoder (T5's blocks, new) on top
# of FP4's defaults, and FP4's defaults; BF16 with everything but fuse_rope and split_group_norm (compile_vae
# compiles the norms); the peers a user builds (stock+compile, then stock+fp8, whose full-graph fp8 compile took 302-305 s).
# About 3.5 minutes a service target (most of it the start), 20 minutes in all.
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r43 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-rope-bf16/next.sh > /tmp/r43/run.log 2>&1 &)
#   then calls that wait on /tmp/r43/DONE, copying run.log, rope_probe.log and bench.summary.json into $OUT every 10 s.
set -u
R=/tmp/r43
source "$(dirname "$0")/../prepare.sh"
timeout 150 python3 docs/gpu/2026-12-07-issue25-levers-psnr/rope_probe.py 2>&1 | grep -v Warning | tee $R/rope_probe.log | tail -3
python3 -m flux_api.bench --model full \
    --targets stock,bf16+fused+rows+qkv+mod+gn,bf16,fp4+vae+t5,fp4,bf16+fused+rows+qkv+mod+vae+t5,stock+compile,stock+fp8 \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --concurrency --lora random-r16-0,random-r16-1 \
    --out $R/bench.json 2>&1 | grep -v Warning
date
touch $R/DONE
