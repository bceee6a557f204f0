"""The serving engine: the bounded queue, async jobs with progress and cancel, SSE, timeouts, failures,
replicas, metrics and shutdown. The real pipeline on the tiny model, two CPU replicas; in process, except
what needs a socket (SSE, a client that disconnects, SIGTERM to a service process: marked `socket`)."""

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import bf16_process, InProcess, Served, gen, wait_for, wait_state

from flux_api.app import create_app
from flux_api.service_process import wait_until_ready
from flux_api.settings import BF16Settings

ROOT = Path(__file__).resolve().parent.parent
# a few seconds on two CPU cores (the trained tiny model: ~35 ms a step at 256x256, its VAE ~5 s at 1024x1024)
SLOW = {"width": 256, "height": 256, "num_inference_steps": 60}


def two_replicas(cache_dir, lora_dir) -> BF16Settings:
    """A BF16 service with two CPU replicas (placement=replicas)."""
    return BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, placement="replicas", replicas=2,
                        queue_size=3, default_steps=2, default_width=256, default_height=256)


@pytest.fixture(scope="module")
def two(cache_dir, lora_dir):
    """The two-replica service, in process."""
    with InProcess(create_app(two_replicas(cache_dir, lora_dir))) as s:
        yield s.wait_ready()


@pytest.fixture(scope="module")
def two_socket(cache_dir, lora_dir):
    """The same service under a real uvicorn, for SSE and client disconnects."""
    with Served(create_app(two_replicas(cache_dir, lora_dir))) as s:
        yield s.wait_ready()


def job_body(**kw):
    return {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 1, **kw}


@pytest.mark.slow  # large images kept in flight for seconds
def test_two_replicas_run_two_requests_in_parallel(two):
    st = two.client.get("/model-status").json()
    assert st["placement"]["mode"] == "replicas" and st["placement"]["devices"] == ["cpu", "cpu"]
    a = two.client.post("/jobs", json=job_body(**SLOW)).json()["id"]
    b = two.client.post("/jobs", json=job_body(**SLOW, seed=2)).json()["id"]

    def both_running():
        ja, jb = two.client.get(f"/jobs/{a}").json(), two.client.get(f"/jobs/{b}").json()
        return (ja, jb) if ja["state"] == jb["state"] == "running" else None

    ja, jb = wait_for(both_running, 30, 0.02, "the two jobs to run at the same time")
    assert {ja["replica"], jb["replica"]} == {0, 1}
    for j in (a, b):
        assert wait_state(two, j, {"done"})["result"]["seed"] in (1, 2)


def test_replicas_give_the_same_bytes(two):
    a, b = gen(two, seed=11), gen(two, seed=11)
    assert a.json()["image"] == b.json()["image"]


@pytest.mark.slow  # large images kept in flight for seconds
def test_full_queue_gives_429_and_every_accepted_job_completes(two):
    accepted, refused = [], []
    for i in range(8):  # 2 replicas busy + a queue of 3: the rest are refused
        r = two.client.post("/jobs", json=job_body(**{**SLOW, "num_inference_steps": 6}, seed=i))
        (accepted if r.status_code == 202 else refused).append(r)
    assert refused, "nothing was refused"
    for r in refused:
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "queue_full"
    # FIFO: a job never reports more jobs ahead of it than were accepted before it. (Not "positions
    # sorted": a worker that takes a job between two POSTs lowers the later ones', a timing a busy CI
    # machine showed once: [0, 1, 0, 1, 2].)
    positions = [r.json()["position"] for r in accepted]
    assert all(p is None or p <= i for i, p in enumerate(positions)), positions
    for r in accepted:
        assert wait_state(two, r.json()["id"], {"done", "failed", "cancelled", "timed_out"}, 120)["state"] == "done"


def test_job_progress_state_and_result(two):
    r = two.client.post("/jobs", json=job_body(num_inference_steps=3))
    assert r.status_code == 202 and r.headers["location"] == f"/jobs/{r.json()['id']}"
    done = wait_state(two, r.json()["id"], {"done"})
    assert done["step"] == done["total_steps"] == 3
    assert done["result"]["seed"] == 1 and done["result"]["image"]
    assert two.client.get("/jobs/nope").status_code == 404


