#!/usr/bin/env bash
# Issue 15 on 2 GPUs: images/min through Ray Serve with one BF16 replica (one GPU), then two (one GPU each),
# FLUX.1's architecture with random weights, the service's defaults (compile=auto, warm-up at load).
set -uo pipefail
t0=$(date +%s)
mkdir -p /tmp/site15 && xz -dc .gpu/ray15/site.tar.xz | tar -C /tmp/site15 -xf - || exit 1
export PYTHONPATH=/tmp/site15:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import ray, ray.serve, fastapi, diffusers, torch; print('ray', ray.__version__, 'diffusers', diffusers.__version__, 'torch', torch.__version__, 'gpus', torch.cuda.device_count())" || exit 1
echo "unpacked in $(( $(date +%s) - t0 )) s"
(while true; do nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader; sleep 15; done) > "$OUT/smi.csv" 2>&1 &
timeout $((585 - ($(date +%s) - t0))) python3 scripts/bench_ray.py --model full --gpus-per-replica 1 --replicas 1,2 \
  --sides "${1:-ray}" --size 1024 --steps 28 --requests 8 --concurrency 4 --rounds 2 --warmup 2 --settings '{}' \
  --ray-logs --out "$OUT/bench_ray_gpu.json" > "$OUT/log.txt" 2>&1
echo "rc=$?"
grep -v "_pytree\|Failed to load\|^W1\|^\s*$" "$OUT/log.txt" | grep -i -E "^ray x|^plain|images/min|replica|error|Traceback|ready|full-size|^\{|x the" | cut -c1-400 | tail -40
