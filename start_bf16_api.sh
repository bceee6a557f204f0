#!/usr/bin/env bash
# BF16 (full precision) service on port 8001.  ./start_bf16_api.sh [-g 0,1] [-p PORT] [--model SRC]
exec "$(dirname "${BASH_SOURCE[0]}")/scripts/launch.sh" bf16 "$@"
