#!/usr/bin/env bash
# Downloads, on this (CPU) machine, the wheels a GPU run carries into .whl/ (git-ignored; `run`'s carry [".whl"]),
# for the device image: CPython 3.12 on x86_64 Linux with torch 2.11 and transformers already in it.
# prepare.sh installs them there. About 15 MB, 18 files: under the 64 MiB a run carries, which leaves no room
# for bitsandbytes and Ray together (each is its own run). The versions are the ones docs/PERFORMANCE.md's runs used.
#   bash docs/gpu/wheels.sh            # then: run(carry=[".whl"], command="... source docs/gpu/prepare.sh ...")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    diffusers==0.42.1 torchao==0.18.0 fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv \
    uvicorn opentelemetry-api importlib-metadata annotated-types typing-inspection python-multipart \
    fastapi-offline peft annotated-doc typing-extensions nvidia-cudnn-frontend==1.23.0 "$@"
ls .whl | wc -l | xargs echo "wheels in .whl/:"
du -sh .whl
