"""Ray Serve (issue 15) on a local Ray cluster on the CPU, with the tiny model: one cluster and one
application for the module (FP4 with one replica, BF16 with two, an ingress), called over real HTTP
through Ray's proxy. Skipped where Ray is not installed (the `ray` extra; the `test` extra brings it)."""

import socket
import time
import types

import httpx
import pytest
import torch

from conftest import gen, pixels, wait_for, wait_state

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

pytestmark = [pytest.mark.socket, pytest.mark.slow]

BODY = {"prompt": "a red circle on a blue background", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 7}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_app(cache_dir, lora_dir):
    from flux_api.serving.app import build_app

    common = {"cache_dir": str(cache_dir), "lora_dir": str(lora_dir), "default_steps": 2,
              "default_width": 256, "default_height": 256, "warmup": False}
    # Fractions of a CPU: three replicas and the ingress share a 2-core CI machine. Each replica uses
    # this process's torch thread count, so that its bytes are the in-process services' bytes.
    threads = torch.get_num_threads()
    args = {"ingress_settings": dict(common), "slots": 6,
            "fp4": {"num_cpus": 0.25, "torch_threads": threads, "settings": dict(common)},
            "bf16": {"num_cpus": 0.25, "torch_threads": threads, "min_replicas": 2, "max_replicas": 2,
                     "settings": dict(common)}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="flux", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield types.SimpleNamespace(client=client)  # the shape conftest's gen and wait_state take
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_actors(deployment: str, want: int) -> dict:
    """pid -> actor handle of the deployment's replicas, asked through its handle until `want` answered."""
    handle = serve.get_deployment_handle(deployment, app_name="flux")
    found = {}

    def enough():
        try:  # a replacement replica still loading (2 busy cores) answers late: ask again, within the wait
            info = handle.actor.remote().result(timeout_s=20)
        except TimeoutError:
            return False
        found[info["pid"]] = info["actor"]
        return len(found) >= want

    wait_for(enough, timeout=90, what=f"{want} replicas of {deployment}")
    return found


def test_routes_by_service_and_names_it(ray_app):
    for service in ("fp4", "bf16"):
        r = ray_app.client.post("/generate", json={**BODY, "service": service})
        assert r.status_code == 200, r.text
        assert r.json()["service"] == service
    r = ray_app.client.post("/generate", json={**BODY, "service": "auto"})
    assert r.status_code == 200 and r.json()["service"] in ("fp4", "bf16")
    r = ray_app.client.post("/generate", json={**BODY, "service": "sdxl"})
    assert r.status_code == 422, r.text
    raw = ray_app.client.post("/generate", json={**BODY, "service": "bf16"}, headers={"Accept": "image/png"})
    assert raw.headers["X-Service"] == "bf16"


def test_same_seed_same_bytes_as_the_plain_service(ray_app, fp4, bf16):
    """The PNG bytes (pixels and the parameters chunk, which names the service) equal the plain
    service's; across services the same seed gives other pixels."""
    images = {}
    for service, plain in (("fp4", fp4), ("bf16", bf16)):
        through_ray = ray_app.client.post("/generate", json={**BODY, "service": service})
        direct = gen(plain, **BODY)
        assert through_ray.status_code == 200, through_ray.text
        assert through_ray.json()["image"] == direct.json()["image"]
        assert direct.json()["service"] == service
        images[service] = pixels(through_ray)
    assert images["fp4"] != images["bf16"]


def test_jobs_stream_progress_through_ray(ray_app):
    r = ray_app.client.post("/jobs", json={**BODY, "service": "bf16", "num_inference_steps": 4})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    steps = []
    with ray_app.client.stream("GET", f"/jobs/{job_id}/events") as s:
        for line in s.iter_lines():
            if line.startswith("data: {\"event\": \"progress\""):
                steps.append(line)
    assert len(steps) == 4
    done = ray_app.client.get(f"/jobs/{job_id}").json()
    assert done["state"] == "done" and done["result"]["service"] == "bf16"
    assert job_id in [j["id"] for j in ray_app.client.get("/jobs", params={"state": "done"}).json()["jobs"]]


def test_two_replicas_draw_at_once(ray_app):
    """BF16 has two replicas of one pipeline each (max_ongoing_requests 1): two jobs both past their
    first step, neither finished, are on two replicas at once."""
    ids = [ray_app.client.post("/jobs", json={**BODY, "service": "bf16", "num_inference_steps": 40, "seed": s}).json()["id"]
           for s in (1, 2)]

    def both_drawing():
        jobs = [ray_app.client.get(f"/jobs/{i}").json() for i in ids]
        assert all(j["state"] in ("queued", "running") for j in jobs), jobs
        return all(j["state"] == "running" and j["step"] >= 1 for j in jobs)

    wait_for(both_drawing, timeout=60, what="both jobs drawing")
    for i in ids:
        assert ray_app.client.delete(f"/jobs/{i}").status_code == 200
        wait_state(ray_app, i, ("cancelled",))


def test_killed_replica_fails_its_job_clearly_and_is_replaced(ray_app):
    (pid, actor), = replica_actors("FluxFP4", 1).items()
    job_id = ray_app.client.post("/jobs", json={**BODY, "service": "fp4", "num_inference_steps": 50}).json()["id"]
    wait_for(lambda: ray_app.client.get(f"/jobs/{job_id}").json()["step"] >= 1, timeout=60, what="the job's first step")
    ray.kill(actor)
    failed = wait_state(ray_app, job_id, ("failed",), timeout=60)
    assert "died" in failed["error"]["message"], failed
    t0 = time.monotonic()
    r = ray_app.client.post("/generate", json={**BODY, "service": "fp4"})  # waits for the replacement, never hangs
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 90
    (new_pid, _), = replica_actors("FluxFP4", 1).items()
    assert new_pid != pid


def test_pinned_lora_reaches_a_replica_started_after_the_pin(ray_app, fp4):
    r = ray_app.client.post("/apply-lora", json={"lora_name": "green"})
    assert r.status_code == 200, r.text
    try:
        (pid, actor), = replica_actors("FluxFP4", 1).items()
        ray.kill(actor)  # the replacement starts after the pin: it learns it from each request
        wait_for(lambda: pid not in replica_actors("FluxFP4", 1), timeout=90, what="a new FP4 replica")
        r = ray_app.client.post("/generate", json={**BODY, "service": "fp4"})
        assert r.status_code == 200, r.text
        assert [x["name"] for x in r.json()["loras"]] == ["green"]
        per_request = gen(fp4, **BODY, lora_name="green")
        plain = gen(fp4, **BODY)
        assert pixels(r) == pixels(per_request) != pixels(plain)
    finally:
        assert ray_app.client.post("/remove-lora").status_code == 200
