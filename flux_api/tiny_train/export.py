"""Step 3: the trained weights and the saved tokenizers -> the diffusers folder that `--model tiny` loads,
and the LoRA(s) beside it.

    python -m flux_api.tiny_train.export --prepared DIR --trained DIR [--out flux_api/tiny_model]

The folder is written by FluxPipeline.save_pretrained (model_index.json, one subfolder per component,
safetensors in float32), so it loads through the same from_pretrained path as FLUX.1-dev.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "tiny_model"


def export(prepared: Path, trained: Path, out: Path = SHIPPED) -> Path:
    import torch
    from diffusers import FluxPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer, T5TokenizerFast

    from .model import build, scheduler

    log = json.loads((trained / "train.json").read_text())
    models = build(0, "cpu", log["vae"]["shift"], log["vae"]["scale"])
    for name, module in models.items():
        missing, unexpected = module.load_state_dict(load_file(trained / f"{name}.safetensors"), strict=False)
        # T5 ties encoder.embed_tokens to shared: either name fills both
        assert not unexpected and all("embed_tokens" in k for k in missing), (name, missing, unexpected)
    pipe = FluxPipeline(
        scheduler=scheduler(), vae=models["vae"], transformer=models["transformer"],
        text_encoder=models["text_encoder"], tokenizer=CLIPTokenizer.from_pretrained(prepared / "tokenizer"),
        text_encoder_2=models["text_encoder_2"], tokenizer_2=T5TokenizerFast.from_pretrained(prepared / "tokenizer_2"),
    )
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.no_grad():
        pipe.save_pretrained(tmp)
    (tmp / "loras").mkdir()
    for lora in sorted(trained.glob("lora_*.safetensors")):
        FluxPipeline.save_lora_weights(tmp / "loras", transformer_lora_layers={
            k.removeprefix("transformer."): v for k, v in load_file(lora).items()}, weight_name=lora.name.removeprefix("lora_"))
    (tmp / "train.json").write_text(json.dumps(log, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported to {out}: {total / 2**20:.1f} MiB", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--trained", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=SHIPPED)
    a = ap.parse_args(argv)
    export(a.prepared, a.trained, a.out)


if __name__ == "__main__":
    main()
