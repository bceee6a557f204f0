"""Surviving what clients send and what goes wrong (issue 10): each defect a black-box fuzz and soak found,
and each fault, tried against the real pipeline on the tiny model. Faults that cannot happen on the
CPU (a CUDA out-of-memory error, a worker thread that dies) are injected by fakes named as such; all
around them is real."""

import asyncio
import gc
import json
import logging
import shutil
import threading
import time

import httpx
import pytest
import torch
from conftest import pixels, InProcess, Served, gen, wait_for, wait_state

from flux_api.app import create_app
from flux_api.logs import OneLineFormatter, RequestIdFilter
from flux_api.settings import BF16Settings

# a few seconds on two CPU cores (the trained tiny model: ~35 ms a step at 256x256, its VAE ~5 s at 1024x1024)
SLOW = {"width": 256, "height": 256, "num_inference_steps": 60}



def body(**kw):
    return {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 1, **kw}


class LogRecords(logging.Handler):
    """Every record of the process while in use, with its request id, formatted as the service's log is."""

    def __init__(self):
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.setFormatter(OneLineFormatter("%(levelname)s [%(request_id)s] %(name)s: %(message)s"))
        self.records, self.lines = [], []

    def emit(self, record):
        self.records.append(record)
        self.lines.append(self.format(record))

    def __enter__(self):
        logging.getLogger().addHandler(self)
        old, self._old = logging.getLogger().level, None
        if old > logging.INFO:
            self._old = old
            logging.getLogger().setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)
        if self._old is not None:
            logging.getLogger().setLevel(self._old)


def one_replica(cache_dir, lora_dir, **kw) -> BF16Settings:
    return BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, default_steps=2, default_width=256,
                        default_height=256, **kw)


# ---------------------------------------------------------------- 1. events of an unknown job


def test_events_of_an_unknown_job_is_a_404_with_the_error_body(svc):
    r = svc.client.get("/jobs/no-such-job/events")
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["type"] == "job_not_found"
    spec = svc.client.get("/openapi.json").json()["paths"]["/jobs/{job_id}/events"]["get"]["responses"]
    assert {"200", "404", "422"} <= set(spec)


# ---------------------------------------------------------------- 2. a cancel that comes too late


class HoldDecode:
    """Holds the VAE decode (after the last denoising step) until released: the window in which a cancel
    used to be promised and then not kept."""

    def __init__(self, pipe):
        self.pipe, self.real = pipe, pipe.vae.decode
        self.reached, self.release = threading.Event(), threading.Event()

    def __call__(self, *a, **kw):
        self.reached.set()
        self.release.wait(30)
        return self.real(*a, **kw)

    def __enter__(self):
        self.pipe.vae.decode = self
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.pipe.vae.decode = self.real


def test_a_cancel_after_the_last_step_is_kept_and_one_after_the_end_is_a_409(bf16):
    with HoldDecode(bf16.app.state.manager.replicas[0].pipe) as hold:
        job = bf16.client.post("/jobs", json=body()).json()
        assert hold.reached.wait(30)
        assert bf16.client.get(f"/jobs/{job['id']}").json()["step"] == 2  # every step done, the image not yet
        r = bf16.client.delete(f"/jobs/{job['id']}")
        assert r.status_code == 200 and r.json()["cancel_requested"]
        hold.release.set()
        end = wait_state(bf16, job["id"], {"done", "cancelled", "failed"})
    assert end["state"] == "cancelled" and end["result"] is None  # a 200 is a promise kept
    late = bf16.client.delete(f"/jobs/{job['id']}")
    assert late.status_code == 409 and late.json()["error"]["type"] == "job_already_ended"
    assert late.json()["error"]["details"] == {"state": "cancelled"}
    done = bf16.client.post("/jobs", json=body(num_inference_steps=1)).json()
    wait_state(bf16, done["id"], {"done"})
    late = bf16.client.delete(f"/jobs/{done['id']}")
    assert late.status_code == 409 and late.json()["error"]["details"] == {"state": "done"}


