#!/usr/bin/env bash
# Issue 25, session of 2026-12-07 11:47 UTC: decides the defaults. The 05:51 run (../2026-12-07-issue25-rows-qkv)
# was cut by the device time before any image was compared. Order, most decisive first: stock; FP4 defaults; FP4
# with every lever written (compile_persistent_rows, fuse_qkv, precompute_modulation, split_group_norm), then with
# fuse_rope too (written in this session); BF16 defaults; BF16 with its fused kernels and every lever, without and with fuse_rope; the peers a user builds (stock+fp8, stock+compile); then
# each FP4 lever alone and BF16's fused kernels alone. Each target's image is compared with stock's and with its
# service's defaults as soon as both ran (HEADLINE lines; bench.summary.json is written after every target, so a
# run cut short keeps them). --concurrency with no values: no images/min runs.
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r40 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-levers-psnr/run.sh > /tmp/r40/run.log 2>&1 &)
#   then calls that wait on /tmp/r40/DONE, copying run.log and bench.summary.json into $OUT every 10 s.
set -u
R=/tmp/r40
source "$(dirname "$0")/../prepare.sh"
# the kernels' CUDA tests (the shifted GroupNorm and the in-place split_linear have not run on a GPU yet)
python3 -m pytest -q -p no:cacheprovider tests/test_fp8_fused.py tests/test_bf16_fused.py tests/test_group_norm.py tests/test_modulation.py tests/test_qk_rope.py -k cuda 2>&1 | tail -3
python3 -m flux_api.bench --model full \
    --targets stock,fp4,fp4+rows+qkv+mod+gn,fp4+rows+qkv+mod+gn+rope,bf16,bf16+fused+rows+qkv+mod+gn,bf16+fused+rows+qkv+mod+gn+rope,stock+fp8,stock+compile,fp4+qkv,fp4+mod,fp4+rows,fp4+gn,bf16+fused \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --concurrency --out $R/bench.json 2>&1 | grep -v Warning
date
touch $R/DONE
