#!/usr/bin/env bash
# Issue 25: the sixth session's run (2026-12-07, night): ../2026-12-07-issue25-final/run.sh reordered for the
# 22 device minutes left after refused starts, the decisive targets first so a run cut short still answers:
# stock; FP4 with compile_vae + compile_text_encoder and FP4's defaults (the image compared, time to ready);
# BF16 with everything measured not slower and its peer stock+compile; BF16's defaults; stock+fp8 last (its
# full-graph fp8 compile takes about 5 minutes). Main at this run: PNG level 1 deflates runs only (b6d605d).
#   device: carry [".whl"] (docs/gpu/wheels.sh); rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src &&
#   mkdir -p /tmp/r46 && (setsid nohup bash docs/gpu/2026-12-07-issue25-sixth/run.sh > /tmp/r46/run.log 2>&1 &)
#   then calls that wait on /tmp/r46/DONE, copying run.log and bench.summary.json into $OUT every 10 s.
set -u
R=/tmp/r46
source "$(dirname "$0")/../prepare.sh"
python3 -m flux_api.bench --model full \
    --targets stock,fp4+vae+t5,fp4,bf16+fused+rows+qkv+mod+vae+t5,stock+compile,bf16,stock+fp8 \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --concurrency --lora random-r16-0,random-r16-1 \
    --out $R/bench.json 2>&1 | grep --line-buffered -v Warning
date
touch $R/DONE
