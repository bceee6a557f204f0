"""The random-weight FLUX.1 model on disk: the one builder that the benchmark and
`scripts/build_random_model.py` share.

`save_random_model` saves `flux_api.engine.tiny.build_random_pipeline(size)` in the diffusers folder
format, with random LoRAs for its transformer if asked. `full_model` returns the full-size model
(FLUX.1-dev's real architecture, 33.7 GB in bf16) and two rank-16 LoRAs, building them once, in a
child process (so the caller holds no GPU memory), into /dev/shm when it has room.

    python -m flux_api.random_model --size full --out /tmp/flux-full --device cuda [--lora-out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

FULL_MODEL, FULL_LORAS = "flux-full", "flux-loras"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # what most LoRAs train
# Every Linear of the blocks (attention, MLPs, modulation), as some trainers do: the costlier case.
ALL_TARGETS = LORA_TARGETS + ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj", "ff.net.2",
                              "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out", "norm1.linear",
                              "norm1_context.linear", "norm.linear"]


def lora_names(loras: int = 2, rank: int = 16) -> list[str]:
    """The attention LoRAs, then the one on every Linear of the blocks."""
    return [f"random-r{rank}-{i}" for i in range(loras)] + [f"random-r{rank}-all"]


def save_random_model(size: str, out: str | Path, device: str = "cpu", dtype="bfloat16",
                      lora_out: str | Path | None = None, loras: int = 2, lora_rank: int = 16) -> Path:
    """Build the random pipeline of `size` ("tiny" or "full") on `device` in `dtype` (a torch dtype or
    its name) and save it to `out`; with `lora_out`, also `loras` random LoRAs of rank `lora_rank` on
    every attention projection (named `random-r{rank}-{i}`, seeded), and one on every Linear of the
    blocks (`random-r{rank}-all`)."""
    import torch

    from .engine.tiny import build_random_pipeline

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    t = time.perf_counter()
    pipe = build_random_pipeline(size, device=device, dtype=dtype)
    print(f"built in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    pipe.save_pretrained(out, max_shard_size="10GB")
    print(f"saved to {out} in {time.perf_counter() - t:.1f} s", flush=True)
    if lora_out:
        from diffusers import FluxPipeline
        from peft import LoraConfig, get_peft_model_state_dict

        for i, name in enumerate(lora_names(loras, lora_rank)):
            torch.manual_seed(100 + i)
            targets = ALL_TARGETS if name.endswith("-all") else LORA_TARGETS
            pipe.transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=targets,
                                                    init_lora_weights=False), adapter_name=name)
            layers = get_peft_model_state_dict(pipe.transformer, adapter_name=name)
            FluxPipeline.save_lora_weights(lora_out, transformer_lora_layers=layers, weight_name=f"{name}.safetensors")
            pipe.transformer.delete_adapters(name)
            print(f"saved LoRA {name} to {lora_out}", flush=True)
    return Path(out)


def _built(root: Path) -> bool:
    return (root / FULL_MODEL / "model_index.json").is_file() and (root / FULL_LORAS).is_dir()


def full_model(root: str | Path | None = None, device: str | None = None) -> tuple[Path, Path]:
    """(model folder, LoRA folder) of the full-size random model, built once under `root`.

    Without `root`: a build already in /dev/shm or /tmp, else /dev/shm when it has 40 GiB free, else
    /tmp. The build runs in a child process and lands by rename, so a killed build is never reused.
    """
    if root is None:
        candidates = [Path("/dev/shm"), Path("/tmp")]
        root = next((r for r in candidates if _built(r)), None)
        if root is None:
            shm_free = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").exists() else 0
            root = candidates[0] if shm_free > 40 * 2**30 else candidates[1]
    root = Path(root)
    model, loras = root / FULL_MODEL, root / FULL_LORAS
    if not _built(root):
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        part_model, part_loras = root / f"{FULL_MODEL}.partial", root / f"{FULL_LORAS}.partial"
        for p in (part_model, part_loras, model, loras):
            shutil.rmtree(p, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "flux_api.random_model", "--size", "full", "--device", device,
                        "--out", str(part_model), "--lora-out", str(part_loras)],
                       cwd=Path(__file__).resolve().parent.parent, check=True)
        os.replace(part_loras, loras)
        os.replace(part_model, model)
    return model, loras


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Save a random-weight FLUX.1 pipeline in the diffusers folder format.\n\n"
        "`--size full` has FLUX.1-dev's real architecture (33.7 GB in bf16): it loads, times and weighs like the\n"
        "real model, for GPU runs where no weights can be downloaded. `--size tiny` is the shipped tiny model's\n"
        "architecture with random weights (the trained one is flux_api/tiny_model).")
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cpu", help="where to build (cuda is much faster for --size full)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--lora-out", type=Path, help="also save random LoRAs for this transformer here")
    ap.add_argument("--loras", type=int, default=2, help="how many LoRAs (with --lora-out)")
    ap.add_argument("--lora-rank", type=int, default=16)
    a = ap.parse_args(argv)
    save_random_model(a.size, a.out, a.device, a.dtype, a.lora_out, a.loras, a.lora_rank)


if __name__ == "__main__":
    main()
