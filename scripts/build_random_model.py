#!/usr/bin/env python3
"""Save a random-weight FLUX.1 pipeline in the diffusers folder format.

    python scripts/build_random_model.py --size full --out /tmp/flux-full --device cuda

`--size full` has FLUX.1-dev's real architecture (33.7 GB in bf16): it loads, times and weighs like the
real model, for GPU runs where no weights can be downloaded. `--size tiny` is the test model.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cpu", help="where to build (cuda is much faster for --size full)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--lora-out", type=Path, help="also save random LoRAs for this transformer here")
    ap.add_argument("--loras", type=int, default=2, help="how many LoRAs (with --lora-out)")
    ap.add_argument("--lora-rank", type=int, default=16)
    args = ap.parse_args()

    import torch

    from flux_api.engine.tiny import build_random_pipeline

    t = time.perf_counter()
    pipe = build_random_pipeline(args.size, device=args.device, dtype=getattr(torch, args.dtype))
    print(f"built in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    pipe.save_pretrained(args.out, max_shard_size="10GB")
    print(f"saved to {args.out} in {time.perf_counter() - t:.1f} s", flush=True)
    if args.lora_out:
        from diffusers import FluxPipeline
        from peft import LoraConfig, get_peft_model_state_dict

        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        for i in range(args.loras):
            name = f"random-r{args.lora_rank}-{i}"
            torch.manual_seed(100 + i)
            pipe.transformer.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=targets,
                                                    init_lora_weights=False), adapter_name=name)
            layers = get_peft_model_state_dict(pipe.transformer, adapter_name=name)
            FluxPipeline.save_lora_weights(args.lora_out, transformer_lora_layers=layers, weight_name=f"{name}.safetensors")
            pipe.transformer.delete_adapters(name)
            print(f"saved LoRA {name} to {args.lora_out}", flush=True)


if __name__ == "__main__":
    main()
