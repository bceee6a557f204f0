"""LoRA on the fast path: one fixed adapter slot, made at load, that every LoRA request is copied into.

A compiled transformer is compiled for the modules it has, and a CUDA graph replays the addresses it
captured. Adding a peft adapter per LoRA (diffusers' ordinary `load_lora_weights`) changes both: a
recompile on a live request, and graphs that must be dropped. So, as diffusers' and peft's hotswap do,
the structure is fixed before compiling and LoRAs only ever change tensor *values* in place:

- At load, before compiling, every Linear layer of the transformer gets a LoRA branch of rank
  `lora_max_rank` beside it ("the slot", `SlotLinear`), with zero weights, switched off.
- A request's LoRAs are packed into the slot: each takes its own range of the slot's rank (A's rows,
  B's columns), its scale (weight x alpha / r, or alpha / sqrt(r) for rsLoRA, per layer, from the
  LoraConfig diffusers would build, read with peft's own pattern rules) folded into its B columns, the
  rest zeroed. Several LoRAs then cost what one does: one branch per layer, of the slot's rank. The
  copies go into the same tensors (the rule of peft's hotswap), so the compiled code and the captured
  graphs stay valid.
- Files are read and converted by diffusers (`lora_state_dict`: peft, kohya, xlabs and other formats).
  The branch itself is ours, not peft's LoRA layer: with the scale folded in, it adds its output in the
  GEMM's epilogue, where peft's layer costs a separate elementwise pass over every output (measured in
  `SlotLinear`'s docstring).
- With `fuse_qkv` (qkv.py) an attention's q/k/v are one layer, whose slot has three times the rank: a
  LoRA's q/k/v parts become one branch of it (A matrices stacked, B block-diagonal, each part's scale in
  its block), the input read once for the three. B's block-diagonal product costs three times the FLOPs of
  the three small ones; on an H100 (2026-12-07, with three other levers) FP4's LoRA / base went 1.088 -> 1.049.
- A request without LoRA runs with the slot switched off: the compiled code and graph of the base
  model, bitwise what it was before any LoRA, at full speed. The slot on and off are two variants of
  the compiled blocks and of each CUDA graph, both made at warm-up.

What does not fit the slot is refused in the request's own path with a 422 that names the reason:
a total rank over `lora_max_rank`, DoRA, a LoRA bias, text-encoder parts, a LoRA that changes the
model's own norm layers (Control LoRAs), a layer that is not a Linear of this transformer.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidLora
from .adapters import AdapterSet
from .lora import LoraFile, LoraSpec
from .qkv import PARTS, part_of

log = logging.getLogger(__name__)
# Wrapping layers builds modules; one transformer at a time in the process (replicas load in turn, and
# accelerate patches module creation globally while diffusers loads).
_INJECT_LOCK = threading.Lock()


@dataclass
class PreparedLora:
    """A LoRA converted for the slot: per layer of the transformer, (A [r, in], B [out, r], scale)."""

    name: str
    layers: dict[str, tuple] = field(default_factory=dict)
    rank: int = 0  # the LoRA's own rank (a fused q/k/v layer's branch stacks up to three of its layers)

    def to(self, device, dtype) -> "PreparedLora":
        self.layers = {k: (a.to(device, dtype), b.to(device, dtype), s) for k, (a, b, s) in self.layers.items()}
        return self


def convert(pipe, state: dict | Path, name: str, max_rank: int, layers: dict, metadata: dict | None = None) -> PreparedLora:
    """The transformer part of a LoRA file (any format diffusers reads for FLUX: peft, kohya, xlabs...)
    as per-layer (A, B, scale), on the CPU. Raises InvalidLora (422) for anything the slot cannot hold,
    and for a LoRA made for another model: each of its layers must be one of the slot's `layers` (name
    -> layer), with the same in and out features. `metadata`: the file's diffusers LoRA metadata where
    `state` is its tensors (a path carries its own)."""
    import torch
    from diffusers.utils import convert_unet_state_dict_to_peft, get_peft_kwargs
    from peft import LoraConfig
    from peft.utils.other import get_pattern_key

    try:
        sd, alphas, read = pipe.lora_state_dict(state if isinstance(state, dict) else str(state),
                                                return_alphas=True, return_lora_metadata=True)
        metadata = metadata or read
    except Exception as e:
        raise InvalidLora(f"LoRA {name!r} is not in a LoRA format diffusers can read for FLUX: {e}") from e
    text = [k for k in sd if k.startswith("text_encoder")]
    if text:
        raise InvalidLora(f"LoRA {name!r} has text-encoder parts ({len(text)} tensors): the service applies LoRAs to "
                          "the transformer only (its slot is compiled in); use a transformer-only LoRA")
    transformer = {k.removeprefix("transformer."): v for k, v in sd.items() if k.startswith("transformer.")}
    if not transformer:
        raise InvalidLora(f"LoRA {name!r} holds no transformer LoRA tensors")
    if any("lora" not in k for k in transformer):
        raise InvalidLora(f"LoRA {name!r} changes the model's own layers (norm or other non-LoRA weights, as Control "
                          "LoRAs do): the service applies plain LoRA adapters only")
    if "lora_A" not in next(iter(transformer)):
        transformer = convert_unet_state_dict_to_peft(transformer)
    if any("lora_magnitude_vector" in k for k in transformer) or metadata and metadata.get("transformer.use_dora"):
        raise InvalidLora(f"LoRA {name!r} is a DoRA adapter: the service applies plain LoRA only")
    if any(".lora_B." in k and k.endswith(".bias") for k in transformer):
        raise InvalidLora(f"LoRA {name!r} has LoRA biases (lora_bias): the service applies plain LoRA only")
    # The LoraConfig diffusers would make (ranks, alphas, their per-layer patterns), as load_lora_adapter does.
    meta = {k.removeprefix("transformer."): v for k, v in (metadata or {}).items() if k.startswith("transformer.")}
    try:
        if meta:
            config = LoraConfig(**meta)
        else:
            ranks = {f"^{k}": v.shape[1] for k, v in transformer.items() if "lora_B" in k and v.ndim > 1}
            net = {k.removeprefix("transformer."): v for k, v in (alphas or {}).items() if k.startswith("transformer.")}
            config = LoraConfig(**get_peft_kwargs(ranks, net or None, transformer))
    except (TypeError, ValueError, IndexError) as e:  # a metadata block or alphas peft cannot read
        raise InvalidLora(f"LoRA {name!r}: its ranks and alphas cannot be read as a LoRA config: {e}") from e
    converted: dict[str, tuple] = {}
    parts: dict[str, dict[int, tuple]] = {}  # fused q/k/v layer -> its LoRA parts, by place (qkv.py)
    rank = 0
    problems = []
    for key, a in transformer.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        b = transformer.get(f"{module}.lora_B.weight")
        if b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise InvalidLora(f"LoRA {name!r}: layer {module} has no matching lora_A/lora_B pair")
        layer, fused = layers.get(module), None
        if layer is None:  # a q/k/v layer stacked into one (fuse_qkv) is a third of the fused layer
            fused = part_of(module)
            if fused is None or fused[0] not in layers:
                problems.append(f"{module} is not a Linear layer of this transformer")
                continue
            layer = layers[fused[0]]
        out_features = layer.out_features // 3 if fused is not None else layer.out_features
        for side, want, got in (("in", layer.in_features, a.shape[1]), ("out", out_features, b.shape[0])):
            if want != got:
                problems.append(f"{module} has {side}_features {want}, the LoRA has {got}")
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
        scale = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        rank = max(rank, a.shape[0])  # the LoRA's own: a fused layer's branch stacks up to three of these
        if fused is not None:
            parts.setdefault(fused[0], {})[fused[1]] = (a.to(torch.float32), b.to(torch.float32), float(scale))
        else:
            converted[module] = (a.to(torch.float32), b.to(torch.float32), float(scale))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InvalidLora(f"LoRA {name!r} does not fit this model: {'; '.join(problems[:3])}{more}")
    both = sorted(set(parts) & set(converted))
    if both:  # its own fused layer and that layer's q/k/v parts: one would overwrite the other
        raise InvalidLora(f"LoRA {name!r} has both {both[0]} and its q/k/v parts: the service applies one or the other")
    for fused_name, by_place in parts.items():  # one branch: A stacked, B block-diagonal, each part's scale in it
        out = layers[fused_name].out_features // 3
        a = torch.cat([by_place[i][0] for i in sorted(by_place)])
        b = torch.zeros(3 * out, a.shape[0])
        col = 0
        for i in sorted(by_place):
            part_a, part_b, scale = by_place[i]
            b[i * out:(i + 1) * out, col:col + part_a.shape[0]] = part_b * scale
            col += part_a.shape[0]
        converted[fused_name] = (a, b, 1.0)
    prepared = PreparedLora(name, converted, rank)
    if prepared.rank > max_rank:
        raise InvalidLora(f"LoRA {name!r} has rank {prepared.rank}, over the service's lora_max_rank of {max_rank} "
                          "(the LoRA slot's size, fixed at load): restart with a larger lora_max_rank")
    return prepared


def _slot_linear_class():
    import torch

    class SlotLinear(torch.nn.Module):
        """A Linear layer of the transformer with the LoRA slot beside it: y = base(x), plus, when this
        layer is switched on, (x A^T) B^T, the scale folded into B when the slot is filled. Each layer
        has its own switch, so a LoRA that trains only attention pays only for the attention layers
        (the variants, LoraSlot.VARIANTS). The sum is a plain add, which inductor fuses into what reads
        y next: measured on an H100 in fp8, an addmm (the add in the GEMM's epilogue) was slower."""

        def __init__(self, base: torch.nn.Linear, rank: int, dtype):
            super().__init__()
            self.base = base
            self.in_features, self.out_features = base.in_features, base.out_features
            device = base.weight.device
            self.lora_A = torch.nn.Parameter(torch.zeros(rank, base.in_features, device=device, dtype=dtype),
                                             requires_grad=False)
            self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=dtype),
                                             requires_grad=False)
            self.enabled = False  # a Python flag: the compiled blocks get one variant per value

        # What code reading the layer expects of a Linear (its weight's dtype, a quantized tensor's type).
        @property
        def weight(self):
            return self.base.weight

        @property
        def bias(self):
            return self.base.bias

        def forward(self, x):
            y = self.base(x)
            if not self.enabled:
                return y
            lora = torch.nn.functional.linear(torch.nn.functional.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B)
            return y + lora.to(y.dtype)

    return SlotLinear


