"""q, k and v as one projection: each attention's three input Linear layers stacked into one (issue 25).

FLUX's attention projects its input three times (to_q, to_k, to_v; in a double block the text stream's
add_q_proj, add_k_proj, add_v_proj too): three GEMMs of N = 3,072 that each read the same input, where one
GEMM of N = 9,216 reads it once and fills the GPU better (the text stream's 512 rows make GEMMs too small to
fill an H100: 48 tiles for 132 SMs). diffusers has the fused path (`attn.fused_projections`: its processor
calls `to_qkv` and `to_added_qkv`, then chunks); `fuse_qkv` builds those layers with the three weights stacked
by rows, and removes the three, so no weight is held twice. Stacking rows is exact for bf16 weights and for
torchao's fp8 weights with per-row scales (each row keeps its scale; torchao's own `cat`); an attention with any
other layer (4-bit, int8, not a plain Linear, quantized unlike its siblings) is left whole, as it is.

The LoRA slot wraps the fused layers like any other (lora_slot.py): a LoRA's to_q/to_k/to_v parts become one
branch of the fused layer (their A matrices stacked, their B matrices block-diagonal: the input read once for
the three), so a fused layer's slot holds three times the slot's rank. Switched on by the `fuse_qkv` setting.
"""

from __future__ import annotations

# fused layer -> the layers it stacks, in diffusers' order (its processor chunks q, k, v)
PARTS = {"to_qkv": ("to_q", "to_k", "to_v"), "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}


def part_of(module: str) -> tuple[str, int] | None:
    """("...attn.to_qkv", 1) for "...attn.to_k": the fused layer a layer's name went into, and its place."""
    parent, _, leaf = module.rpartition(".")
    for fused, parts in PARTS.items():
        if leaf in parts:
            return f"{parent}.{fused}", parts.index(leaf)
    return None


def _stackable(layer) -> bool:
    import torch

    weight = layer.weight
    if type(weight) is torch.nn.Parameter or type(weight) is torch.Tensor:
        return weight.dtype in (torch.bfloat16, torch.float16, torch.float32)
    try:
        from torchao.quantization import Float8Tensor
    except ImportError:
        return False
    return isinstance(weight, Float8Tensor) and list(weight.block_size) == [1, weight.shape[1]]


def _stacked(layers):
    import torch

    first = layers[0]
    fused = torch.nn.Linear(first.in_features, sum(layer.out_features for layer in layers),
                            bias=first.bias is not None, device="meta")
    with torch.no_grad():
        fused.weight = torch.nn.Parameter(torch.cat([layer.weight for layer in layers]), requires_grad=False)
        if first.bias is not None:
            fused.bias = torch.nn.Parameter(torch.cat([layer.bias for layer in layers]), requires_grad=False)
    return fused


def fuse_qkv(transformer) -> int:
    """Stack each FluxAttention's q/k/v layers (see the module's docstring), before the LoRA slot and before
    compiling. The number of attention modules fused; one whose layers cannot be stacked is left as it is."""
    import torch
    from diffusers.models.transformers.transformer_flux import FluxAttention

    fused = 0
    for attn in transformer.modules():
        if type(attn) is not FluxAttention or getattr(attn, "fused_projections", False):
            continue
        groups = {name: [getattr(attn, p, None) for p in parts] for name, parts in PARTS.items()}
        groups = {name: layers for name, layers in groups.items() if any(layer is not None for layer in layers)}
        # All of the module's groups or none: diffusers' fused path reads to_added_qkv whenever it exists
        if "to_qkv" not in groups or not all(type(layer) is torch.nn.Linear and _stackable(layer)
                                             for layers in groups.values() for layer in layers):
            continue
        if len({(type(layer.weight), getattr(layer.weight, "mm_config", None), layer.weight.dtype)
                for layers in groups.values() for layer in layers}) > 1:
            continue  # weights quantized differently: nothing to stack
        for name, layers in groups.items():
            setattr(attn, name, _stacked(layers))
            for part in PARTS[name]:
                delattr(attn, part)
        attn.fused_projections = True
        fused += 1
    return fused
