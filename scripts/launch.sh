#!/usr/bin/env bash
# Shared launcher behind start_api.sh (fp4) and start_bf16_api.sh (bf16).
#   launch.sh SERVICE [-g 0,1] [-p PORT] [--host HOST] [--model SRC] [--placement P] [--backend NAME]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
service="$1"; shift
script="$( [ "$service" = fp4 ] && echo start_api.sh || echo start_bf16_api.sh )"

usage() {
  cat <<USAGE
usage: ./$script [-g GPUS] [-p PORT] [--host HOST] [--model SRC] [--placement P]$( [ "$service" = fp4 ] && echo " [--backend NAME]")
  -g GPUS       GPU indices, e.g. 0 or 0,1 (sets CUDA_VISIBLE_DEVICES; default: all GPUs)
  -p, --port    port (default $( [ "$service" = fp4 ] && echo 8000 || echo 8001 ))
  --host        bind address (default 127.0.0.1; 0.0.0.0 exposes the service)
  --model SRC   'tiny', a local diffusers folder, or a Hugging Face repo id (default black-forest-labs/FLUX.1-dev)
  --placement P auto | single | balanced | replicas | parallel (one image over the GPUs of -g; see README.md)
$( [ "$service" = fp4 ] && echo "  --backend     auto | nunchaku | bnb-fp4 | bnb-nf4 | torchao-fp8 | torchao-int8")
Every other setting: environment variables FLUX_$(echo "$service" | tr a-z A-Z)_<NAME> (see README.md).
USAGE
}

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -g|--gpus)
      [ $# -ge 2 ] || { echo "error: -g needs a value such as 0 or 0,1" >&2; exit 2; }
      gpus="$2"; shift 2
      if ! [[ "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
        echo "error: -g '$gpus' is not a comma-separated list of GPU indices (e.g. 0 or 0,1)" >&2; exit 2
      fi
      if [ "$(tr ',' '\n' <<<"$gpus" | sort | uniq -d)" != "" ]; then
        echo "error: -g '$gpus' names a GPU twice" >&2; exit 2
      fi
      if command -v nvidia-smi >/dev/null 2>&1 && n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); then
        for g in ${gpus//,/ }; do
          [ "$g" -lt "$n" ] || { echo "error: -g: GPU $g does not exist (this machine has $n: 0..$((n-1)))" >&2; exit 2; }
        done
      fi
      export CUDA_VISIBLE_DEVICES="$gpus" ;;
    -p|--port) [ $# -ge 2 ] || { usage >&2; exit 2; }; args+=(--port "$2"); shift 2 ;;
    --host|--model|--backend|--placement) [ $# -ge 2 ] || { usage >&2; exit 2; }; args+=("$1" "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

"$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
echo "starting the $service service (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<all>})" >&2
exec "${FLUX_API_VENV:-$ROOT/.venv}/bin/python" -m flux_api "$service" "${args[@]}"
