"""API keys, CORS and request hygiene (issue 14): with keys on, every route in the OpenAPI document (and
every other route of the app) needs `Authorization: Bearer <key>` except the open ones; the key is never
shown anywhere; CORS only for configured origins; the body limit covers chunked bodies and fits an edit.

The keyed service is the tiny BF16 model in process (module scope); what needs a real socket or the
service's own process log (the openai client, the SSE route, `python -m flux_api` start-up) is marked
`socket`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import secrets
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import pytest
from conftest import BF16_DEFAULTS, InProcess, free_port
from PIL import Image
from pydantic import ValidationError

from flux_api.api.access import AccessRule
from flux_api.app import create_app
from flux_api.service_process import running_process
from flux_api.settings import BF16Settings, FP4Settings

ROOT = Path(__file__).resolve().parent.parent
# Distinctive values, so that finding one in a log or a body cannot be a coincidence.
K1, K2 = f"key-one-{secrets.token_hex(12)}", f"key-two-{secrets.token_hex(12)}"
WRONG = f"not-a-key-{secrets.token_hex(12)}"
ORIGIN = "https://app.example"
# The operations of the document that need no key; every other one must.
OPEN_OPERATIONS = {("/health", "get"), ("/health/live", "get"), ("/v1/images/files/{token}", "get")}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", template)


@pytest.fixture(scope="module")
def keyed(cache_dir, lora_dir):
    """Two keys, /metrics closed, one CORS origin."""
    settings = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, api_keys=[K1, K2],
                            metrics_open=False, cors_origins=[ORIGIN], **BF16_DEFAULTS)
    with InProcess(create_app(settings)) as s:
        yield s.wait_ready()


@pytest.fixture(scope="module")
def keys_only(cache_dir):
    """Keys on, every other access setting at its default (/metrics open, no CORS). Loaded before use:
    two models loading at once in one process can collide (accelerate's meta-device loading is global)."""
    with InProcess(create_app(BF16Settings(model="tiny", cache_dir=cache_dir, api_keys=[K1]))) as s:
        yield s.wait_ready()


def operations(app):
    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def assert_refused(r: httpx.Response, path: str, why: str) -> None:
    assert r.status_code == 401, (path, r.status_code, r.text)
    assert r.headers["www-authenticate"] == "Bearer"
    err = r.json()["error"]
    if path.startswith("/v1/"):  # OpenAI's shape: its client raises AuthenticationError
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "unauthorized"
    else:
        assert err["type"] == "unauthorized" and err["code"] == 401 and err["request_id"]
    assert err["message"].startswith(why), err["message"]
    assert K1 not in r.text and K2 not in r.text and WRONG not in r.text


# ---------------------------------------------------------------- every route


def test_every_operation_in_the_document_needs_a_key_but_the_open_ones(keyed):
    ops = list(operations(keyed.app))
    assert len(ops) >= 19  # the whole document, not an empty loop
    assert {(p, m) for p, m, op in ops if "security" not in op} == OPEN_OPERATIONS
    for i, (path, method, _) in enumerate(ops):
        url = concrete(path)
        if (path, method) in OPEN_OPERATIONS:
            assert keyed.client.request(method, url).status_code != 401, path
            continue
        assert_refused(keyed.client.request(method, url), path, "missing API key")
        assert_refused(keyed.client.request(method, url, headers=bearer(WRONG)), path, "invalid API key")
        assert_refused(keyed.client.request(method, url, headers={"Authorization": f"Basic {K1}"}), path,
                       "invalid Authorization header")
        right = keyed.client.request(method, url, headers=bearer((K1, K2)[i % 2]))  # either key does
        assert right.status_code != 401, (method, path, right.text)


def served_routes(app):
    """(path template, methods) of every route the app serves, documented or not (a mount: GET). FastAPI
    0.16x keeps an included router as one entry of app.routes; its routes are its effective contexts."""
    for route in app.routes:
        for r in route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]:
            yield r.path, getattr(r, "methods", None) or {"GET"}


def test_every_route_of_the_app_is_covered_too(keyed):
    """Routes outside the document (the docs pages, a future include_in_schema=False route, a mount) are
    open only where the rule says so: the check is on every path, not on documented ones."""
    rule = AccessRule(keyed.app, metrics_open=False)
    checked = set()
    for path, methods in served_routes(keyed.app):
        for method in sorted(set(methods) - {"HEAD"}):
            r = keyed.client.request(method, concrete(path))
            assert (r.status_code == 401) == (not rule.is_open(method, path)), (method, path, r.status_code)
            checked.add((path, method.lower()))
    assert {(p, m) for p, m, _ in operations(keyed.app)} < checked  # the document's and more (/docs, ...)


