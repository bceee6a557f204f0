"""LoRA sources and safety: the Hub (offline, from a hand-built cache; errors from a stand-in Hub on
loopback), the allowlist, the size cap, a kohya-format file, a LoRA made for another model, the LRU
cache, and interleaved requests with and without LoRAs. On both services."""

import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer

import huggingface_hub.constants
import pytest
from conftest import pixels, gen, lay_out_hub_cache
from test_hub_errors import StandInHub



@pytest.fixture(scope="module")
def hub_loras(lora_dir):
    """Two Hub LoRA repos in the local cache: one with a single file, one with two."""
    style = (lora_dir / "style.safetensors").read_bytes()
    detail = (lora_dir / "detail.safetensors").read_bytes()
    lay_out_hub_cache("lora-owner/one-file", {"pytorch_lora_weights.safetensors": style})
    lay_out_hub_cache("lora-owner/two-files", {"a.safetensors": style, "b/detail.safetensors": detail})
    return {"style": style}


def test_hub_lora_from_the_cache_offline(clean, hub_loras):
    svc = clean
    folder = pixels(gen(svc, lora_name="style"))
    hub = gen(svc, lora_name="lora-owner/one-file")  # its one .safetensors is found, whatever its name
    assert pixels(hub) == folder  # the same tensors give the same image
    loaded = {e["name"]: e["source"] for e in svc.client.get("/lora-status").json()["loaded"]}
    assert loaded["lora-owner/one-file"] == "hub" and loaded["style"] == "folder"
    assert gen(svc, lora_name="lora-owner/two-files/b/detail.safetensors").status_code == 200


def test_hub_repo_with_several_files_asks_for_one(clean, hub_loras):
    r = gen(clean, lora_name="lora-owner/two-files")
    assert r.status_code == 422
    assert "several .safetensors files (a.safetensors, b/detail.safetensors)" in r.json()["error"]["message"]


def test_uncached_hub_lora_offline_is_503(clean):
    r = gen(clean, lora_name="someone/not-cached")
    assert r.status_code == 503 and r.json()["error"]["type"] == "lora_hub_unreachable"


def test_hub_switched_off_and_allowlist(clean, hub_loras, monkeypatch):
    files = clean.app.state.manager.lora_files
    monkeypatch.setattr(files, "owners", ["trusted"])
    r = gen(clean, lora_name="lora-owner/one-file")
    assert r.status_code == 403 and "limited to the owners trusted" in r.json()["error"]["message"]
    assert gen(clean, lora_name="style").status_code == 200  # the folder is not affected
    monkeypatch.setattr(files, "hub", False)
    r = gen(clean, lora_name="lora-owner/one-file")
    assert r.status_code == 404 and "switched off" in r.json()["error"]["message"]


def test_size_cap(clean, hub_loras, monkeypatch):
    monkeypatch.setattr(clean.app.state.manager.lora_files, "max_bytes", 100)
    r = gen(clean, lora_name="lora-owner/one-file")
    assert r.status_code == 422 and "over the 0 MiB cap" in r.json()["error"]["message"]


@pytest.fixture
def stand_in_hub(clean, monkeypatch):
    """The real huggingface_hub client against a stand-in Hub on loopback that answers 'not found'."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()  # shutdown() in 10 ms, not 0.5 s
    monkeypatch.setattr(clean.app.state.manager.lora_files, "endpoint", f"http://127.0.0.1:{server.server_address[1]}")
    yield clean
    server.shutdown()


def test_missing_hub_repo_or_file_is_404(stand_in_hub):
    for name in ("org/missing", "org/missing/file.safetensors"):
        r = gen(stand_in_hub, lora_name=name)
        assert r.status_code == 404, r.text
        assert "was not found" in r.json()["error"]["message"]


def test_kohya_format_is_converted_and_applies(clean):
    base = pixels(gen(clean))
    assert pixels(gen(clean, lora_name="kohya")) != base
    assert pixels(gen(clean)) == base


def test_lora_for_another_model_is_refused_and_changes_nothing(clean):
    svc = clean
    base = pixels(gen(svc))
    status = svc.client.get("/lora-status").json()
    r = gen(svc, lora_name="other-model")
    assert r.status_code == 422
    assert "does not fit this model" in r.json()["error"]["message"] and "in_features 128" in r.json()["error"]["message"]
    assert svc.client.get("/lora-status").json() == status
    assert pixels(gen(svc)) == base  # diffusers would have widened to_q; we refused before it could


@pytest.mark.slow  # about 2 s: in the full suite (issue 26: a quick tier under a minute)
def test_adapters_stay_in_a_bounded_lru_cache(clean):
    svc = clean
    size = svc.app.state.manager.settings.lora_cache_size
    names = ["style", "detail", "sub/nested", "kohya", "lora-owner/one-file"]
    for n in names:
        assert gen(svc, lora_name=n).status_code == 200
    loaded = [e["name"] for e in svc.client.get("/lora-status").json()["loaded"]]
    assert len(loaded) == size and loaded == names[-size:]
    # switching between cached adapters does not reload from disk
    again = gen(svc, lora_name=names[-2]).json()
    assert again["timings"]["lora_ms"] < 1000


@pytest.mark.slow  # about 6 s: in the full tier (issue 26: a quick tier under a minute)
def test_interleaved_requests_each_get_their_own_loras(clean):
    """Queued requests with different LoRAs, sent at once, give the same bytes as each run alone."""
    svc = clean
    svc.client.post("/apply-lora", json={"lora_name": "detail", "lora_weight": 0.6})
    asks = [{}, {"lora_name": "style"}, {"loras": [{"name": "style", "weight": 0.5}, {"name": "kohya"}]},
            {"lora_name": "style", "lora_weight": 0.3}, {}, {"lora_name": "kohya"}] * 2
    alone = [pixels(gen(svc, seed=i % 3, **a)) for i, a in enumerate(asks)]
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda ia: pixels(gen(svc, seed=ia[0] % 3, **ia[1])), enumerate(asks)))
    assert together == alone
    assert len(set(alone[:6])) == 6  # the six asks really differ
