"""Shared fixtures: the tiny model, real LoRA files, and both services, in two tiers.

- In process (`InProcess`, the default): the app is called through httpx's ASGI transport, with its
  lifespan (model load, shutdown) run explicitly. No socket, no server thread: the contract tests.
- Socket (`Served`, a real uvicorn; or a process of its own): only for what needs one (client
  disconnects, SSE streaming, SIGTERM, the launch scripts). Such tests are marked `socket`;
  `./scripts/test.sh --quick` leaves them out, and the `slow` ones, and the `twin`s (the FP4 run of a
  test on both services, but for the core image contracts, which run on both there too).

Nothing downloads: HF_HUB_OFFLINE is set before huggingface_hub is imported, and HF_HOME points
at a fresh folder, so only what a test lays into that cache by hand can load from "the Hub".
"""

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="flux-api-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("HF_TOKEN", None)
for _k in [k for k in os.environ if k.startswith(("FLUX_BF16_", "FLUX_FP4_"))]:
    del os.environ[_k]  # the tests set every setting they rely on

import asyncio  # noqa: E402
import collections  # noqa: E402
import concurrent.futures  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, TypeVar  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
import uvicorn  # noqa: E402

from flux_api.app import create_app  # noqa: E402
from flux_api.engine.tiny import ensure_tiny_model  # noqa: E402
from flux_api.service_process import wait_until_ready  # noqa: E402
from flux_api.settings import BF16Settings, FP4Settings  # noqa: E402

# Small, fast defaults for the services under test; also what /docs must show.
BF16_DEFAULTS = dict(default_steps=3, default_width=256, default_height=256)
FP4_DEFAULTS = dict(default_steps=2, default_width=256, default_height=256)

def pytest_configure(config):
    config.addinivalue_line("markers", "socket: needs a real socket or a service process of its own (uvicorn, "
                                       "`python -m flux_api`, the launch scripts); left out by test.sh --quick")
    config.addinivalue_line("markers", "slow: more than about 1.5 s on 2 cores by design (waits, restarts, many or "
                                       "large images); left out by test.sh --quick")
    config.addinivalue_line("markers", "twin: the FP4 run of a test that runs on both services (`svc`); test.sh "
                                       "--quick runs each such test once, on BF16, and leaves its twin to the full suite")


def pytest_collection_modifyitems(items):
    # schemathesis names each case's item after its operation (`test_fuzz[bf16][GET /]`) but gives them all
    # one node id (`test_fuzz.py::test_fuzz`); pytest-xdist schedules by node id and would run one of them.
    # The id is private to pytest (a string before pytest 9, a structured NodeId since), hence the check below.
    for item in items:
        base = getattr(item, "originalname", None)
        if base and item.name != base and item.nodeid.endswith("::" + base):
            new = item.nodeid[: -len(base)] + item.name
            if hasattr(item, "_id"):
                from _pytest.nodeid import NodeId

                item._id = NodeId.parse(new)
            else:
                item._nodeid = new
    ids = collections.Counter(item.nodeid for item in items)
    twice = [nodeid for nodeid, n in ids.items() if n > 1]
    if twice:
        raise pytest.UsageError(f"{len(twice)} node ids are shared by several tests, of which pytest-xdist runs "
                                f"one: {twice[:5]}")


T = TypeVar("T")


def build_wheel(out: Path) -> Path:
    """The package built as pip builds it (a wheel, from a copy of the sources: building writes build/ and
    *.egg-info beside them), into `out`; its path."""
    root = Path(__file__).resolve().parent.parent
    src = out / "src"
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "config", "flux_api"):
        if (root / part).is_dir():
            shutil.copytree(root / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(root / part, src / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("flux_api-*.whl"))


def wait_for(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.01, what: str = "the condition") -> T:
    """Poll `predicate` every `interval` s until it returns something truthy, and return that; fail after
    `timeout` s. The tests wait on conditions this way, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def bf16_process(cache_dir) -> tuple[subprocess.Popen, int]:
    """`python -m flux_api bf16 --model tiny` as a process of its own, stdout and stderr piped together:
    for the tests that signal it and read its exit and its log (running_process would hide it)."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLUX_")},
           "FLUX_BF16_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flux_api", "bf16", "--model", "tiny", "--port", str(port)],
                            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, port