def test_the_open_paths_answer_without_a_key(keyed):
    c = keyed.client
    assert c.get("/health").status_code == 200 and c.head("/health").status_code == 200
    assert c.get("/health/live").json() == {"status": "alive"}
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = c.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], page
    assert c.get("/openapi.json").json()["components"]["securitySchemes"]
    # The web page (mounted there by another part) and the docs' own assets, if served: never a 401.
    for page in ("/ui", "/ui/", "/ui/app.js", "/docs/static/swagger-ui.css"):
        assert c.get(page).status_code != 401, page
    assert c.get("/v1/images/files/no-such-token").status_code == 404  # unguessable: its token is the secret
    # Open to reading only, and only those paths.
    assert_refused(c.post("/health"), "/health", "missing API key")
    assert_refused(c.get("/health/"), "/health/", "missing API key")
    assert_refused(c.get("/"), "/", "missing API key")


def test_a_result_link_made_with_a_key_opens_without_one(keyed):
    r = keyed.client.post("/v1/images/generations", headers=bearer(K2), json={
        "prompt": "a red circle", "size": "256x256", "response_format": "url", "num_inference_steps": 2, "seed": 1})
    assert r.status_code == 200, r.text
    url = httpx.URL(r.json()["data"][0]["url"])
    got = keyed.client.get(url.path)  # as an <img> would: no header
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"


def test_an_unknown_path_or_method_says_nothing_without_a_key(keyed):
    c = keyed.client
    assert_refused(c.get("/no-such-route"), "/no-such-route", "missing API key")
    assert c.get("/no-such-route", headers=bearer(K1)).status_code == 404
    assert_refused(c.get("/generate"), "/generate", "missing API key")
    assert c.get("/generate", headers=bearer(K1)).status_code == 405
    assert_refused(c.post("/v1/images/nothing"), "/v1/images/nothing", "missing API key")


