#!/usr/bin/env bash
# Issue 25, third session's last device minutes (about 11): FP4's new defaults as defaults, and fuse_rope on top of
# them, timed and compared (no CUDA tests: run.sh's passed). Results in /tmp/r42.
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r42 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-levers-psnr/rope.sh > /tmp/r42/run.log 2>&1 &)
set -u
R=/tmp/r42
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full --targets stock,fp4,fp4+rope \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --concurrency --out $R/bench.json 2>&1 | grep -v Warning
date
touch $R/DONE
