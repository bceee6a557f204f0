"""The engine's shape, checked where it shows: requests checked before they queue (a bad one fails at
once while the GPU is busy, and never takes a queue slot), the worker re-checking a LoRA file by its
hash, the backend registry, and the per-service body schema in the OpenAPI document."""

import base64
import io
import shutil
import time
import typing

import pytest
from conftest import InProcess, gen, wait_state
from PIL import Image
from test_hub_errors import hub  # noqa: F401 - the stand-in Hub fixture

from flux_api.app import create_app
from flux_api.engine.backends import BACKENDS, Backend, Packages
from flux_api.engine.backends.environment import NunchakuProbe
from flux_api.engine.devices import Hardware
from flux_api.engine.services import BF16FluxModelManager, FP4FluxModelManager
from flux_api.errors import BackendUnavailable
from flux_api.settings import BF16Settings, FP4Backend

SLOW = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 60, "seed": 1}  # a few seconds


def start_slow_job(s) -> str:
    job = s.client.post("/jobs", json=SLOW).json()["id"]
    wait_state(s, job, {"running"})
    return job


def test_bad_requests_fail_at_once_while_the_gpu_is_busy_and_take_no_queue_slot(bf16):
    job = start_slow_job(bf16)
    try:
        for lora, code, says in (("no-such-lora", 404, "was not found"), ("other-model", 422, "does not fit"),
                                 ("corrupt", 422, "not a readable safetensors"), ("../escape", 422, "a path inside the LoRA folder")):
            t = time.perf_counter()
            r = gen(bf16, lora_name=lora)
            took = time.perf_counter() - t
            assert r.status_code == code and says in r.json()["error"]["message"], r.text
            assert took < 2.0, f"{lora} took {took:.2f} s to refuse"
            assert bf16.client.get(f"/jobs/{job}").json()["state"] == "running"  # refused while it renders
        assert bf16.client.get("/model-status").json()["queue"]["queued"] == 0  # nothing was queued
    finally:
        bf16.client.delete(f"/jobs/{job}")
        wait_state(bf16, job, {"cancelled", "done"})


@pytest.mark.slow  # about 2 s: in the full suite (issue 26: a quick tier under a minute)
def test_a_lora_changed_after_its_check_is_refused_by_the_worker(cache_dir, lora_dir, tmp_path):
    own = tmp_path / "loras"
    own.mkdir()
    shutil.copy(lora_dir / "style.safetensors", own / "mine.safetensors")
    settings = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=own, default_steps=2,
                            default_width=256, default_height=256)
    with InProcess(create_app(settings)) as s:
        s.wait_ready()
        slow = start_slow_job(s)
        queued = s.client.post("/jobs", json={"prompt": "a cat", "seed": 2, "lora_name": "mine"})
        assert queued.status_code == 202  # checked and queued behind the slow job
        shutil.copy(lora_dir / "detail.safetensors", own / "mine.safetensors")  # changed while it waits
        s.client.delete(f"/jobs/{slow}")
        job_id = queued.json()["id"]
        j = wait_state(s, job_id, {"done", "failed", "cancelled", "timed_out"})
        assert j["state"] == "failed" and j["error"]["type"] == "invalid_lora"
        assert "changed on disk after it was checked" in j["error"]["message"]
        # the next request checks the file as it is now, and gets it
        r = gen(s, lora_name="mine")
        assert r.status_code == 200 and r.json()["loras"] == [{"name": "mine", "weight": 1.0}]


def test_openapi_shows_each_services_body_schema_on_generate_and_jobs(bf16):
    doc = bf16.client.get("/openapi.json").json()
    for path, model in (("/generate", "GenerateRequest"), ("/jobs", "JobRequest")):  # JobRequest: plus the callback
        body = doc["paths"][path]["post"]["requestBody"]
        assert body["required"] is True and body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{model}"}
    job = doc["components"]["schemas"]["JobRequest"]
    assert job["properties"] == doc["components"]["schemas"]["GenerateRequest"]["properties"]  # webhooks off here
    width = doc["components"]["schemas"]["GenerateRequest"]["properties"]["width"]
    assert (width["minimum"], width["maximum"], width["multipleOf"], width["default"]) == (256, 1024, 16, 256)
    assert "x-body-model" not in str(doc)


def test_every_fp4_setting_names_a_registered_backend():
    names = set(typing.get_args(FP4Backend)) - {"auto"}
    assert names == set(FP4FluxModelManager.offered_backends) <= set(BACKENDS)
    assert set(FP4FluxModelManager.auto_order) <= names and BF16FluxModelManager.offered_backends == ("diffusers",)
    for name, cls in BACKENDS.items():
        assert cls.name == name and issubclass(cls, Backend)


def test_a_new_backend_is_one_class_and_one_registry_entry(monkeypatch):
    class StandInBackend(Backend):
        """A stand-in backend, named as such: it only has to be chosen."""

        name = "stand-in"

        @classmethod
        def problem(cls, hw, pkgs):
            return None if hw.cuda else "needs a GPU"

    class Service(FP4FluxModelManager):
        offered_backends = (*FP4FluxModelManager.offered_backends, "stand-in")
        auto_order = ("stand-in", "torchao-int8")

    monkeypatch.setitem(BACKENDS, "stand-in", StandInBackend)
    pkgs = Packages(NunchakuProbe(installed=False), bitsandbytes=False, torchao=True)
    cpu = Service.choose_backend("auto", Hardware(), pkgs)
    assert cpu.name == "torchao-int8" and "not stand-in: needs a GPU" in cpu.reason
    with pytest.raises(BackendUnavailable, match="needs a GPU"):
        Service.choose_backend("stand-in", Hardware(), pkgs)


