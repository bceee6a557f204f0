"""Start a service as its own `python -m flux_api` process and wait until it is ready (GPU scripts)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running_service(kind: str, model: str, port: int, backend: str | None = None, env: dict | None = None,
                    log_path: str | None = None, timeout_s: float = 300):
    """Yields (client, ready_s). Raises if the process dies or the model does not become ready."""
    cmd = [sys.executable, "-m", "flux_api", kind, "--model", model, "--port", str(port)]
    if backend:
        cmd += ["--backend", backend]
    logf = open(log_path or f"/tmp/svc-{backend or kind}-{port}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"service exited with {proc.returncode}: {Path(logf.name).read_text()[-2000:]}")
                if time.perf_counter() - t0 > timeout_s:
                    raise RuntimeError("not ready in time")
                try:
                    r = client.get("/health")
                    if r.status_code == 200:
                        break
                    if r.json().get("status") == "failed":
                        raise RuntimeError(f"load failed: {r.json().get('error')}")
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            yield client, round(time.perf_counter() - t0, 1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        logf.close()