@pytest.mark.parametrize("path", ["/generate", "/v1/images/generations"])
def test_a_generate_whose_job_another_client_cancels_is_a_409_its_spec_lists(bf16, path):
    """A synchronous request's job is listed under /jobs, so DELETE /jobs/{id} from anyone cancels it: its
    own client gets 409 `cancelled` (OpenAI's body on /v1), a status its route documents."""
    with HoldDecode(bf16.app.state.manager.replicas[0].pipe) as hold:
        answer = {}
        asked = threading.Thread(target=lambda: answer.update(r=bf16.client.post(path, json={
            "prompt": "a lighthouse", "size": "256x256", "num_inference_steps": 2, "seed": 1} if path.startswith("/v1")
            else body())))
        asked.start()
        assert hold.reached.wait(30)
        running = bf16.client.get("/jobs", params={"state": "running"}).json()["jobs"]
        assert len(running) == 1
        assert bf16.client.delete(f"/jobs/{running[0]['id']}").status_code == 200
        hold.release.set()
        asked.join(30)
    r = answer["r"]
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert (error["code"] if path.startswith("/v1") else error["type"]) == "cancelled", error
    assert "409" in bf16.client.get("/openapi.json").json()["paths"][path]["post"]["responses"]
    assert gen(bf16).status_code == 200


