"""The benchmark runs end to end on the tiny model on the CPU (so it cannot rot), its target options
become service settings, its LoRA target times a LoRA request against the base request and switching,
every target reports its compiles after the warm-up, and the full-size model it runs on is built once.
(LoRA on a compiled service: tests/test_fast_lora.py.)"""

import json
from pathlib import Path

import pytest
from conftest import free_port

from flux_api.bench import main, natural_image, parse_target
from flux_api.bench.report import table


@pytest.mark.socket  # service processes of its own, for many seconds
@pytest.mark.slow
def test_bench_runs_on_the_tiny_model(tmp_path, tiny_dir, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("FLUX_BF16_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("FLUX_FP4_CACHE_DIR", str(cache_dir))
    out = tmp_path / "bench.json"
    main(["--model", str(tiny_dir), "--targets", "stock,bf16,fp4:torchao-int8", "--sizes", "256", "--steps", "2",
          "--concurrency", "1", "2", "--unseen", "288", "--port", str(free_port()), "--out", str(out)])
    R = json.loads(out.read_text())
    assert set(R["targets"]) == {"stock", "bf16", "fp4:torchao-int8"}
    for name in ("bf16", "fp4:torchao-int8"):
        t = R["targets"][name]
        assert "error" not in t, t
        s = t["sizes"]["256"]
        assert s["latency_s"] > 0 and s["inference_ms"] > 0 and s["s_per_step"] > 0 and "overhead_pct" in s
        assert t["ready_s"] > 0 and set(t["images_per_min"]) == {"1", "2"}
        assert t["unseen_size"]["px"] == 288
    assert R["targets"]["fp4:torchao-int8"]["backend"] == "torchao-int8"
    assert R["targets"]["stock"]["sizes"]["256"]["latency_s"] > 0
    assert {"png1", "png6", "jpeg", "webp"} <= set(R["encoding_ms"]["natural"])
    printed = capsys.readouterr().out
    assert "| bf16 | diffusers | 256 |" in printed and "inf |" in printed  # the BF16 service matches stock exactly


def test_the_table_says_dash_where_no_throughput_was_asked_for():
    # `--concurrency` with no values (the GPU runs' way): the column said "None @1024px"
    service = {"backend": "diffusers", "ready_s": 60.0, "peak_mib": 1.0, "peak_reserved_mib": 2.0,
               "unseen_size": {"px": 768, "first_latency_s": 2.0, "second_latency_s": 1.5},
               "sizes": {"1024": {"latency_s": 4.0, "s_per_step": 0.14, "overhead_pct": 0.3, "encode_ms": 30.0}}}
    measured = {**service, "images_per_min": {"1": 14.5}, "images_per_min_px": 1024}
    rows = table({"targets": {"bf16": service, "bf16+replicas": measured}, "sizes": [1024], "gpu": "NVIDIA H100",
                  "torch": "2.11", "diffusers": "0.42.1", "command": "python -m flux_api.bench"}).splitlines()
    assert rows[2].split(" | ")[10] == "-" and "None" not in rows[2]
    assert rows[3].split(" | ")[10] == "{'1': 14.5} @1024px"


def test_bench_placement_options():
    assert parse_target("bf16+replicas") == ("bf16", None, {"PLACEMENT": "replicas"})
    assert parse_target("fp4:bnb-fp4+balanced+compile") == ("fp4", "bnb-fp4", {"PLACEMENT": "balanced", "COMPILE": "regional"})
    assert parse_target("bf16+single")[2] == {"PLACEMENT": "single"}
    with pytest.raises(ValueError, match="PLACEMENT"):  # two options for one setting: refused, not last-wins
        parse_target("bf16+replicas+balanced")


@pytest.mark.socket
@pytest.mark.slow
def test_bench_lora_check_times_switching(tmp_path, tiny_dir, cache_dir, lora_dir, monkeypatch):
    monkeypatch.setenv("FLUX_BF16_CACHE_DIR", str(cache_dir))
    out = tmp_path / "bench.json"
    main(["--model", str(tiny_dir), "--targets", "bf16", "--sizes", "256", "--steps", "2", "--concurrency",
          "--unseen", "256", "--repeats", "2", "--lora", "style,detail", "--lora-dir", str(lora_dir),
          "--first-block-cache", "0.5", "--port", str(free_port()), "--out", str(out)])
    R = json.loads(out.read_text())
    t = R["targets"]["bf16"]
    cache, = t["step_cache"]  # First Block Cache against the base request, same service
    assert cache["threshold"] == 0.5 and cache["same_bytes"] and cache["base_after_identical"]
    assert cache["steps_skipped"] in (0, 1) and cache["over_base"] > 0
    assert "| bf16 | 0.5 |" in table(R)
    lora = t["lora"]
    assert lora["status"] == 200 and lora["lora_changes_image"] and lora["base_after_lora_identical"]
    assert lora["lora_over_base"] > 0 and lora["two_loras_over_base"] > 0
    ms = lora["lora_ms_load_then_switches"]
    assert len(ms) == 6 and all(x > 0 for x in ms)
    assert t["true_cfg_status"] == 200 and t["compiles_after_warmup"] == 0


def test_natural_image_is_png_s_typical_case_not_its_worst():
    import numpy as np
    from PIL import Image

    from flux_api.imaging import encode_image

    natural = natural_image(256)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    assert natural.size == (256, 256)
    png = lambda im: len(encode_image(im, "png", {}))  # noqa: E731
    assert png(natural) < 0.8 * png(noise)  # it compresses, as real images do


def test_full_model_is_built_once_in_a_child_and_lands_whole(tmp_path, monkeypatch):
    # The 33.7 GB build itself is a GPU job; here the child process is a stand-in that writes a folder.
    from flux_api import random_model

    calls = []

    def child(cmd, **kw):
        calls.append(cmd)
        out, loras = (Path(cmd[cmd.index(flag) + 1]) for flag in ("--out", "--lora-out"))
        assert out.name.endswith(".partial") and loras.name.endswith(".partial")  # renamed only when done
        out.mkdir(parents=True)
        (out / "model_index.json").write_text("{}")
        loras.mkdir()

    monkeypatch.setattr(random_model.subprocess, "run", child)
    (tmp_path / "flux-full.partial").mkdir()  # what a killed build leaves: never reused
    first = random_model.full_model(tmp_path, device="cpu")
    assert first == (tmp_path / "flux-full", tmp_path / "flux-loras") and len(calls) == 1
    assert random_model.full_model(tmp_path, device="cpu") == first and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flux-full", "flux-loras"]


def test_each_target_is_compared_with_stock_and_its_defaults_as_soon_as_both_ran():
    import base64
    import io

    from PIL import Image

    from flux_api.bench.report import compare_images, headline

    def png(shade):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (shade, 0, 0)).save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()

    def service(latency, shade):
        return {"sizes": {1024: {"latency_s": latency, "s_per_step": latency / 28}}, "last_image_b64": {1024: png(shade)},
                "ready_s": 60.0, "lora": {"lora_over_base": 1.05, "two_loras_over_base": 1.06},
                "compile": {"compiles_after_warmup": 0}}

    R = {"targets": {"stock": {"sizes": {1024: {"latency_s": 5.0, "png_b64": png(100)}}}}}
    R["targets"]["fp4+qkv"] = service(2.5, 101)
    compare_images(R, "fp4+qkv", "fp4")  # its defaults have not run yet: stock only
    assert set(R["targets"]["fp4+qkv"]["psnr_vs"]) == {"stock"}
    R["targets"]["fp4"] = service(2.6, 100)
    lines = compare_images(R, "fp4", "fp4")  # the defaults: against stock, and each variant against them
    assert R["targets"]["fp4"]["psnr_vs"] == {"stock": float("inf")}
    assert 40 < R["targets"]["fp4+qkv"]["psnr_vs"]["fp4"] < float("inf")
    assert len(lines) == 1 and lines[0].startswith("PSNR fp4+qkv vs fp4:")
    line = headline("fp4+qkv", R["targets"]["fp4+qkv"], R)
    assert line.startswith("HEADLINE fp4+qkv: 1024px 2.5 s, 0.5x stock,") and "ready 60.0 s" in line
    assert "LoRA/base 1.05 (two 1.06)" in line and "compiles after warm-up 0" in line and "PSNR vs fp4 " in line
    assert headline("x", {"error": "boom"}, R) == "HEADLINE x: ERROR boom"