class LoraSlot:
    """The adapter slot of one transformer: made once (every Linear layer wrapped), filled in place,
    switched on and off. Three variants, each compiled and captured at warm-up: "base" (all off),
    "attention" (on in the attention projections only: what most LoRAs train, at a fraction of the
    cost) and "all"; a fill picks the smallest that covers the layers its LoRAs use."""

    ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                 "attn.add_v_proj", "attn.to_add_out", "attn.to_qkv", "attn.to_added_qkv")
    VARIANTS = ("attention", "all")  # besides "base"

    def __init__(self, transformer, rank: int, dtype):
        import torch

        SlotLinear = _slot_linear_class()
        self.rank, self.dtype = rank, dtype
        targets = [(n, m) for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
        with _INJECT_LOCK:
            for name, module in targets:  # a fused q/k/v layer (qkv.py) holds up to three layers' branches
                fused = name.rpartition(".")[2] in PARTS
                transformer.set_submodule(name, SlotLinear(module, 3 * rank if fused else rank, dtype))
        self.layers = {n: transformer.get_submodule(n) for n, _ in targets}
        attention = {n for n in self.layers if n.endswith(self.ATTENTION)}
        self.variant_layers = {"base": set(), "attention": attention, "all": set(self.layers)}
        self.device = next(iter(self.layers.values())).lora_A.device
        self.filled: set[str] = set()  # layers whose slot tensors are not all zero
        self.contents: tuple | None = ()  # what the slot holds: ((key, weight), ...); None: being written
        self.needs = "all"  # the variant the contents need
        self.current = "base"  # the variant switched on

    def enable(self, on: bool, variant: str | None = None) -> None:
        """Switch to `variant` (on: the one the contents need; off: "base")."""
        want = (variant or self.needs) if on else "base"
        if want == self.current:
            return
        on_layers = self.variant_layers[want]
        for name, m in self.layers.items():
            m.enabled = name in on_layers
        self.current = want

    def fill(self, loras: list[tuple[str, PreparedLora, float]]) -> None:
        """Pack `loras` ((key, LoRA, weight), in order) into the slot. In place: no tensor is replaced.
        The same keys and weights in the same order give the same bytes in the slot."""
        import torch

        key = tuple((k, w) for k, _, w in loras)
        if key == self.contents:
            return
        loras = [(p, w) for _, p, w in loras]
        total = sum(p.rank for p, _ in loras)
        if total > self.rank:
            raise InvalidLora(f"these LoRAs together have rank {total}, over the service's lora_max_rank of {self.rank}")
        self.contents = None  # half-written until the end
        with torch.no_grad():
            used = set()
            for name, m in self.layers.items():
                parts = [(p.layers[name], w) for p, w in loras if name in p.layers]
                if not parts and name not in self.filled:
                    continue
                a_slot, b_slot = m.lora_A, m.lora_B
                a_slot.zero_()
                b_slot.zero_()
                offset = 0
                for (a, b, scale), weight in parts:
                    r = a.shape[0]
                    a_slot[offset:offset + r].copy_(a)
                    b_slot[:, offset:offset + r].copy_(b * (scale * weight))
                    offset += r
                if parts:
                    used.add(name)
            self.filled = used
        self.needs = "attention" if used <= self.variant_layers["attention"] else "all"
        self.contents = key


class SlotAdapterSet(AdapterSet):
    """LoRAs through the slot. "Loaded" LoRAs are converted copies kept on the device (an LRU of
    `cache_size`): switching to one is a copy into the slot, never a load into the model."""

    def __init__(self, pipe, resolver, cache_size: int, backend: str, max_rank: int = 64, dtype=None):
        super().__init__(pipe, resolver, cache_size, backend)
        self.slot = LoraSlot(pipe.transformer, max_rank, dtype or pipe.text_encoder.dtype)
        self.prepared: dict[str, PreparedLora] = {}  # adapter name -> converted LoRA

    # ------------------------------------------------------------------ checks (request path, any thread)

    def fit_check(self, path: Path, name: str) -> None:
        convert(self.pipe, path, name, self.slot.rank, self.slot.layers)  # the file read once: fit and limits

    def check_together(self, loras, files: dict[str, LoraFile]) -> None:
        from .lora import inspect_lora

        ranks = {s.name: inspect_lora(files[s.name].path)["rank"] or 0 for s in loras if s.name in files}
        if len(ranks) > 1 and sum(ranks.values()) > self.slot.rank:
            listed = ", ".join(f"{n} (rank {r})" for n, r in ranks.items())
            raise InvalidLora(f"these LoRAs together have rank {sum(ranks.values())} ({listed}), over the service's "
                              f"lora_max_rank of {self.slot.rank}: name fewer, or restart with a larger lora_max_rank")

    # ------------------------------------------------------------------ the worker

    def _load_adapter(self, file: LoraFile, state: dict, adapter: str, metadata: dict | None) -> None:
        """Convert on the CPU, then keep the converted tensors on the slot's device, in its dtype."""
        prepared = convert(self.pipe, state, file.name, self.slot.rank, self.slot.layers, metadata)
        self.prepared[adapter] = prepared.to(self.slot.device, self.slot.dtype)

    def _delete_adapter(self, adapter: str) -> None:
        self.prepared.pop(adapter, None)
        if any(key == adapter for key, _ in self.slot.contents or ()):
            self.slot.contents = None  # the slot still holds its tensors: written again on next use

    def _switch_off(self) -> None:
        self.slot.enable(False)

    def _switch_to(self, loras: tuple[LoraSpec, ...], adapters: list[str]) -> None:
        # Keyed by adapter name: a file loaded again (changed on disk) gets a new one, so it is copied in.
        self.slot.fill([(a, self.prepared[a], s.weight) for a, s in zip(adapters, loras)])
        self.slot.enable(True)

    def graph_variant(self):
        return self.slot.current

    def slot_status(self) -> dict:
        return {"rank": self.slot.rank, "layers": len(self.slot.layers), "variant": self.slot.current}

    def warm_variants(self):
        """Each variant a LoRA request runs, for the warm-up: the slot on (its zero weights), in the
        attention layers only, then in all."""
        try:
            for variant in LoraSlot.VARIANTS:
                self.slot.enable(True, variant)
                yield variant
        finally:
            self.slot.enable(False)
