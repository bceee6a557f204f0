"""The launch scripts: -g validation, and the README's start command serving images on the tiny model.
They run the scripts as processes: the socket tier."""

import subprocess
from pathlib import Path

import pytest
from conftest import free_port

from flux_api.service_process import running_process

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.socket


def run_launch(*args, timeout=60):
    return subprocess.run([str(ROOT / "start_api.sh"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "gpus,says",
    [("abc", "not a comma-separated list"), ("0,,1", "not a comma-separated list"), ("1,1", "names a GPU twice"),
     ("-1", "not a comma-separated list")],
)
def test_bad_gpu_lists_are_refused(gpus, says):
    p = run_launch("-g", gpus)
    assert p.returncode == 2 and says in p.stderr


def test_help_and_unknown_options():
    assert "-g GPUS" in run_launch("--help").stdout
    p = run_launch("--frobnicate")
    assert p.returncode == 2 and "unknown option" in p.stderr


def test_start_script_serves_the_tiny_model_and_exports_the_gpus(cache_dir, tmp_path):
    port = free_port()
    cmd = [str(ROOT / "start_bf16_api.sh"), "--model", "tiny", "-p", str(port), "-g", "0"]
    # its own process group, /health polled until 200 (failing with the log if the script exits), SIGTERM after
    with running_process(cmd, port, {"FLUX_BF16_CACHE_DIR": str(cache_dir)}, tmp_path / "launch.log", 120, ROOT) as (client, _):
        r = client.post("/generate", json={"prompt": "a cat", "width": 256, "height": 256, "num_inference_steps": 2,
                                           "seed": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["seed"] == 3
        status = client.get("/model-status").json()
        assert status["placement"]["cuda_visible_devices"] == "0"
