#!/usr/bin/env bash
# Issue 25's GPU run (2026-12-06), everything in one go, results into /tmp/r25 (README.md beside this).
# Started in the background (setsid) by the first device call; later calls wait for /tmp/r25/DONE.
# Wheels: .whl/ (diffusers, fastapi and the rest; the image has torch, transformers, accelerate).
set -u
R=/tmp/r25
mkdir -p $R
cd "$(dirname "$0")/../../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { echo PIP FAILED; touch $R/DONE; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
nproc
python3 -c "import torch, diffusers, torchao, fastapi, PIL, transformers; print('versions', torch.__version__, diffusers.__version__, torchao.__version__, fastapi.__version__, PIL.__version__, transformers.__version__)"
date
python3 -m flux_api.bench --model full --targets stock,fp4,bf16,stock+fp8,stock+compile --sizes 1024 --steps 28 \
    --concurrency --repeats 2 --unseen 768 --out $R/bench.json
date
MODEL=$(python3 -c "from flux_api.random_model import full_model; print(full_model()[0])")
python3 docs/gpu/2026-12-06-issue25/phases.py --service fp4 --model "$MODEL" --out $R 2>&1 | grep -v Warning
gzip -f $R/fp4-trace.json
date
touch $R/DONE
