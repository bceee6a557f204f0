"""Start a service and wait until it can generate: the one poll-/health loop that the benchmark, the GPU
runs and the tests share.

`wait_until_ready` polls `GET /health` until 200; it stops early when the load failed (`status:
failed`) or when the process it is told about has exited. `running_service` starts `python -m flux_api
KIND` as its own process group and stops it with SIGTERM (SIGKILL after a grace) on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent


class ServiceNotReady(RuntimeError):
    """The service exited, reported a failed load, or was not ready in time."""


def wait_until_ready(client, timeout_s: float = 120.0, exited: Callable[[], str | None] | None = None,
                     poll_s: float = 0.05) -> float:
    """Poll `client.get("/health")` (an httpx.Client with the base URL set) until 200; return the
    seconds waited. `exited()` returns why the service is gone (its log tail), or None while it runs."""
    import httpx

    t0 = time.perf_counter()
    while True:
        if exited is not None and (why := exited()) is not None:
            raise ServiceNotReady(f"the service exited during start-up: {why}")
        try:
            r = client.get("/health")
            if r.status_code == 200:
                return round(time.perf_counter() - t0, 2)
            if r.json().get("status") == "failed":
                raise ServiceNotReady(f"model load failed: {r.json().get('error')}")
        except httpx.TransportError:
            pass  # not listening yet
        if time.perf_counter() - t0 > timeout_s:
            raise ServiceNotReady(f"not ready after {timeout_s:.0f} s")
        time.sleep(poll_s)


def service_command(kind: str, model: str | None = None, port: int | None = None, backend: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "flux_api", kind]
    for flag, value in (("--model", model), ("--port", port), ("--backend", backend)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


@contextlib.contextmanager
def running_process(cmd: list[str], port: int, env: dict | None = None, log_path: str | Path | None = None,
                    timeout_s: float = 600, cwd: Path = ROOT) -> Iterator[tuple["object", float]]:
    """Run `cmd` (a service listening on 127.0.0.1:`port`) in its own process group; yield (an httpx
    client on it, seconds until /health said 200). SIGTERM on exit, SIGKILL if it will not stop."""
    import httpx

    log_path = Path(log_path or f"/tmp/flux-service-{port}.log")
    logf = open(log_path, "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

    def exited() -> str | None:
        if proc.poll() is None:
            return None
        logf.flush()
        return f"exit status {proc.returncode}; log: {log_path.read_text()[-2000:]}"

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900) as client:
            wait_until_ready(client, timeout_s, exited, poll_s=0.2)
            yield client, round(time.perf_counter() - t0, 2)
    finally:
        stop_process(proc, 90)
        logf.close()


def stop_process(proc: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGTERM to the process group of a service started with start_new_session; SIGKILL after `grace_s`."""
    # A group already gone (the service died on its own) is not an error: raising here, in the caller's
    # `finally`, would hide why it died (a failed start once showed only "ProcessLookupError").
    with contextlib.suppress(ProcessLookupError):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def running_service(kind: str, model: str, port: int, backend: str | None = None, env: dict | None = None,
                    log_path: str | None = None, timeout_s: float = 600):
    """`python -m flux_api KIND --model MODEL --port PORT` as its own process, ready to serve."""
    return running_process(service_command(kind, model, port, backend), port, env,
                           log_path or f"/tmp/svc-{backend or kind}-{port}.log", timeout_s)
