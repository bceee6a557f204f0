"""Loading: background load with /health 503 until ready, idempotent /load-model, retry after a failed
load, the Hub path (offline, from a hand-built cache), and start-up refusals with clear messages. The
services run in process; the start-up refusals run `python -m flux_api` (marked `socket`)."""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import InProcess, gen, lay_out_hub_cache

from flux_api.app import create_app
from flux_api.engine.services import BF16FluxModelManager
from flux_api.settings import BF16Settings, FP4Settings

ROOT = Path(__file__).resolve().parent.parent


class GatedLoadManager(BF16FluxModelManager):
    """The real manager, held in its loading phase until the test opens the gate (a test hook, not a
    fake: the pipeline it then loads is the real one)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gate = threading.Event()
        self.loads = 0

    def _build_replica(self, *a, **kw):
        self.loads += 1
        assert self.gate.wait(60)
        return super()._build_replica(*a, **kw)


@pytest.mark.slow  # about 2 s: in the full suite (issue 26: a quick tier under a minute)
def test_health_is_503_loading_until_ready_and_load_model_is_idempotent(cache_dir):
    manager = GatedLoadManager(BF16Settings(model="tiny", cache_dir=cache_dir))
    with InProcess(create_app(manager.settings, manager)) as s:
        # the process answers at once, while the model is still loading
        assert s.client.get("/health/live").status_code == 200
        h = s.client.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "loading"
        r = gen(s)
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_not_ready"
        assert r.json()["error"]["details"]["phase"] == "loading"
        assert s.client.get("/model-status").json()["state"] == "loading"
        again = s.client.post("/load-model")
        assert again.status_code == 202 and again.json()["started"] is False  # no second load
        manager.gate.set()
        s.wait_ready()
        pipe = manager.pipe
        r = s.client.post("/load-model")
        assert r.json() == {"status": "loaded", "started": False, "phase": "ready"}
        assert manager.pipe is pipe and manager.loads == 1
        assert gen(s).status_code == 200


@pytest.mark.slow  # about 3 s: in the full suite (issue 26: a quick tier under a minute)
def test_failed_load_is_reported_and_load_model_retries(cache_dir, tiny_dir, tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    shutil.copy(tiny_dir / "model_index.json", broken / "model_index.json")  # components missing
    with InProcess(create_app(BF16Settings(model=str(broken), cache_dir=cache_dir))) as s:
        with pytest.raises(RuntimeError, match="load failed"):
            s.wait_ready()
        h = s.client.get("/health").json()
        assert h["status"] == "failed" and h["error"]
        r = gen(s)
        assert r.status_code == 503 and "POST /load-model to retry" in r.json()["error"]["message"]
        # fix the folder, then retry without restarting the service
        shutil.rmtree(broken)
        shutil.copytree(tiny_dir, broken)
        r = s.client.post("/load-model", params={"wait": "true"})
        assert r.status_code == 200 and r.json()["status"] == "loaded"
        assert gen(s).status_code == 200
        assert s.client.get("/model-status").json()["model"]["kind"] == "local"


@pytest.mark.slow  # about 2 s: in the full suite (issue 26: a quick tier under a minute)
def test_hub_repo_id_loads_offline_from_the_cache(cache_dir, tiny_dir):
    repo = "flux-api-test/tiny-flux"
    lay_out_hub_cache(repo, {f.relative_to(tiny_dir).as_posix(): f.read_bytes() for f in tiny_dir.rglob("*") if f.is_file()})
    with InProcess(create_app(FP4Settings(model=repo, cache_dir=cache_dir))) as s:
        s.wait_ready()
        st = s.client.get("/model-status").json()
        assert st["model"]["kind"] == "hub" and st["model"]["location"] == repo
        assert gen(s).status_code == 200


def _start(args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUX_BF16_", "FLUX_FP4_"))}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "flux_api", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.socket
def test_unreachable_hub_stops_start_up_with_that_message():
    p = _start(["bf16", "--model", "nobody/not-cached", "--port", "18765"], {"HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0
    assert "start-up stopped" in p.stderr and "could not be reached" in p.stderr


@pytest.mark.socket
def test_invalid_setting_stops_start_up_naming_it():
    p = _start(["fp4", "--model", "tiny"], {"FLUX_FP4_DEFAULT_STEPS": "500"})
    assert p.returncode == 2
    assert "default_steps" in p.stderr and "FLUX_FP4_DEFAULT_STEPS" in p.stderr
    p = _start(["bf16", "--port", "99999"])
    assert p.returncode == 2 and "port" in p.stderr


def test_unknown_model_spec_is_refused_before_loading(tmp_path):
    from flux_api.errors import ModelSourceError

    m = BF16FluxModelManager(BF16Settings(model="not a model", cache_dir=tmp_path))
    with pytest.raises(ModelSourceError, match="neither 'tiny', an existing folder"):
        m.preflight()
    (tmp_path / "empty").mkdir()
    m = BF16FluxModelManager(BF16Settings(model=str(tmp_path / "empty"), cache_dir=tmp_path))
    with pytest.raises(ModelSourceError, match="no model_index.json"):
        m.preflight()