def free_port() -> int:
    """A loopback port nothing listens on (for a service process of its own, or to be refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_state(s, job_id: str, states, timeout: float = 60) -> dict:
    """Wait until job `job_id` of service `s` is in one of `states`; its GET /jobs/{id} body."""
    last = {}

    def reached():
        last.update(s.client.get(f"/jobs/{job_id}").json())
        return dict(last) if last["state"] in states else None

    try:
        return wait_for(reached, timeout, 0.02)
    except AssertionError:
        raise AssertionError(f"job {job_id} never reached {states}: {last}") from None


def lay_out_hub_cache(repo: str, files: dict[str, bytes]) -> None:
    """Files laid out exactly as huggingface_hub's cache stores a downloaded repo (blobs, a snapshot
    of symlinks, refs/main), in the HF_HOME of this test session."""
    hub = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snap = hub / "snapshots" / commit
    for rel, data in files.items():
        blob = hub / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (hub / "refs").mkdir(parents=True, exist_ok=True)
    (hub / "refs" / "main").write_text(commit)


class _SessionLoop:
    """One asyncio event loop in a daemon thread, shared by every in-process service of the session:
    the apps' lifespans and requests run on it, as they would on uvicorn's loop."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="in-process-asgi-loop", daemon=True).start()
                cls._loop = loop
            return cls._loop


class InProcessClient:
    """A synchronous, thread-safe facade over `httpx.AsyncClient(transport=ASGITransport(app))`: each call
    runs as its own task on the session loop and blocks the calling thread until the response is
    complete, so several test threads can have requests in flight at once. Same call shape as
    `httpx.Client` (get/post/put/patch/delete/head/options/request, returning httpx.Response).

    No `stream()`: the ASGI transport hands the body over only once the app has finished it, so SSE
    and client disconnects need a real socket (`Served`, tests marked `socket`)."""

    def __init__(self, app, loop: asyncio.AbstractEventLoop, base_url: str = "http://in-process", timeout: float = 120):
        self._loop, self.timeout = loop, timeout
        # raise_app_exceptions=False: an unexpected error answers 500 (the app's handler wrote it), as a
        # real server would, instead of raising in the test.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._client = httpx.AsyncClient(transport=transport, base_url=base_url)

    def _run(self, coro, timeout: float | None):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the ASGI transport has no timeouts of its own: this one stands in for them
            raise httpx.ReadTimeout(f"no response from the in-process app in {timeout} s") from None

    def request(self, method: str, url: str, *, timeout: float | None = None, **kwargs) -> httpx.Response:
        return self._run(self._client.request(method, url, **kwargs), timeout or self.timeout)

    get = functools.partialmethod(request, "GET")
    post = functools.partialmethod(request, "POST")
    put = functools.partialmethod(request, "PUT")
    patch = functools.partialmethod(request, "PATCH")
    delete = functools.partialmethod(request, "DELETE")
    head = functools.partialmethod(request, "HEAD")
    options = functools.partialmethod(request, "OPTIONS")

    def stream(self, *args, **kwargs):
        raise NotImplementedError("streaming needs a real socket: use Served and mark the test `socket`")

    def close(self) -> None:
        self._run(self._client.aclose(), 30)


class InProcess:
    """A service called in process: its lifespan (pre-flight, background model load; on exit the unload)
    runs explicitly on the session loop, since httpx's ASGI transport does not run it, and `client`
    calls the app without a socket. The contract tests' tier: no port, no server thread, no /health
    wait for a server to listen. `with InProcess(app) as s: s.wait_ready()` as with `Served`."""

    def __init__(self, app):
        self.app = app
        self._loop = _SessionLoop.get()
        self._lifespan = app.router.lifespan_context(app)

    def __enter__(self) -> "InProcess":
        asyncio.run_coroutine_threadsafe(self._lifespan.__aenter__(), self._loop).result(120)
        self.client = InProcessClient(self.app, self._loop)
        return self

    def wait_ready(self, timeout: float = 120) -> "InProcess":
        wait_until_ready(self.client, timeout)
        return self

    def __exit__(self, *exc):
        try:
            self.client.close()
        finally:
            asyncio.run_coroutine_threadsafe(self._lifespan.__aexit__(None, None, None), self._loop).result(120)


