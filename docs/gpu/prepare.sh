# Sourced by the GPU run scripts written for a run still to come (the dated folders keep their scripts as
# they ran): installs the carried wheels (.whl/, git-ignored; the image has torch, transformers and
# accelerate) into /tmp/site, sets PYTHONPATH, and prints the GPU and the versions. Needs $R (results dir).
# docs/gpu/wheels.sh fills .whl/ on the CPU machine before the run.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mkdir -p "$R"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo PIP FAILED; touch "$R/DONE"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers, torchao; print('versions', torch.__version__, diffusers.__version__, torchao.__version__, 'cuDNN', torch.backends.cudnn.version(), 'NCCL', torch.cuda.nccl.version())"
date
