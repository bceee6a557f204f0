#!/usr/bin/env bash
# Issue 25 (2026-12-06): the FP4 service's widest fp8 input quantizations fused into one Triton kernel each
# (engine/fp8_fused.py, fp8_rows.py; setting fuse_kernels, on by default). First the block probe (probe.py:
# the kernel's bytes against torchao's arithmetic, the blocks' outputs and ms, fused against unfused, and the
# kernels of one call), then the services end to end against stock diffusers in the same run: FP4 fused (the
# new default), FP4 unfused (before), FP4 fused with compile_vae. --first-block-cache 1.0: the cached path
# after the capture fix of 2026-12-06 must compile nothing after the warm-up (the unrun verify.sh's question).
#   device: carry [".whl"]; first call:
#   rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r25g &&
#   (setsid nohup bash docs/gpu/2026-12-06-issue25-fused-quant/run.sh > /tmp/r25g/run.log 2>&1 &)
#   later calls wait for /tmp/r25g/DONE.
set -u
R=/tmp/r25g
source "$(dirname "$0")/../prepare.sh"
PROBE_OUT=$R/probe.json python3 docs/gpu/2026-12-06-issue25-fused-quant/probe.py 2>&1 | grep -v Warning
date
python3 -m flux_api.bench --model full --targets stock,fp4,fp4+unfused,fp4+vae --sizes 1024 \
    --steps 28 --concurrency --repeats 2 --unseen 768 --first-block-cache 1.0 --out $R/bench.json
date
touch $R/DONE
