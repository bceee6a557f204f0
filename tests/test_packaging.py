"""The package installs with what it needs: the services' TOML defaults and the web page's files travel
in the wheel, and an installed service finds them (not only a checkout)."""

import sys
import zipfile
from pathlib import Path

import pytest

import flux_api.settings as settings_module
from flux_api.settings import FP4Settings

from conftest import build_wheel

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about 2 s: in the full suite (issue 26: a quick tier under a minute)
def test_the_wheel_carries_the_config_files(tmp_path):
    wheel = zipfile.ZipFile(build_wheel(tmp_path))
    for name in ("fp4.toml", "bf16.toml"):
        packed = wheel.read(f"{wheel.filename.split('/')[-1].split('-py')[0]}.data/data/share/flux_api/config/{name}")
        assert packed == (ROOT / "config" / name).read_bytes()
    for name in ("index.html", "app.js", "style.css", "favicon.svg"):  # the web page at /ui
        assert wheel.read(f"flux_api/ui/{name}") == (ROOT / "flux_api" / "ui" / name).read_bytes()
    # the console script (pip install and pip install -e both make bin/flux-api from this)
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "flux-api = flux_api.cli:main" in wheel.read(entry_points).decode().splitlines()


def test_an_installed_package_reads_its_installed_config(tmp_path, monkeypatch):
    prefix = tmp_path / "venv"
    installed = prefix / "share" / "flux_api" / "config"
    installed.mkdir(parents=True)
    (installed / "fp4.toml").write_text('default_steps = 7\n')
    monkeypatch.delenv("FLUX_API_CONFIG_DIR", raising=False)
    monkeypatch.setattr(settings_module, "PROJECT_ROOT", tmp_path / "site-packages")  # no config/ beside it
    monkeypatch.setattr(sys, "prefix", str(prefix))
    assert settings_module.config_dir() == installed
    assert FP4Settings().default_steps == 7
    monkeypatch.setattr(settings_module, "PROJECT_ROOT", ROOT)  # a checkout: its own config/ wins
    assert settings_module.config_dir() == ROOT / "config" and FP4Settings().default_steps == 25
