"""The launch scripts: -g validation, and the README's start command serving images on the tiny model."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_script_serves_the_tiny_model_and_exports_the_gpus(cache_dir):
    port = free_port()
    env = {**os.environ, "FLUX_BF16_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen([str(ROOT / "start_bf16_api.sh"), "--model", "tiny", "-p", str(port), "-g", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        r = httpx.post(f"{url}/generate", json={"prompt": "a cat", "width": 256, "height": 256,
                                                "num_inference_steps": 2, "seed": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["seed"] == 3
        status = httpx.get(f"{url}/model-status").json()
        assert status["placement"]["cuda_visible_devices"] == "0"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