def _asgi_get(svc: InProcess, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as given (an HTTP client would remove its dot segments), straight into the app."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("in-process", 80)}
    asyncio.run_coroutine_threadsafe(svc.app(scope, receive, send), svc._loop).result(30)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_an_open_prefix_does_not_reach_a_closed_route(keyed):
    for path in ("/ui/../model-status", "/health/../model-status", "/v1/images/files/../../../model-status",
                 "/docs/../model-status"):
        status, body = _asgi_get(keyed, path)
        assert status in (401, 404) and b"loaded" not in body, (path, status, body[:200])


def test_a_key_is_needed_before_the_body_is_read(keyed):
    """No key: 401, whatever the body (malformed, or larger than the limit: never read)."""
    r = keyed.client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert_refused(r, "/generate", "missing API key")
    big = keyed.app.state.settings.max_body_bytes + 1

    async def chunks():
        for _ in range(big // 65536 + 1):
            yield b"a" * 65536

    assert_refused(keyed.client.post("/generate", content=chunks()), "/generate", "missing API key")


# ---------------------------------------------------------------- /metrics, OpenAPI


def test_metrics_needs_a_key_only_when_metrics_open_is_off(keyed, keys_only):
    assert_refused(keyed.client.get("/metrics"), "/metrics", "missing API key")
    assert keyed.client.get("/metrics", headers=bearer(K1)).text.startswith("# HELP")
    assert keys_only.client.get("/metrics").text.startswith("# HELP")  # the default: a scraper needs no key
    assert_refused(keys_only.client.get("/model-status"), "/model-status", "missing API key")
    assert "security" in keyed.app.openapi()["paths"]["/metrics"]["get"]
    assert "security" not in keys_only.app.openapi()["paths"]["/metrics"]["get"]


def test_the_document_offers_bearer_auth_and_declares_the_401s(keyed):
    doc = keyed.client.get("/openapi.json").json()
    (name, scheme), = doc["components"]["securitySchemes"].items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"  # Swagger UI's Authorize sends the header
    for path, method, op in operations(keyed.app):
        if (path, method) in OPEN_OPERATIONS:
            assert "security" not in op and "401" not in op["responses"], path
            continue
        assert op["security"] == [{name: []}], path
        ref = op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == ("#/components/schemas/OpenAIErrorBody" if path.startswith("/v1/")
                       else "#/components/schemas/ErrorBody"), path
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert doc == keyed.app.openapi()  # patched once, served as built


def test_without_keys_there_is_no_auth_at_all(bf16):
    doc = bf16.app.openapi()
    assert "securitySchemes" not in doc["components"]
    assert not any("security" in op or "401" in op["responses"] for _, _, op in operations(bf16.app))
    assert bf16.client.get("/model-status").status_code == 200


# ---------------------------------------------------------------- keys never shown


def test_keys_never_appear_in_logs_bodies_or_settings(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    c = keyed.client
    assert c.get("/model-status", headers=bearer(K1)).status_code == 200
    seen = [c.get("/model-status", headers=bearer(K1)).text, c.get("/", headers=bearer(K2)).text,
            c.get("/openapi.json").text, c.get("/metrics", headers=bearer(K2)).text,
            c.post("/generate", headers=bearer(WRONG), json={"prompt": "x"}).text,
            c.get("/presets?x=1", headers=bearer(K1)).text,  # a 422 names the query, not the header
            c.post("/v1/images/generations", headers=bearer(WRONG), json={}).text,
            c.get("/model-status", headers={"Authorization": K1}).text]  # the key without its scheme
    assert "GET /model-status -> 200" in caplog.text and "-> 401" in caplog.text  # the log was captured
    settings = keyed.app.state.settings
    seen += [caplog.text, repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    for text in seen:
        assert K1 not in text and K2 not in text and WRONG not in text


@pytest.mark.parametrize("keys", [[K1, "  "], [""], ["\t\n"]])
def test_a_blank_key_is_a_start_up_error_that_prints_no_key(keys):
    with pytest.raises(ValidationError) as e:
        FP4Settings(api_keys=keys)
    text = str(e.value)
    assert "api_keys" in text and "blank" in text and K1 not in text


@pytest.mark.parametrize("key", [f" {K1}", f"{K1} x", f"{K1}é"], ids=["leading-space", "inner-space", "non-ascii"])  # ids: the keys are random
def test_a_key_a_header_cannot_carry_is_a_start_up_error_that_prints_no_key(key):
    with pytest.raises(ValidationError, match="printable ASCII") as e:
        BF16Settings(api_keys=[K2, key])
    assert "number 2 of 2" in str(e.value) and K1 not in str(e.value) and K2 not in str(e.value)


def test_a_malformed_key_setting_prints_no_key(monkeypatch, tmp_path):
    with pytest.raises(ValidationError) as e:
        BF16Settings(api_keys=K1)  # a string, not a list: the error must not quote it
    assert "api_keys" in str(e.value) and K1 not in str(e.value)
    monkeypatch.setenv("FLUX_BF16_API_KEYS", json.dumps([K1, K2]))
    assert [k.get_secret_value() for k in BF16Settings().api_keys] == [K1, K2]
    monkeypatch.setenv("FLUX_BF16_API_KEYS", json.dumps([K1, " "]))
    with pytest.raises(ValidationError, match="blank") as e:
        BF16Settings()
    assert K1 not in str(e.value)
    monkeypatch.delenv("FLUX_BF16_API_KEYS")
    (tmp_path / "bf16.toml").write_text(f'api_keys = ["{K2}"]\nmetrics_open = false\n')
    monkeypatch.setenv("FLUX_API_CONFIG_DIR", str(tmp_path))
    s = BF16Settings()
    assert [k.get_secret_value() for k in s.api_keys] == [K2] and s.metrics_open is False


@pytest.mark.socket
def test_a_blank_key_stops_python_m_flux_api_naming_the_setting():
    env = {"FLUX_BF16_API_KEYS": json.dumps([K1, " "]), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "flux_api", "bf16", "--model", "tiny", "--port", str(free_port())],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr
    assert "api_keys" in run.stderr and "blank" in run.stderr and "FLUX_BF16_API_KEYS" in run.stderr
    assert K1 not in run.stdout + run.stderr


@pytest.mark.socket
def test_a_real_service_with_keys_keeps_them_out_of_its_log(cache_dir, tmp_path):
    """`python -m flux_api` with keys from the environment, at debug level: the openai client gets
    AuthenticationError without a valid key and images with one; the SSE route refuses before it streams;
    neither key nor a wrong one is anywhere in the process's output."""
    import openai

    port, log = free_port(), tmp_path / "service.log"
    cmd = [sys.executable, "-m", "flux_api", "bf16", "--model", "tiny", "--port", str(port), "--log-level", "debug"]
    env = {"FLUX_BF16_API_KEYS": json.dumps([K1, K2]), "FLUX_BF16_CACHE_DIR": str(cache_dir),
           "FLUX_BF16_DEFAULT_STEPS": "2", "FLUX_BF16_DEFAULT_WIDTH": "256", "FLUX_BF16_DEFAULT_HEIGHT": "256"}
    with running_process(cmd, port, env, log, timeout_s=180) as (client, _):
        base = f"http://127.0.0.1:{port}"
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=f"{base}/v1", api_key=WRONG, max_retries=0).images.generate(prompt="a red circle")
        assert e.value.status_code == 401 and e.value.code == "unauthorized" and WRONG not in str(e.value)
        good = openai.OpenAI(base_url=f"{base}/v1", api_key=K2, max_retries=0)
        res = good.images.generate(prompt="a red circle", size="256x256", extra_body={"seed": 1})
        assert Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json))).size == (256, 256)
        with client.stream("GET", "/jobs/x/events", headers=bearer(WRONG)) as r:
            assert r.status_code == 401 and r.headers["content-type"] == "application/json"
            assert json.loads(r.read())["error"]["type"] == "unauthorized"
        assert client.get("/model-status", headers=bearer(K1)).status_code == 200
    output = log.read_text()
    assert "GET /model-status -> 200" in output and "-> 401" in output, output[-2000:]  # it logged the requests
    assert K1 not in output and K2 not in output and WRONG not in output


