"""FP4 backend selection and Nunchaku detection, with named stand-ins for the GPUs and packages that
cannot exist on this machine (H100, A100, RTX 4090/5090, T4, V100, B200; the real Nunchaku)."""

import importlib

import pytest

from flux_api.engine.backends import NunchakuProbe, Packages, probe_nunchaku
from flux_api.engine.devices import GPU, Hardware, plan_placement
from flux_api.engine.services import FP4FluxModelManager
from flux_api.errors import BackendUnavailable
from flux_api.settings import FP4Settings

GiB = 2**30


def gpu(name, cap):
    return Hardware((GPU(0, name, cap, 80 * GiB),))


H100, A100, RTX4090, RTX5090 = gpu("H100 (stand-in)", (9, 0)), gpu("A100 (stand-in)", (8, 0)), \
    gpu("RTX 4090 (stand-in)", (8, 9)), gpu("RTX 5090 (stand-in)", (12, 0))
T4, V100, B200, CPU = gpu("T4 (stand-in)", (7, 5)), gpu("V100 (stand-in)", (7, 0)), gpu("B200 (stand-in)", (10, 0)), Hardware()

REAL = NunchakuProbe(installed=True, real=True, version="1.0.0+torch2.9", location="/stand-in")
NAMESAKE = NunchakuProbe(installed=True, real=False, version="0.0.3", location="/stand-in")
NONE = NunchakuProbe(installed=False)


def pk(nunchaku=NONE, bnb=True, ao=True):
    return Packages(nunchaku=nunchaku, bitsandbytes=bnb, torchao=ao)


select_backend = FP4FluxModelManager.choose_backend  # the FP4 service's choice: its backends, its auto order


@pytest.mark.parametrize(
    "hw,pkgs,backend,prec",
    [
        (A100, pk(REAL), "nunchaku", "int4"),
        (RTX4090, pk(REAL), "nunchaku", "int4"),
        (T4, pk(REAL), "nunchaku", "int4"),
        (RTX5090, pk(REAL), "nunchaku", "fp4"),
        (H100, pk(REAL), "torchao-fp8", None),  # Hopper: no Nunchaku kernels
        (B200, pk(REAL), "torchao-fp8", None),
        (RTX4090, pk(NONE), "torchao-fp8", None),
        (RTX4090, pk(NAMESAKE), "torchao-fp8", None),
        (A100, pk(NONE), "bnb-fp4", None),
        (V100, pk(REAL), "bnb-fp4", None),
        (A100, pk(NONE, bnb=False), "torchao-int8", None),
        (CPU, pk(REAL), "torchao-int8", None),
    ],
    ids=lambda v: getattr(v, "gpus", None) and v.gpus[0].name or str(v)[:20],
)
def test_auto_selection(hw, pkgs, backend, prec):
    choice = select_backend("auto", hw, pkgs)
    assert choice.name == backend and getattr(choice, "kind", None) == prec


def test_auto_says_why_not_nunchaku_on_hopper():
    choice = select_backend("auto", H100, pk(REAL))
    assert "sm_90" in choice.reason and "Hopper" in choice.reason


@pytest.mark.parametrize(
    "requested,hw,pkgs,says",
    [
        ("nunchaku", H100, pk(REAL), "no kernels for H100 (stand-in) (sm_90)"),
        ("nunchaku", V100, pk(REAL), "Volta"),
        ("nunchaku", B200, pk(REAL), "sm_100"),
        ("nunchaku", A100, pk(NAMESAKE), "unrelated PyPI project"),
        ("nunchaku", A100, pk(NONE), "do not `pip install nunchaku`"),
        ("nunchaku", CPU, pk(REAL), "needs a CUDA GPU"),
        ("bnb-fp4", CPU, pk(), "needs a CUDA GPU"),
        ("bnb-nf4", A100, pk(bnb=False), "pip install 'bitsandbytes"),
        ("torchao-fp8", A100, pk(), "sm_89+"),
        ("torchao-fp8", CPU, pk(), "not the CPU"),
        ("torchao-int8", CPU, pk(ao=False), "pip install 'torchao"),
    ],
)
def test_refusals_say_what_to_do(requested, hw, pkgs, says):
    with pytest.raises(BackendUnavailable) as e:
        select_backend(requested, hw, pkgs)
    assert says in e.value.message
    if requested == "nunchaku":
        assert "torchao-fp8" in e.value.message and "bnb-fp4" in e.value.message


