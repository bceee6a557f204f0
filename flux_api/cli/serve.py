"""`flux-api serve fp4|bf16`: the command scripts/launch.sh builds (start_api.sh, start_bf16_api.sh), in
Python: `-g` is checked the same way and exported as CUDA_VISIBLE_DEVICES, the other options become
`python -m flux_api` flags. tests/test_cli.py runs both on the same arguments and compares the results.

The CLI does not serve anything itself: it replaces its own process with the service's (os.execvpe), so
SIGTERM and Ctrl-C from a terminal or a process manager go straight to uvicorn.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field


class BadGpus(ValueError):
    """A -g value that launch.sh would refuse too (and with the same words)."""


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set on top of the caller's environment

    def shell(self) -> str:
        """The command as a shell line, `CUDA_VISIBLE_DEVICES=0 /venv/bin/python -m flux_api bf16 ...`."""
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env.items()), *map(shlex.quote, self.argv)])


def visible_gpu_count() -> int | None:
    """How many GPUs nvidia-smi lists; None where there is no nvidia-smi (then -g is not checked
    against the machine, as in launch.sh)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(line.startswith("GPU") for line in out.stdout.splitlines()) if out.returncode == 0 else None


def check_gpus(gpus: str, count: int | None) -> str:
    if not re.fullmatch(r"[0-9]+(,[0-9]+)*", gpus):
        raise BadGpus(f"-g '{gpus}' is not a comma-separated list of GPU indices (e.g. 0 or 0,1)")
    indices = gpus.split(",")
    if len(set(indices)) != len(indices):
        raise BadGpus(f"-g '{gpus}' names a GPU twice")
    if count is not None:
        for g in indices:
            if int(g) >= count:
                raise BadGpus(f"-g: GPU {g} does not exist (this machine has {count}: 0..{count - 1})")
    return gpus


def serve_command(service: str, gpus: str | None = None, port: int | None = None, host: str | None = None,
                  model: str | None = None, backend: str | None = None, python: str | None = None,
                  gpu_count: int | None = None) -> Launch:
    """What `start_api.sh` (fp4) / `start_bf16_api.sh` (bf16) with these options would exec."""
    if backend is not None and service != "fp4":
        raise ValueError("--backend is for the fp4 service")
    argv = [python or sys.executable, "-m", "flux_api", service]
    for flag, value in (("--port", port), ("--host", host), ("--model", model), ("--backend", backend)):
        if value is not None:
            argv += [flag, str(value)]
    env = {"CUDA_VISIBLE_DEVICES": check_gpus(gpus, gpu_count)} if gpus is not None else {}
    return Launch(argv, env)
