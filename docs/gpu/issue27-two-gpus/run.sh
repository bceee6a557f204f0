#!/usr/bin/env bash
# Issue 27's GPU run, ready for a machine of 2 GPUs (not run yet: no multi-GPU kind has been lent).
# One 1024x1024 image, 28 steps: each service on one GPU (+single) against placement=parallel over both,
# stock diffusers in the same run; PSNR of each target against stock is in the table (the parallel image
# should be the single-GPU image up to rounding). Results into /tmp/r27; later device calls wait for DONE.
#   device: kind nvidia-h100-x2 (or nvidia-h200-x2), carry [".whl"]
#   first call: mkdir -p /tmp/r27 && (setsid nohup bash docs/gpu/issue27-two-gpus/run.sh > /tmp/r27/run.log 2>&1 &)
set -u
R=/tmp/r27
source "$(dirname "$0")/../prepare.sh"
export CUDA_VISIBLE_DEVICES=0,1
nvidia-smi topo -m
python3 -m flux_api.bench --model full --targets stock,bf16+single,bf16+parallel,fp4+single,fp4+parallel \
    --sizes 1024 --steps 28 --concurrency --repeats 2 --unseen 768 --out $R/bench.json
date
touch $R/DONE
