#!/usr/bin/env bash
# Issue 25 (2026-12-06, night session): First Block Cache per request (`first_block_cache`, the `fast` preset)
# on both services, the services' default path after the blocks' compile moved from module.compile() to each
# block's forward (the same graphs; its speed and PSNR must not move), and `compile_vae` (the VAE's decoder
# compiled) left for a later run (starts failed for 15 minutes of device time). Stock diffusers in the same run. 1024x1024, 28 steps;
# the services' prompt cache off (the benchmark's default: like for like). Thresholds: 1e-6 (nothing skips:
# the cost of running without the CUDA graph), 0.1, 0.2 (the preset's), 1.0 (nearly every step skips: the
# floor). Random weights: how many steps a threshold skips says nothing of the real model; the time a step
# costs, computed or skipped, does.
#   device: carry [".whl"]; first call:
#   rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r25e &&
#   (setsid nohup bash docs/gpu/2026-12-06-issue25-step-cache/run.sh > /tmp/r25e/run.log 2>&1 &)
#   later calls wait for /tmp/r25e/DONE (running from /tmp/src: a later call's copy of the tree cannot change it).
set -u
R=/tmp/r25e
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full --targets stock,fp4,bf16 --sizes 1024 \
    --steps 28 --concurrency --repeats 2 --unseen 768 --first-block-cache 0.000001 0.1 0.2 1.0 --out $R/bench.json
date
touch $R/DONE