# ---------------------------------------------------------------- CORS


def test_cors_is_off_by_default(keys_only):
    assert BF16Settings().cors_origins == []
    c = keys_only.client
    preflight = c.options("/generate", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    plain = c.get("/health/live", headers={"Origin": ORIGIN})
    for r in (preflight, plain):
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], dict(r.headers)


def test_cors_answers_a_configured_origin_and_no_other(keyed):
    c = keyed.client
    preflight = c.options("/generate", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200  # no key: a preflight never carries one
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    ok = c.get("/model-status", headers={"Origin": ORIGIN, **bearer(K1)})
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in ok.headers["access-control-expose-headers"]
    refused = c.get("/model-status", headers={"Origin": ORIGIN})  # a page can read why it was refused
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    other = "https://elsewhere.example"
    assert c.options("/generate", headers={"Origin": other, "Access-Control-Request-Method": "POST"}).status_code == 400
    assert "access-control-allow-origin" not in c.get("/health", headers={"Origin": other}).headers


def test_a_cors_origin_with_a_path_is_refused_at_start_up():
    with pytest.raises(ValidationError, match="cors_origins"):
        BF16Settings(cors_origins=["https://app.example/"])  # a browser's Origin never ends in a slash
    assert BF16Settings(cors_origins=["*", "http://localhost:3000"]).cors_origins == ["*", "http://localhost:3000"]


# ---------------------------------------------------------------- the body limit


def padded_png(size: tuple[int, int], total: int, mode: str = "RGB", color=(90, 120, 200)) -> bytes:
    """A small real image, `total` bytes long: a private ancillary chunk (which decoders skip) pads it."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    png = buf.getvalue()
    pad = total - len(png) - 12
    chunk = struct.pack(">I", pad) + b"prVt" + b"\0" * pad
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]) & 0xFFFFFFFF)
    at = 8 + 25  # after the signature and IHDR
    return png[:at] + chunk + png[at:]


@pytest.mark.slow  # about 3 s: in the full suite (issue 26: a quick tier under a minute)
def test_an_edit_with_image_and_mask_at_the_size_limit_fits_the_body_limit(keyed):
    s = keyed.app.state.settings
    assert (s.max_body_bytes, s.max_image_bytes) == (48 << 20, 16 << 20)  # the defaults are what is checked
    size = s.max_image_bytes - 1024
    image = padded_png((256, 256), size)
    alpha_mask = padded_png((256, 256), size, "RGBA", (0, 0, 0, 0))  # OpenAI's convention: transparent is edited
    r = keyed.client.post("/v1/images/edits", headers=bearer(K1), files={
        "image": ("i.png", image, "image/png"), "mask": ("m.png", alpha_mask, "image/png")},
        data={"prompt": "a blue square", "num_inference_steps": "2", "seed": "1"})
    assert r.status_code == 200, r.text[:500]
    # The native API takes both as base64 in JSON: 4/3 of their size, still under the limit.
    white_mask = padded_png((256, 256), size, "L", 255)
    body = {"prompt": "a blue square", "image": base64.b64encode(image).decode(), "mask":
            base64.b64encode(white_mask).decode(), "width": 256, "height": 256, "num_inference_steps": 2, "seed": 1}
    assert len(json.dumps(body)) > 40 << 20
    r = keyed.client.post("/generate", headers=bearer(K1), json=body)
    assert r.status_code == 200, r.text[:500]


def test_a_chunked_body_over_the_limit_is_a_413_on_v1_too(keyed):
    limit = keyed.app.state.settings.max_body_bytes

    async def chunks():  # no Content-Length
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"i.png\"\r\n\r\n"
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536
        yield b"\r\n--b--\r\n"

    r = keyed.client.post("/v1/images/edits", content=chunks(),
                          headers={"content-type": "multipart/form-data; boundary=b", **bearer(K1)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    assert "content-length" not in r.request.headers  # it really was chunked


def test_a_body_limit_too_small_for_an_edit_is_a_start_up_error():
    with pytest.raises(ValidationError, match="max_body_bytes"):
        BF16Settings(max_image_bytes=24 << 20)  # two base64 images of 24 MiB need more than 48 MiB
    assert BF16Settings(max_image_bytes=24 << 20, max_body_bytes=72 << 20).max_image_bytes == 24 << 20
