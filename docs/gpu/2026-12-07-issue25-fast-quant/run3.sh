#!/usr/bin/env bash
# Issue 25, 2026-12-07, third run (as it ran, inline, on the machine still warm from run2.sh): FP4 with
# compile_vae, and with compile_vae and compile_autotune, against stock. The device time ran out while the
# autotuned service was still warming up: only stock and fp4+vae finished (h100-run3-bench.partial.json).
cd /tmp/src && export R=/tmp/r28 && mkdir -p $R
source docs/gpu/prepare.sh
python3 -m flux_api.bench --model full --targets stock,fp4+vae,fp4+vae+autotune --sizes 1024 --steps 28 \
    --concurrency --repeats 2 --unseen 768 --out /tmp/r28/bench.json
touch /tmp/r28/DONE