def test_explicit_backends_where_they_run():
    assert select_backend("nunchaku", RTX5090, pk(REAL)).kind == "fp4"
    assert select_backend("bnb-nf4", H100, pk()).name == "bnb-nf4"
    assert select_backend("torchao-fp8", H100, pk()).name == "torchao-fp8"
    assert select_backend("torchao-int8", CPU, pk()).name == "torchao-int8"


def _stand_in_nunchaku(root, version, with_ext):
    """A stand-in `nunchaku` distribution on sys.path: the PyPI namesake (no extension) or a package shaped
    like the real SVDQuant wheel (a nunchaku/_C extension file; empty, never imported)."""
    pkg = root / "nunchaku"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("# stand-in\n")
    if with_ext:
        (pkg / "_C.cpython-312-x86_64-linux-gnu.so").write_bytes(b"")
    dist = root / f"nunchaku-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: nunchaku\nVersion: {version}\n")
    (dist / "RECORD").write_text("")


@pytest.mark.parametrize("version,with_ext,real", [("0.0.3", False, False), ("1.0.0+torch2.9", True, True)])
def test_probe_tells_the_namesake_from_the_real_package(tmp_path, monkeypatch, version, with_ext, real):
    _stand_in_nunchaku(tmp_path, version, with_ext)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    probe = probe_nunchaku()
    assert probe.installed and probe.real is real and probe.version == version


def test_probe_without_nunchaku():
    assert probe_nunchaku().installed is False  # not installed in the test environment


def test_fp4_manager_refuses_the_namesake_at_preflight(tmp_path, monkeypatch):
    _stand_in_nunchaku(tmp_path, "0.0.3", with_ext=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    m = FP4FluxModelManager(FP4Settings(model="tiny", backend="nunchaku", cache_dir=tmp_path), hardware=A100)
    with pytest.raises(BackendUnavailable, match="unrelated PyPI project"):
        m.preflight()


def test_fp4_manager_refuses_nunchaku_on_a_stand_in_h100(tmp_path):
    m = FP4FluxModelManager(FP4Settings(model="tiny", backend="nunchaku", cache_dir=tmp_path), hardware=H100,
                            packages=pk(REAL))
    with pytest.raises(BackendUnavailable, match="Hopper"):
        m.preflight()


def test_placement_plan():
    two = Hardware((GPU(0, "H100 (stand-in)", (9, 0), 80 * GiB), GPU(1, "H100 (stand-in)", (9, 0), 80 * GiB)))
    assert plan_placement("auto", "auto", CPU).devices == ("cpu",)
    assert plan_placement("auto", "auto", H100).devices == ("cuda:0",)
    # several GPUs: one replica each when a copy fits one GPU, else one balanced pipeline
    fits = plan_placement("auto", "auto", two, pipeline_bytes=34 * GiB)
    assert fits.mode == "replicas" and fits.devices == ("cuda:0", "cuda:1") and "fits one GPU" in fits.reason
    big = plan_placement("auto", "auto", two, pipeline_bytes=70 * GiB)
    assert big.mode == "balanced" and big.devices == ("balanced",) and "does not fit" in big.reason
    assert plan_placement("auto", "auto", two).mode == "balanced"  # size unknown: the safe choice
    assert plan_placement("auto", "single", two).devices == ("cuda:0",)
    assert plan_placement("auto", "replicas", two, replicas=1).devices == ("cuda:0",)
    assert plan_placement("cpu", "auto", two).devices == ("cpu",)
    assert plan_placement("auto", "replicas", CPU, replicas=2).devices == ("cpu", "cpu")
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        plan_placement("cuda", "auto", CPU)
    with pytest.raises(ValueError, match="needs CUDA GPUs"):
        plan_placement("auto", "balanced", CPU)
    with pytest.raises(ValueError, match="only 2 GPU"):
        plan_placement("auto", "replicas", two, replicas=3)


def test_fp4_backend_shrinks_the_size_estimate(tiny_dir):
    from flux_api.engine.sources import ModelSource, estimate_pipeline_bytes

    src = ModelSource("local", str(tiny_dir), str(tiny_dir))
    full, quarter = estimate_pipeline_bytes(src), estimate_pipeline_bytes(src, 0.25)
    transformer = sum(f.stat().st_size for f in (tiny_dir / "transformer").glob("*.safetensors"))
    assert full - quarter == pytest.approx(transformer * 0.75, abs=2)
    hub = ModelSource("hub", "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-dev")
    assert estimate_pipeline_bytes(hub) > 33 * 10**9  # offline: FLUX.1-dev's known sizes