def test_the_preflight_asks_the_configured_hub_endpoint(hub, tmp_path):  # noqa: F811 - the fixture
    """hub_endpoint reaches the model pre-flight (a stand-in Hub on loopback answers 'not found'; the
    real Hub would not be reachable from here at all)."""
    from flux_api.errors import ModelSourceError

    manager = BF16FluxModelManager(BF16Settings(model="org/missing", cache_dir=tmp_path, hub_endpoint=hub), Hardware())
    with pytest.raises(ModelSourceError, match="org/missing was not found"):
        manager.preflight()


def test_nunchaku_adapters_load_the_checked_files_without_a_diffusers_shape_check(lora_dir):
    """Nunchaku cannot be installed here: its transformer is a stand-in (named so) that records the calls
    Nunchaku's documented LoRA API receives. Everything around it is real: the checker, the files."""
    from types import SimpleNamespace

    from flux_api.engine.backends.nunchaku import NunchakuAdapters, NunchakuBackend
    from flux_api.engine.checks import LoraChecker
    from flux_api.engine.lora import LoraResolver, LoraSpec

    class StandInNunchakuTransformer:
        def __init__(self):
            self.calls = []

        def update_lora_params(self, path):
            self.calls.append(("update", path))

        def set_lora_strength(self, weight):
            self.calls.append(("strength", weight))

        def reset_lora(self):
            self.calls.append(("reset",))

    assert NunchakuBackend.checks_lora_fit is False
    pipe = SimpleNamespace(transformer=StandInNunchakuTransformer())
    resolver = LoraResolver(lora_dir, hub=False)
    files = LoraChecker(resolver).check([LoraSpec("style", 0.7)], fit=None)  # no layers to check
    adapters = NunchakuAdapters(pipe, resolver, 4, "nunchaku")
    adapters.activate((LoraSpec("style", 0.7),), set(), files)
    assert pipe.transformer.calls == [("update", str(files["style"].path)), ("strength", 0.7)]
    adapters.activate((), set())
    assert pipe.transformer.calls[-1] == ("reset",)


@pytest.mark.slow  # about 3 s: in the full suite (issue 26: a quick tier under a minute)
def test_a_lora_file_changed_between_requests_is_loaded_again(cache_dir, lora_dir, tmp_path):
    own = tmp_path / "loras"
    own.mkdir()
    shutil.copy(lora_dir / "style.safetensors", own / "mine.safetensors")
    shutil.copy(lora_dir / "detail.safetensors", own / "detail.safetensors")
    settings = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=own, default_steps=2,
                            default_width=256, default_height=256)
    with InProcess(create_app(settings)) as s:
        s.wait_ready()
        def pixels(name):
            return Image.open(io.BytesIO(base64.b64decode(gen(s, lora_name=name).json()["image"]))).tobytes()

        style = pixels("mine")
        shutil.copy(own / "detail.safetensors", own / "mine.safetensors")  # the adapter "mine" is cached
        now = pixels("mine")
        assert now != style and now == pixels("detail")  # the new bytes, not the cached adapter


def test_error_types_are_the_contract_strings():
    """Clients switch on these; they are derived from the class names, so a rename must not change them."""
    from flux_api import errors as E

    assert {cls.__name__: cls.type for cls in (
        E.FluxAPIError, E.ModelNotReady, E.ModelSourceError, E.HubAuthError, E.HubUnreachable, E.BackendUnavailable,
        E.InvalidRequest, E.LoraNotFound, E.InvalidLora, E.LoraNotAllowed, E.LoraHubUnreachable, E.QueueFull,
        E.JobNotFound, E.JobCancelled, E.GenerationTimeout, E.GPUOutOfMemory, E.GenerationFailed)} == {
        "FluxAPIError": "internal_error", "ModelNotReady": "model_not_ready", "ModelSourceError": "model_source_error",
        "HubAuthError": "hub_auth_error", "HubUnreachable": "hub_unreachable",
        "BackendUnavailable": "backend_unavailable", "InvalidRequest": "invalid_request",
        "LoraNotFound": "lora_not_found", "InvalidLora": "invalid_lora", "LoraNotAllowed": "lora_not_allowed",
        "LoraHubUnreachable": "lora_hub_unreachable", "QueueFull": "queue_full", "JobNotFound": "job_not_found",
        "JobCancelled": "cancelled", "GenerationTimeout": "timeout", "GPUOutOfMemory": "out_of_memory",
        "GenerationFailed": "generation_failed"}


def test_a_lora_file_that_cannot_be_read_is_a_422_not_a_500(lora_dir, monkeypatch):
    """Root reads any file here, so the unreadable file is a stand-in: hashing it raises PermissionError."""
    from flux_api.engine import checks
    from flux_api.engine.lora import LoraResolver, LoraSpec
    from flux_api.errors import InvalidLora

    def unreadable(path, fresh=False):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checks, "file_sha256", unreadable)
    with pytest.raises(InvalidLora, match="cannot be read: .*Permission denied"):
        checks.LoraChecker(LoraResolver(lora_dir, hub=False)).check([LoraSpec("style", 1.0)], fit=None)


def test_the_plain_services_never_import_ray():
    """Ray is an optional extra (issue 15): only flux_api.serving imports it."""
    import subprocess
    import sys

    code = ("import sys, flux_api.__main__, flux_api.app, flux_api.cli.app, flux_api.bench.cli; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