def test_every_operation_documents_the_413_the_body_limit_answers_on_every_path(bf16):
    """BodyLimitMiddleware refuses a body over max_body_bytes before any route sees it, so every operation can
    answer 413, in its own error body (OpenAI's under /v1/), and its spec says so (on /v1, the 400 that any bad
    parameter is there too)."""
    spec = bf16.app.openapi()
    too_long = str(bf16.app.state.settings.max_body_bytes + 1).encode()

    async def declared_too_long(method: str, path: str) -> tuple[int, bytes]:
        sent, body_read = [], False  # the Content-Length alone is refused: no byte of the body is read

        async def receive():
            nonlocal body_read
            body_read = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method.upper(),
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"test"), (b"content-length", too_long),
                             (b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("test", 80)}
        await bf16.app(scope, receive, send)
        assert not body_read
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    checked = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            status, answer = asyncio.run_coroutine_threadsafe(
                declared_too_long(method, path.replace("{job_id}", "j").replace("{token}", "t")), bf16._loop).result(30)
            assert status == 413, (method, path, status)
            error = json.loads(answer)["error"]
            assert (error["code"] if path.startswith("/v1/") else error["type"]) == "body_too_large"
            ref = op["responses"].get("413", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
            assert ref == ("#/components/schemas/OpenAIErrorBody" if path.startswith("/v1/") else
                           "#/components/schemas/ErrorBody"), (method, path, op["responses"].get("413"))
            if path.startswith("/v1/"):
                assert "400" in op["responses"], (method, path)
            checked += 1
    assert checked >= 20, checked


def test_cancels_racing_the_end_are_always_kept_or_refused(bf16):
    """DELETE at the moment a 1-step job ends: whichever wins, the answer matches what happened."""
    for _ in range(8):
        job = bf16.client.post("/jobs", json=body(num_inference_steps=1)).json()
        r = bf16.client.delete(f"/jobs/{job['id']}")
        end = wait_state(bf16, job["id"], {"done", "cancelled"})
        assert (r.status_code, end["state"]) in {(200, "cancelled"), (409, "done")}, (r.status_code, end["state"])


# ---------------------------------------------------------------- 3. strict types


@pytest.mark.parametrize("bad,field", [
    ({"num_inference_steps": True}, "num_inference_steps"),
    ({"seed": True}, "seed"),
    ({"guidance_scale": False}, "guidance_scale"),
    ({"width": "256"}, "width"),
    ({"guidance_scale": "3.5"}, "guidance_scale"),
    ({"num_inference_steps": 2.5}, "num_inference_steps"),
    ({"lora_name": "style", "lora_weight": True}, "lora_weight"),
    ({"loras": [{"name": "style", "weight": "1"}]}, "loras.0.weight"),
    ({"prompt": 5}, "prompt"),
])
def test_no_type_coercion_at_the_boundary(svc, bad, field):
    r = svc.client.post("/generate", json=body(**bad))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(field + ":"), r.json()["error"]["message"]


def test_one_lora_twice_is_a_422_even_with_two_weights(svc):
    """The one rule JSON Schema cannot state (`uniqueItems` covers only the same entry twice)."""
    for loras in ([{"name": "style"}, {"name": "style"}], [{"name": "style", "weight": 1.0}, {"name": "style", "weight": 0.5}]):
        r = svc.client.post("/generate", json=body(loras=loras))
        assert r.status_code == 422 and "names the same LoRA twice" in r.json()["error"]["message"]


def test_an_integral_number_is_an_integer(svc):
    """JSON has one number type: 2.0 is the integer 2 (JSON Schema agrees), and gives the same image."""
    assert gen(svc, num_inference_steps=2.0, seed=7.0).json()["image"] == gen(svc, num_inference_steps=2, seed=7).json()["image"]


@pytest.mark.parametrize("raw", [b'{"prompt": "a", "guidance_scale": NaN}', b'{"prompt": "a", "guidance_scale": Infinity}'])
def test_nan_and_infinity_are_refused(svc, raw):
    r = svc.client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "guidance_scale" in r.json()["error"]["message"]


def test_apply_lora_is_strict_too(svc):
    r = svc.client.post("/apply-lora", json={"lora_name": "style", "lora_weight": "0.5"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("lora_weight:")
    assert svc.client.get("/lora-status").json()["pinned"] == []


# ---------------------------------------------------------------- 4. request ids and the log


@pytest.mark.parametrize("rid", ["abc", "a" * 128, "trace:0af7651916cd43dd/span=b7ad6b7169203331",
                                 "4bf92f3577b34da6a3ce929d0e0e4736"])
def test_a_valid_request_id_is_kept_as_sent(svc, rid):
    r = svc.client.get("/health", headers={"X-Request-ID": rid})
    assert r.headers["x-request-id"] == rid and "x-request-id-replaced" not in r.headers


@pytest.mark.parametrize("rid,why", [(b"", "empty"), (b"a" * 129, "longer than 128"), ("é".encode(), "printable ASCII"),
                                     (b"a b", "printable ASCII"), (b"a\tb", "printable ASCII"), (b"a\x00b", "printable ASCII")])
def test_an_invalid_request_id_is_replaced_and_the_response_says_why(svc, rid, why):
    r = svc.client.post("/generate", json={"prompt": ""}, headers={"X-Request-ID": rid})
    new = r.headers["x-request-id"]
    assert new != rid.decode("latin-1") and len(new) == 32 and r.json()["error"]["request_id"] == new
    assert why in r.headers["x-request-id-replaced"]


def test_control_characters_never_reach_the_log_raw(svc):
    with LogRecords() as log:
        r = svc.client.get("/nope%0d%0aINFO [x] flux_api: forged%00line", headers={"X-Request-ID": "inject"})
        assert r.status_code == 404
        svc.client.post("/apply-lora", json={"lora_name": "no\r\nsuch\x1b[31m"})
    mine = [line for line in log.lines if "[inject]" in line]
    assert any("GET /nope%0d%0aINFO%20[x]%20flux_api:%20forged%00line -> 404" in line for line in mine), mine
    for line in log.lines:
        assert not any(c in line for c in "\r\x00\x1b"), line
        assert all(part.startswith(("    ", "INFO", "WARNING", "ERROR", "DEBUG")) for part in line.split("\n")), line


# ---------------------------------------------------------------- 5. client disconnects


@pytest.mark.socket
def test_a_client_that_goes_away_is_logged_as_499_and_leaves_no_stray_error(cache_dir, lora_dir):
    with Served(create_app(one_replica(cache_dir, lora_dir))) as s, LogRecords() as log:
        s.wait_ready()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.url}/generate", json=body(**SLOW), headers={"X-Request-ID": "gone"}, timeout=0.5)
        wait_for(lambda: any("[gone]" in line and "-> 499" in line for line in log.lines), 20, 0.05,
                 "the abandoned request's access-log line")
        gc.collect()  # an unretrieved future exception is reported when the future is collected
        assert gen(s).status_code == 200
        gc.collect()
    stray = [line for line in log.lines if "never retrieved" in line or "JobCancelled" in line]
    assert not stray, stray
    assert not any("[gone]" in line and "-> 409" in line for line in log.lines)


# ---------------------------------------------------------------- 6. the contract and the spec agree


def test_405_names_every_method_the_path_allows(svc):
    r = svc.client.options("/jobs/abc")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}
    assert svc.client.put("/generate").headers["allow"] == "POST"


def test_a_body_that_is_not_utf8_is_a_422(svc):
    r = svc.client.post("/generate", content=b'{"prompt": "caf\xe9"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"
    assert "UTF-8" in r.json()["error"]["message"]


def test_cross_field_rules_are_in_the_schema(svc):
    schemas = svc.client.get("/openapi.json").json()["components"]["schemas"]
    gen_schema = schemas["GenerateRequest"]
    assert gen_schema["not"]["required"] == ["lora_name", "loras"]
    assert gen_schema["dependentSchemas"]["lora_weight"]["required"] == ["lora_name"]
    rule = gen_schema["allOf"][0]
    assert rule["if"]["required"] == ["negative_prompt"]
    assert {"type": "number", "exclusiveMinimum": 1} in rule["then"]["properties"]["true_cfg_scale"]["anyOf"]
    assert gen_schema["properties"]["prompt"]["pattern"].startswith("[^\\t")  # not blank, as ECMAScript says
    assert "neither pinned nor loaded is a 404" in schemas["RemoveLoraRequest"]["properties"]["lora_name"]["description"]


def test_a_body_sent_to_a_route_that_takes_none_is_a_422(svc):
    r = svc.client.post("/load-model", json={"wait": True})
    assert r.status_code == 422 and r.json()["error"]["type"] == "body_not_accepted"
    assert "query string (wait)" in r.json()["error"]["message"]
    assert svc.client.post("/load-model").status_code == 200
    assert svc.client.post("/load-model?wait=true").status_code == 200
    assert svc.client.request("DELETE", "/jobs/x", content=b"{}").status_code == 422


def test_nothing_a_client_sends_is_silently_ignored_in_the_query(svc):
    svc.client.post("/apply-lora", json={"lora_name": "style"})
    try:
        r = svc.client.post("/remove-lora?lora_name=style")  # once unpinned everything, silently
        assert r.status_code == 422 and "unknown query parameter(s) lora_name" in r.json()["error"]["message"]
        assert svc.client.get("/lora-status").json()["pinned"] == [{"name": "style", "weight": 1.0}]
    finally:
        svc.client.post("/remove-lora")
    assert svc.client.post("/generate?seed=5", json=body()).status_code == 422
    r = svc.client.post("/load-model?wait=true&foo=1")
    assert r.status_code == 422 and "it takes wait" in r.json()["error"]["message"]
    assert svc.client.post("/load-model?wait=true").status_code == 200


def test_head_works_wherever_get_does(svc):
    for path in ("/health", "/health/live", "/", "/metrics", "/lora-status"):
        r = svc.client.head(path)
        assert r.status_code == 200 and r.content == b"", path
    assert svc.client.head("/jobs/nope").status_code == 404
    assert "HEAD" in svc.client.options("/health").headers["allow"]
    assert svc.client.options("/openapi.json").headers["allow"]  # never an empty Allow
    assert svc.client.post("/generate/", json=body()).status_code == 404  # no redirect from the Host header


def test_an_empty_chunked_body_is_no_body(svc):
    async def nothing():
        return
        yield

    assert svc.client.post("/load-model", content=nothing()).status_code == 200


def test_a_body_over_the_limit_is_a_413(svc):
    limit = svc.app.state.settings.max_body_bytes
    big = b'{"prompt": "' + b"a" * limit + b'"}'
    r = svc.client.post("/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"

    async def chunks():  # no Content-Length: refused while it streams in
        yield b'{"prompt": "'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    r = svc.client.post("/apply-lora", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"
    assert gen(svc).status_code == 200


def test_the_schema_uses_json_schema_keywords_only(svc):
    """Constraints written as pydantic's names (ge, le, multiple_of) would be ignored by every client."""
    def walk(node, where):
        if isinstance(node, dict):
            assert not {"ge", "le", "gt", "lt", "multiple_of", "min_length", "max_length"} & set(node), where
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(svc.client.get("/openapi.json").json()["components"], "#/components")


def test_every_route_declares_its_invalid_input_status_and_500(svc):
    """422 on the native routes; on the OpenAI-compatible ones, OpenAI's 400 (where there is input)."""
    for path, ops in svc.client.get("/openapi.json").json()["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert "500" in op["responses"] and "422" not in op["responses"], (method, path)
                assert "400" in op["responses"] or method == "get", (method, path)
            else:
                assert {"422", "500"} <= set(op["responses"]), (method, path)


# ---------------------------------------------------------------- 7. shared state, faults


@pytest.fixture
def two(cache_dir, lora_dir):
    settings = one_replica(cache_dir, lora_dir, placement="replicas", replicas=2)
    with InProcess(create_app(settings)) as s:
        yield s.wait_ready()


def test_remove_lora_is_all_or_nothing(two):
    """Fake: one replica's adapter deletion fails. The pinned set must stay as it was."""
    assert two.client.post("/apply-lora", json={"lora_name": "style"}).status_code == 200
    replica = two.app.state.manager.replicas[1]
    real = replica.adapters.drop_all_but

    def broken(*a, **kw):
        raise RuntimeError("deleting the adapter failed (fake)")

    replica.adapters.drop_all_but = broken
    try:
        r = two.client.post("/remove-lora", json={"lora_name": "style"}, headers={"X-Request-ID": "rm-1"})
        assert r.status_code == 500, r.text
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"] == "rm-1"  # a 500 keeps its id
        assert two.client.get("/lora-status").json()["pinned"] == [{"name": "style", "weight": 1.0}]
    finally:
        replica.adapters.drop_all_but = real
    pinned = gen(two, seed=3)
    assert pinned.json()["loras"] == [{"name": "style", "weight": 1.0}]
    assert two.client.post("/remove-lora", json={"lora_name": "style"}).status_code == 200
    assert two.client.get("/lora-status").json()["pinned"] == []
    assert gen(two, seed=3).json()["loras"] == []


def _fail_on_worker(index):
    """Fake: the thread-start hook fails on replica `index`'s worker thread only (not at warm-up)."""
    from flux_api.engine.replica import Replica

    real = Replica.on_thread_start

    def on_thread_start(self):
        if threading.current_thread().name == f"flux-replica-{index}" or (index == "all" and
                                                                          threading.current_thread().name.startswith("flux-replica-")):
            raise RuntimeError("cannot select the device (fake)")
        return real(self)

    return on_thread_start


@pytest.mark.slow  # about 3 s: in the full suite (issue 26: a quick tier under a minute)
def test_a_replica_whose_worker_dies_shows_in_health_and_the_others_serve(cache_dir, lora_dir, monkeypatch):
    from flux_api.engine.replica import Replica

    monkeypatch.setattr(Replica, "on_thread_start", _fail_on_worker(1))
    with InProcess(create_app(one_replica(cache_dir, lora_dir, placement="replicas", replicas=2))) as s:
        s.wait_ready()
        wait_for(lambda: s.client.get("/health").json().get("status") == "degraded", 10, 0.02, "a degraded /health")
        h = s.client.get("/health")
        assert h.status_code == 200 and h.json()["replicas"] == {"alive": 1, "dead": [1]}
        assert "cannot select the device (fake)" in h.json()["error"]
        jobs = [s.client.post("/jobs", json=body(seed=i)).json()["id"] for i in range(3)]
        assert all(wait_state(s, j, {"done"})["replica"] == 0 for j in jobs)
        assert s.client.post("/apply-lora", json={"lora_name": "style"}).status_code == 200  # no wait on the dead one


@pytest.mark.slow  # about 2 s: in the full suite (issue 26: a quick tier under a minute)
def test_no_live_worker_fails_fast_instead_of_hanging(cache_dir, lora_dir, monkeypatch):
    from flux_api.engine.replica import Replica

    monkeypatch.setattr(Replica, "on_thread_start", _fail_on_worker("all"))
    with InProcess(create_app(one_replica(cache_dir, lora_dir))) as s:
        wait_for(lambda: s.client.get("/health").json().get("status") == "failed", 60, 0.05, "a failed /health")
        h = s.client.get("/health")
        assert h.status_code == 503 and h.json()["replicas"] == {"alive": 0, "dead": [0]}
        r = gen(s)
        assert r.status_code == 503 and "no replica can generate" in r.json()["error"]["message"]


@pytest.mark.parametrize("exc,code,kind", [(torch.cuda.OutOfMemoryError("CUDA out of memory (fake)"), 503, "out_of_memory"),
                                           (MemoryError(), 503, "out_of_memory"),
                                           (OSError("disk went away (fake)"), 500, "generation_failed"),
                                           (ValueError("target modules not found (fake)"), 422, "invalid_lora")])
def test_a_failing_lora_load_says_whose_fault_it_is_and_changes_nothing(svc, exc, code, kind):
    """Fake: loading the LoRA into the adapter slot raises once. Only a LoRA that does not fit is the
    client's fault."""
    svc.client.post("/remove-lora")
    adapters = svc.app.state.manager.replicas[0].adapters
    base = gen(svc, seed=4)
    before = svc.client.get("/lora-status").json()

    def fails_once(*a, **kw):
        del adapters._load_adapter
        raise exc

    adapters._load_adapter = fails_once
    try:
        r = gen(svc, lora_name="style", seed=4)
    finally:
        adapters.__dict__.pop("_load_adapter", None)
    assert r.status_code == code and r.json()["error"]["type"] == kind, r.text
    assert svc.client.get("/lora-status").json() == before
    assert gen(svc, seed=4).json()["image"] == base.json()["image"]  # the base model, exactly
    assert gen(svc, lora_name="style", seed=4).status_code == 200  # and the LoRA loads next time


def test_a_lora_file_that_disappears_is_a_404_and_nothing_else_changes(svc, lora_dir):
    shutil.copy(lora_dir / "detail.safetensors", lora_dir / "ephemeral.safetensors")
    try:
        assert gen(svc, lora_name="ephemeral").status_code == 200
    finally:
        (lora_dir / "ephemeral.safetensors").unlink()
    r = gen(svc, lora_name="ephemeral")
    assert r.status_code == 404 and r.json()["error"]["type"] == "lora_not_found"
    assert gen(svc).status_code == 200 and svc.client.get("/health").status_code == 200


def test_a_pinned_lora_file_overwritten_in_place_is_reloaded_not_fatal(svc, lora_dir):
    """The adapter's weights are read into memory, never memory-mapped: an overwrite in place (which once
    killed the process with SIGBUS on a pinned LoRA) changes nothing until the next request, which then
    loads the file as it now is. What a request gets follows the file, not what other clients sent."""
    pinned = lora_dir / "pinned-inplace.safetensors"
    shutil.copy(lora_dir / "style.safetensors", pinned)
    try:
        assert svc.client.post("/apply-lora", json={"lora_name": "pinned-inplace"}).status_code == 200
        as_style = gen(svc, seed=6).json()["image"]
        with open(pinned, "r+b") as f:  # in place: same inode, truncated, then other bytes
            f.truncate(0)
            f.write((lora_dir / "detail.safetensors").read_bytes())
        as_detail = gen(svc, seed=6)
        assert as_detail.status_code == 200 and as_detail.json()["image"] != as_style
        assert pixels(gen(svc, seed=6, lora_name="detail")) == pixels(as_detail)  # the new file's weights
        pinned.unlink()
        gone = gen(svc, seed=6)
        assert gone.status_code == 404 and "pinned" in gone.json()["error"]["message"]
        assert svc.client.get("/health").status_code == 200
    finally:
        pinned.unlink(missing_ok=True)
        svc.client.post("/remove-lora")
    assert gen(svc).status_code == 200


@pytest.mark.slow  # about 5 s: in the full suite (issue 26: a quick tier under a minute)
def test_generate_cut_short_by_shutdown_is_a_503_with_retry_after(cache_dir, lora_dir):
    s = InProcess(create_app(one_replica(cache_dir, lora_dir))).__enter__()
    s.wait_ready()
    answers = {}

    def call(name, **kw):
        answers[name] = s.client.post("/generate", json=body(**kw))

    running = threading.Thread(target=call, args=("running",), kwargs=SLOW)
    running.start()
    wait_for(lambda: s.app.state.manager.scheduler.running == 1, 30, 0.01, "the first request to run")
    queued = threading.Thread(target=call, args=("queued",))
    queued.start()
    wait_for(lambda: s.app.state.manager.scheduler.queued == 1, 30, 0.01, "the second request to queue")
    t0 = time.perf_counter()
    stopper = threading.Thread(target=s.__exit__, args=(None, None, None))
    stopper.start()
    queued.join(30)
    r = answers["queued"]
    assert r.status_code == 503 and r.json()["error"]["type"] == "shutting_down", r.text
    assert int(r.headers["retry-after"]) > 0 and time.perf_counter() - t0 < 10
    stopper.join(120)
    running.join(120)
    assert answers["running"].status_code == 200  # running work finishes


@pytest.mark.socket
def test_a_slow_sse_reader_blocks_nothing_and_misses_nothing(cache_dir, lora_dir):
    with Served(create_app(one_replica(cache_dir, lora_dir))) as s:
        s.wait_ready()
        job = s.client.post("/jobs", json=body(width=512, height=512, num_inference_steps=6)).json()
        with httpx.stream("GET", f"{s.url}/jobs/{job['id']}/events", timeout=60) as stream:
            # Read nothing while the job runs and other requests are served.
            wait_state(s, job["id"], {"done"})
            assert gen(s).status_code == 200 and s.client.get("/health").status_code == 200
            text = "".join(stream.iter_text())
    events = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    steps = [int(line.split(": ", 1)[1]) for line in text.splitlines() if line.startswith("id: ")]
    assert events[0] == "state" and events[-1] == "result"
    assert steps == list(range(7 - len(steps), 7))  # every step from the first one listened to, in order
