"""Benchmark targets: `stock`, `bf16`, `fp4` or `fp4:<backend>`, each with options that become the
service's settings (environment variables `FLUX_<SERVICE>_<NAME>`)."""

from __future__ import annotations

import json

# option -> (setting, value)
OPTIONS = {
    "compile": ("COMPILE", "regional"),
    "eager": ("COMPILE", "none"),
    "low": ("MEMORY_MODE", "low"),
    "nographs": ("CUDA_GRAPHS", "false"),
    "single": ("PLACEMENT", "single"),
    "replicas": ("PLACEMENT", "replicas"),
    "balanced": ("PLACEMENT", "balanced"),
    "parallel": ("PLACEMENT", "parallel"),
    "autotune": ("COMPILE_AUTOTUNE", "true"),
    "vae": ("COMPILE_VAE", "true"),
    "t5": ("COMPILE_TEXT_ENCODER", "true"),
    "rows": ("COMPILE_PERSISTENT_ROWS", "true"),
    "qkv": ("FUSE_QKV", "true"),
    "rope": ("FUSE_ROPE", "true"),
    "mod": ("PRECOMPUTE_MODULATION", "true"),
    "gn": ("SPLIT_GROUP_NORM", "true"),
    # Both services' defaults since 2026-12-07 (the four above; BF16's since its sixth session): off, for the defaults
    # before and each lever's share
    "norows": ("COMPILE_PERSISTENT_ROWS", "false"),
    "noqkv": ("FUSE_QKV", "false"),
    "nomod": ("PRECOMPUTE_MODULATION", "false"),
    "nogn": ("SPLIT_GROUP_NORM", "false"),
    "fused": ("FUSE_KERNELS", "true"),
    "unfused": ("FUSE_KERNELS", "false"),  # FP4's default is on (BF16's off: there +fused is the comparison)
    "sdpa": ("ATTENTION", "sdpa"),
    "cudnn": ("ATTENTION", "cudnn"),
    "fp8attn": ("ATTENTION", "cudnn-fp8"),
}


# What a user would build from stock diffusers in a few lines (issue 25's peers): option -> what it does
STOCK_OPTIONS = {
    "compile": "torch.compile(pipe.transformer, fullgraph=True)",
    "fp8": "torchao Float8DynamicActivationFloat8WeightConfig(PerRow()) on the transformer, then torch.compile "
           "(fullgraph=True): torchao's and diffusers' public recipe",
}


def parse_target(t: str) -> tuple[str, str | None, dict]:
    """`fp4:bnb-fp4+compile+low` -> ("fp4", "bnb-fp4", {"COMPILE": "regional", "MEMORY_MODE": "low"});
    `stock+fp8` -> ("stock", None, {"fp8": ...}): stock diffusers as a user would speed it up."""
    base, *opts = t.split("+")
    kind, _, backend = base.partition(":")
    if kind == "stock":
        unknown = [o for o in opts if o not in STOCK_OPTIONS]
        if unknown or backend:
            raise ValueError(f"stock takes no backend and the options {sorted(STOCK_OPTIONS)}, not {t!r}")
        return kind, None, {o: STOCK_OPTIONS[o] for o in opts}
    unknown = [o for o in opts if o not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown target option(s) {unknown} in {t!r}; known: {sorted(OPTIONS)}")
    settings = [OPTIONS[o][0] for o in opts]
    clash = sorted({s for s in settings if settings.count(s) > 1})
    if clash:
        raise ValueError(f"target {t!r} sets {clash} twice; give one option per setting")
    return kind, backend or None, dict(OPTIONS[o] for o in opts)


def service_env(kind: str, options: dict, warmup_sizes: list[int], lora_dir: str | None) -> dict:
    """The environment a target's service runs with."""
    prefix = f"FLUX_{kind.upper()}_"
    # The prompt cache off: the benchmark repeats one prompt, which would time every request but the first
    # without the text encoders, while stock pays them on every call (docs/PERFORMANCE.md, 2026-12-06).
    env = {"WARMUP_SIZES": json.dumps(sorted(set(warmup_sizes), reverse=True)), "PROMPT_CACHE_SIZE": "0",
           **({"LORA_DIR": str(lora_dir)} if lora_dir else {}), **options}
    return {prefix + k: v for k, v in env.items()}