class Served:
    """A real uvicorn server in a thread, on a free port, with the app's lifespan running: for the tests
    that need a socket (client disconnects, SSE); mark them `socket`."""

    def __init__(self, app):
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()

        def started() -> bool:
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped during start-up")
            return self.server.started

        wait_for(started, 60, 0.02, "the server to start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=120)
        return self

    def wait_ready(self, timeout: float = 120) -> "Served":
        wait_until_ready(self.client, timeout)
        return self

    def __exit__(self, *exc):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flux-cache")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The trained tiny model shipped in flux_api/tiny_model (read only: copy it to change it)."""
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory, tiny_dir) -> Path:
    """Real LoRAs for the tiny transformer: the trained "green" LoRA shipped with the model (every object
    drawn green), peft adapters with random non-zero weights saved in the diffusers LoRA format, plus
    files that must be refused."""
    import torch
    from safetensors.torch import save_file
    from soak import make_loras

    # style, detail (peft adapters, random non-zero A and B) and kohya (BFL names, converted by diffusers)
    root = make_loras(tiny_dir, tmp_path_factory.mktemp("loras"))
    shutil.copy(tiny_dir / "loras" / "green.safetensors", root / "green.safetensors")
    g = torch.Generator().manual_seed(4)
    config = json.loads((tiny_dir / "transformer" / "config.json").read_text())
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    # a LoRA made for another model: to_q's in_features do not match (99 instead of the model's)
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 99, generator=g),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(inner, 4, generator=g)},
              root / "other-model.safetensors")
    (root / "sub").mkdir()
    shutil.copy(root / "detail.safetensors", root / "sub" / "nested.safetensors")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    (root / "evil.pt").write_bytes(b"pickle would run code")
    outside = tmp_path_factory.mktemp("outside") / "escape.safetensors"
    shutil.copy(root / "style.safetensors", outside)
    (root / "escape.safetensors").symlink_to(outside)
    return root


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    """quantize(module) with torchao fp8 per-row weights on the CPU: torchao refuses without an sm_89+ GPU
    (`_check_hardware_support`), torch's CPU `_scaled_mm` runs them; the check is switched off (a fake)."""
    import torchao.quantization.quant_api as quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)  # the fake: see above
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    return lambda module: quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(),
                                                                                       set_inductor_config=False))


@pytest.fixture(scope="session")
def bf16(cache_dir, lora_dir):
    settings = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, port=8001, **BF16_DEFAULTS)
    with InProcess(create_app(settings)) as s:
        yield s.wait_ready()


@pytest.fixture(scope="session")
def fp4(cache_dir, lora_dir):
    settings = FP4Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, port=8000, **FP4_DEFAULTS)
    with InProcess(create_app(settings)) as s:
        yield s.wait_ready()


# For the core image contracts (same seed same bytes, LoRAs that never leak): `svc` on both services
# without the `twin` mark, so that the quick tier checks them on FP4 too (its CPU path differs: int8
# weights, the LoRA slot over them). Same node ids as `svc`'s own params.
ON_BOTH_IN_QUICK = pytest.mark.parametrize("svc", ["bf16", "fp4"], indirect=True)


@pytest.fixture(params=["bf16", pytest.param("fp4", marks=pytest.mark.twin)])
def svc(request) -> InProcess:
    """Each test that takes `svc` runs against both services (the FP4 run marked `twin`: the quick tier
    checks each behaviour once, the full suite on both services)."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def clean(svc):
    """`svc` with nothing pinned, before and after the test (LoRA tests)."""
    svc.client.post("/remove-lora")
    yield svc
    svc.client.post("/remove-lora")


def pixels(resp: httpx.Response) -> bytes:
    """The decoded pixels of a /generate answer's image (not its PNG bytes, whose metadata names the LoRAs)."""
    import base64
    import io

    from PIL import Image

    assert resp.status_code == 200, resp.text
    return Image.open(io.BytesIO(base64.b64decode(resp.json()["image"]))).tobytes()


def gen(svc: "InProcess | Served", **body) -> httpx.Response:
    """POST /generate with small fast defaults; `body` overrides them."""
    payload = {"prompt": "a red bicycle on a bridge", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 1}
    payload.update(body)
    payload = {k: v for k, v in payload.items() if v is not None}
    return svc.client.post("/generate", json=payload)
