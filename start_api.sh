#!/usr/bin/env bash
# FP4 (quantized) service on port 8000.  ./start_api.sh [-g 0,1] [-p PORT] [--model SRC] [--backend NAME]
exec "$(dirname "${BASH_SOURCE[0]}")/scripts/launch.sh" fp4 "$@"