@pytest.mark.slow  # large images kept in flight for seconds
def test_cancel_a_queued_and_a_running_job(two):
    running = [two.client.post("/jobs", json=job_body(**SLOW, seed=i)).json()["id"] for i in range(2)]
    queued = two.client.post("/jobs", json=job_body(**SLOW, seed=9)).json()
    assert queued["state"] == "queued"
    r = two.client.delete(f"/jobs/{queued['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    wait_state(two, running[0], {"running"})
    wait_for(lambda: two.client.get(f"/jobs/{running[0]}").json()["step"] >= 1, 60, 0.02, "the first step")
    assert two.client.delete(f"/jobs/{running[0]}").json()["cancel_requested"] is True
    end = wait_state(two, running[0], {"cancelled", "done"})
    assert end["state"] == "cancelled" and end["step"] < end["total_steps"]  # stopped early
    assert end["result"] is None and end["error"]["type"] == "cancelled"  # its image is discarded
    assert two.client.delete(f"/jobs/{running[0]}").status_code == 409  # already ended
    wait_state(two, running[1], {"done"})
    assert gen(two).status_code == 200  # the replica that was interrupted still generates


@pytest.mark.socket
def test_sse_streams_one_event_per_step_then_the_result(two_socket):
    two = two_socket
    job = two.client.post("/jobs", json=job_body(num_inference_steps=4)).json()["id"]
    events = []
    with two.client.stream("GET", f"/jobs/{job}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    kinds = [k for k, _ in events]
    progress = [d for k, d in events if k == "progress"]
    assert kinds[0] == "state" and kinds[-1] == "result"
    started_at = events[0][1]["step"]  # the stream may attach after the first steps ran
    assert [p["step"] for p in progress] == list(range(started_at + 1, 5))
    assert events[-1][1]["seed"] == 1


@pytest.mark.socket
def test_sse_of_a_cancelled_job_ends_with_an_error(two_socket):
    two = two_socket
    job = two.client.post("/jobs", json=job_body(**SLOW)).json()["id"]
    wait_state(two, job, {"running"})
    lines, cancel = [], None
    with two.client.stream("GET", f"/jobs/{job}/events") as resp:
        for line in resp.iter_lines():
            if line.startswith(("event:", "data:")):
                lines.append(line)
            if cancel is None and line.startswith("data:"):  # the stream is attached: cancel the job now
                cancel = two.client.delete(f"/jobs/{job}")
    assert cancel.status_code == 200, cancel.text
    assert lines[-2] == "event: error" and '"cancelled"' in lines[-1]


def test_timeout_gives_504_and_stops_the_work(two, monkeypatch):
    monkeypatch.setattr(two.app.state.settings, "request_timeout_s", 0.5)
    t0 = time.perf_counter()
    r = gen(two, **SLOW)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    assert time.perf_counter() - t0 < 5
    monkeypatch.undo()
    assert gen(two).status_code == 200


@pytest.mark.socket
def test_client_disconnect_cancels_generate(two_socket):
    two = two_socket
    cancelled = 'flux_jobs_finished_total{state="cancelled"}'
    before = _metric(two.client.get("/metrics").text, cancelled)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{two.url}/generate", json=job_body(**SLOW), timeout=0.5)
    wait_for(lambda: _metric(two.client.get("/metrics").text, cancelled) > before, 10, 0.05,
             "the disconnected request's job to be cancelled")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


class FakeOOM:
    """A fake: torch.cuda.OutOfMemoryError cannot happen on the CPU, so the transformer's forward is
    replaced by one that raises it (or another error) once."""

    def __init__(self, replica, exc):
        self.replica, self.exc = replica, exc
        self.real = replica.pipe.transformer.forward

    def __call__(self, *a, **kw):
        self.replica.pipe.transformer.forward = self.real
        raise self.exc


@pytest.mark.parametrize("exc,code,kind", [(torch.cuda.OutOfMemoryError("CUDA out of memory (fake)"), 503, "out_of_memory"),
                                           (RuntimeError("boom (fake)"), 500, "generation_failed")])
def test_failures_map_to_http_and_the_service_recovers(bf16, exc, code, kind):
    import logging

    from flux_api.logs import RequestIdFilter

    records = []
    handler = logging.Handler()
    handler.addFilter(RequestIdFilter())
    handler.emit = records.append
    logging.getLogger("flux_api").addHandler(handler)
    replica = bf16.app.state.manager.replicas[0]
    replica.pipe.transformer.forward = FakeOOM(replica, exc)
    try:
        r = bf16.client.post("/generate", json=job_body(), headers={"X-Request-ID": f"fail-{code}"})
    finally:
        logging.getLogger("flux_api").removeHandler(handler)
    assert any(rec.request_id == f"fail-{code}" and rec.levelno >= logging.ERROR for rec in records)
    assert r.status_code == code and r.json()["error"]["type"] == kind
    assert r.json()["error"]["request_id"] == f"fail-{code}" == r.headers["x-request-id"]
    assert bf16.client.get("/health").status_code == 200
    assert gen(bf16).status_code == 200


def test_metrics_count_what_happened(two):
    gen(two)
    two.client.post("/generate", json={"prompt": ""})
    text = two.client.get("/metrics").text
    assert _metric(text, 'flux_http_requests_total{method="POST",route="/generate",status="200"}') >= 1
    assert _metric(text, 'flux_http_requests_total{method="POST",route="/generate",status="422"}') >= 1
    assert _metric(text, "flux_images_generated_total") >= 1
    assert _metric(text, "flux_queue_wait_seconds_count") >= 1 and _metric(text, "flux_inference_seconds_count") >= 1
    assert "flux_queue_depth " in text and _metric(text, "flux_model_ready") == 1.0
    assert 'route="/jobs/{job_id}"' in text  # route templates, not raw paths


def test_finished_jobs_are_bounded(two):
    sched = two.app.state.manager.scheduler
    old = sched.keep_finished
    sched.keep_finished = 2
    try:
        ids = [two.client.post("/jobs", json=job_body(num_inference_steps=1)).json()["id"] for _ in range(3)]

        def ended_or_pruned(i):  # a GET prunes too: the oldest may be gone before it is looked at
            r = two.client.get(f"/jobs/{i}")
            return r.status_code == 404 or r.json()["state"] == "done"

        wait_for(lambda: all(ended_or_pruned(i) for i in ids), what="three finished jobs")
        two.client.post("/jobs", json=job_body(num_inference_steps=1))
        assert two.client.get(f"/jobs/{ids[0]}").status_code == 404  # three finished, two kept: the oldest went
        assert two.client.get(f"/jobs/{ids[-1]}").json()["state"] == "done"
    finally:
        sched.keep_finished = old


@pytest.mark.socket
def test_sigterm_cancels_queued_work_finishes_running_work_and_exits_cleanly(cache_dir):
    proc, port = bf16_process(cache_dir)
    # running_process() would hide the process, and this test signals it and reads its exit and log
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_until_ready(client, 90, lambda: None if proc.poll() is None else f"exit status {proc.returncode}",
                             poll_s=0.2)
            ids = [client.post("/jobs", json=job_body(width=512, height=512, num_inference_steps=8)).json()["id"]
                   for _ in range(3)]
            wait_for(lambda: client.get(f"/jobs/{ids[0]}").json()["state"] == "running", 60, 0.02,
                     "the first job to run")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # uvicorn re-raises the signal once its graceful shutdown is done, so the exit is "killed by
    # SIGTERM" (what process managers expect); the log shows that the shutdown itself was clean.
    assert proc.returncode in (0, -signal.SIGTERM), out[-2000:]
    assert "Traceback" not in out
    assert "shutdown: cancelled 2 queued job(s)" in out
    assert "Application shutdown complete" in out


@pytest.mark.slow  # large images kept in flight for seconds
def test_pinned_lora_applies_on_every_replica(two):
    try:
        assert two.client.post("/apply-lora", json={"lora_name": "style", "lora_weight": 0.7}).status_code == 200
        ids = [two.client.post("/jobs", json=job_body(**{**SLOW, "num_inference_steps": 4}, seed=5)).json()["id"]
               for _ in range(2)]
        done = [wait_state(two, i, {"done"}) for i in ids]
        assert {d["replica"] for d in done} == {0, 1}
        assert all(d["result"]["loras"] == [{"name": "style", "weight": 0.7}] for d in done)
        assert done[0]["result"]["image"] == done[1]["result"]["image"]  # same seed, same bytes, either replica
    finally:
        two.client.post("/remove-lora")
    for replica in two.app.state.manager.replicas:
        assert replica.adapters.loaded() == []  # removal reached every replica
