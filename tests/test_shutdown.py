"""SIGTERM to a service process (`python -m flux_api`): the engine stops taking work the moment the
signal arrives, so the /generate calls that wait in the queue answer 503 `shutting_down` (with
Retry-After) at once, not after uvicorn's graceful wait; the running one finishes; the process exits
cleanly. And the scheduler's drain, in process: queued work cancelled, running work kept, new work refused."""

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import bf16_process, wait_for

from flux_api.engine.scheduler import CANCELLED, DONE, RUNNING, Scheduler
from flux_api.errors import ShuttingDown
from flux_api.service_process import wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
LONG = {"prompt": "a lighthouse", "width": 512, "height": 512, "num_inference_steps": 12, "seed": 1}
SHORT = {"prompt": "a harbour", "width": 256, "height": 256, "num_inference_steps": 2}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


@pytest.mark.socket
def test_sigterm_answers_queued_generate_calls_503_at_once_and_lets_the_running_one_finish(cache_dir):
    proc, port = bf16_process(cache_dir)
    base = f"http://127.0.0.1:{port}"
    answers: dict[str, tuple[float, httpx.Response | Exception]] = {}

    def generate(name: str, body: dict) -> None:
        try:
            with httpx.Client(base_url=base, timeout=90) as c:
                r = c.post("/generate", json=body)
        except Exception as e:  # noqa: BLE001 - reported by the assertions below
            r = e
        answers[name] = (time.monotonic(), r)

    threads: list[threading.Thread] = []
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            wait_until_ready(client, 90, lambda: None if proc.poll() is None else f"exit status {proc.returncode}",
                             poll_s=0.2)

            def start(name: str, body: dict) -> None:
                t = threading.Thread(target=generate, args=(name, body), daemon=True)
                t.start()
                threads.append(t)

            start("running", LONG)
            wait_for(lambda: _metric(client.get("/metrics").text, "flux_generations_running") == 1.0, 60, 0.02,
                     "the long generation to run")
            for i in range(3):
                start(f"queued-{i}", {**SHORT, "seed": i})
            wait_for(lambda: _metric(client.get("/metrics").text, "flux_queue_depth") == 3.0, 30, 0.02,
                     "three generations to queue")
            assert "running" not in answers, "the long generation ended before the signal: make it longer"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(90)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    for i in range(3):
        when, r = answers[f"queued-{i}"]
        assert isinstance(r, httpx.Response), f"queued-{i}: {r!r}\n{out[-2000:]}"
        assert r.status_code == 503, (i, r.status_code, r.text[:300], out[-2000:])
        assert r.json()["error"]["type"] == "shutting_down"
        assert int(r.headers["retry-after"]) >= 1
        assert when - signalled < 5, f"queued-{i} answered {when - signalled:.1f} s after SIGTERM"
    when, r = answers["running"]
    assert isinstance(r, httpx.Response) and r.status_code == 200, (r, out[-2000:])
    assert max(answers[f"queued-{i}"][0] for i in range(3)) < when  # answered before the running one finished
    # uvicorn re-raises the signal once its graceful shutdown is done ("terminated by SIGTERM")
    assert proc.returncode in (0, -signal.SIGTERM), out[-2000:]
    assert "Traceback" not in out
    assert "shutdown: cancelled 3 queued job(s)" in out
    assert "Application shutdown complete" in out


class _Replica:
    def __init__(self, index: int):
        self.index = index

    def on_thread_start(self) -> None:
        pass


def test_drain_cancels_queued_work_keeps_running_work_and_refuses_new_work():
    release = threading.Event()

    def hold(replica, job):
        release.wait(10)
        return "image"

    sched = Scheduler([_Replica(0)], max_pending=4)
    try:
        running = sched.submit(hold)
        wait_for(lambda: running.state == RUNNING, 10, 0.005, "the first job to run")
        queued = [sched.submit(hold) for _ in range(2)]
        assert sched.drain() == 2
        assert sched.drain() == 0  # once is enough; a second signal cancels nothing more
        for job in queued:
            assert job.state == CANCELLED and isinstance(job.future.exception(0), ShuttingDown)
        with pytest.raises(ShuttingDown):
            sched.submit(hold)
        assert running.state == RUNNING
        release.set()
        assert running.future.result(10) == "image" and running.state == DONE
    finally:
        release.set()
        sched.shutdown(10)
