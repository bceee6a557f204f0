#!/usr/bin/env bash
# Issue 25's second GPU run (2026-12-06): attention kernels at FLUX's shapes, then the benchmark with the
# services' new default (attention=auto: cuDNN on sm_90+) beside FP4 with PyTorch's default SDPA, stock
# diffusers and both peers, in one run. Results into /tmp/r25b; later device calls wait for /tmp/r25b/DONE.
set -u
R=/tmp/r25b
mkdir -p $R
cd "$(dirname "$0")/../../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { echo PIP FAILED; touch $R/DONE; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
nproc
python3 -c "import torch, diffusers, torchao, fastapi, PIL, transformers; print('versions', torch.__version__, diffusers.__version__, torchao.__version__, fastapi.__version__, PIL.__version__, transformers.__version__)"
date
python3 docs/gpu/2026-12-06-issue25-attention/attention.py --out $R/attention.json
date
python3 -m flux_api.bench --model full --targets stock,fp4,fp4+sdpa,bf16,stock+fp8,stock+compile --sizes 1024 --steps 28 \
    --concurrency --repeats 2 --unseen 768 --out $R/bench.json
date
touch $R/DONE
