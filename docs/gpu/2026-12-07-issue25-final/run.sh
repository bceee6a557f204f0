#!/usr/bin/env bash
# Issue 25: the fifth session's run (2026-12-07, evening). next.sh in ../2026-12-07-issue25-rope-bf16 trimmed to
# fit one 30-minute device budget as the "done" run: the rope kernel probe dropped (fuse_rope stays off, measured
# slower), targets most decisive first so a cut-off run still answers: stock; FP4's defaults and FP4 with
# compile_vae + compile_text_encoder; BF16 with everything measured not slower (fused kernels, the levers,
# +vae+t5; split_group_norm is moot under compile_vae) and BF16's defaults; then the peers a user builds
# (stock+compile; last stock+fp8, whose full-graph fp8 compile took 302-305 s: FP4's 0.50x is the stricter bar).
# Refused starts (about 20 of the 30 device minutes) left about 9 minutes: FP4 +vae+t5 first, then its defaults;
# BF16's levers are no longer measured apart from +vae+t5.
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r44 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-final/run.sh > /tmp/r44/run.log 2>&1 &)
#   then calls that wait on /tmp/r44/DONE, copying run.log and bench.summary.json into $OUT every 10 s.
set -u
R=/tmp/r44
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full \
    --targets stock,fp4+vae+t5,fp4,bf16+fused+rows+qkv+mod+vae+t5,bf16,stock+compile,stock+fp8 \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --concurrency --lora random-r16-0,random-r16-1 \
    --out $R/bench.json 2>&1 | grep --line-buffered -v Warning
date
touch $R/DONE
