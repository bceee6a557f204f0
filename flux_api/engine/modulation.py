"""A request's AdaLN modulations for all its steps at once: each norm's weights read once, not once a step.

Every norm of FLUX's blocks turns the step's embedding into its shifts, scales and gates with one Linear:
`linear(silu(temb))` (AdaLayerNormZero, twice in each of the 19 double blocks; AdaLayerNormZeroSingle in
each of the 38 single blocks; norm_out's AdaLayerNormContinuous). One row in: a GEMV that reads the whole
weight (3,072 x 18,432 for a double block's norm) for one row out, 77 a step, about 3.2 G weights; about
2.1 ms of an FP4 step on an H100 (the 2026-12-06 trace). `temb` depends only on the timestep, the guidance
and the pooled prompt, and all three are known at a pipeline call's first step: the scheduler's timesteps
are set by then. So at a call's first transformer pass `ModulationTable` computes the embedding of every
remaining step and each norm's output for all of them, one GEMM per norm (M = the steps: the weights read
once), and before each pass copies that step's row into the buffer the norms' layers read (one copy a
step, outside the CUDA graph, whose captured addresses it keeps). Inside the compiled blocks a norm's
Linear is a read of that buffer; the silu before it is dead code.

Correct by construction where the pipeline passes the scheduler's timesteps (diffusers' FLUX text-to-image,
image-to-image and inpainting pipelines: `t.expand(B).to(latents.dtype) / 1000`): the first pass of each
prompt checks its timestep against the table's (one host sync a call); later passes compare on the device
and `finish` raises if any differed, so a pipeline that does otherwise fails loudly instead of drawing with
another step's modulation. A pass whose step the table does not hold (another pipeline's timesteps) gets
its row computed then, as diffusers would. The same values as diffusers' per-step GEMV up to the GEMM's
rounding (an M-row GEMM may sum in another order than a one-row one). LoRA: the table is made by the
layers' own forward (the LoRA slot's branch included) after the request's LoRAs are switched on.

One image per pipeline call (the replicas' rule): a batch of several is refused, as the buffers hold one
row. Installed where `precompute_modulation` says, before compiling; not where a norm's weight is stored
packed (bitsandbytes' 4-bit) or in integers, whose shape and dtype do not say the layer's output: then none.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

NORMS = ("AdaLayerNormZero", "AdaLayerNormZeroSingle", "AdaLayerNormContinuous")


def _read_modulation(self, x):
    """A norm Linear's forward once the table is installed: this step's row (ModulationTable.step)."""
    return self.modulation


@dataclass
class _Run:
    """The table of one prompt (positive or negative) in one pipeline call."""

    start: int  # the scheduler's step index of the first row
    timesteps: object  # [S] the timesteps as the pipeline passes them (checked against each pass's)
    rows: dict  # device -> [S, the device's modulation width]


class ModulationTable:
    def __init__(self, transformer, scheduler):
        import torch

        self.transformer, self.scheduler = transformer, scheduler
        self.layers: list[tuple[object, object]] = []  # (layer, its own forward)
        self.runs: dict = {}
        self.differed = None  # a device flag: a pass's timestep was not its row's
        self.active = False  # inside `run`: a table is made for one pipeline call and never outlives it
        self.current: dict = {}  # device -> [1, width]: the row the layers read now
        widths: dict = {}
        self.problem: str | None = None  # why no norm is precomputed, where none is
        norms = [m for m in transformer.modules() if type(m).__name__ in NORMS
                 and isinstance(getattr(m, "silu", None), torch.nn.SiLU) and getattr(m, "emb", None) is None]
        for norm in norms:
            base = getattr(norm.linear, "base", norm.linear)
            weight = base.weight
            # The buffers take the layer's output width and dtype from its weight: a weight stored packed
            # (bitsandbytes' 4-bit: uint8, half the values in one column) or in integers says neither.
            if not weight.dtype.is_floating_point or tuple(weight.shape) != (base.out_features, base.in_features):
                self.problem = f"{type(base).__name__} stores its weight as {weight.dtype} {tuple(weight.shape)}"
                return
            widths.setdefault(weight.device, []).append((norm.linear, weight.shape[0], weight.dtype))
        for device, layers in widths.items():
            self.current[device] = torch.zeros(1, sum(w for _, w, _ in layers), device=device, dtype=layers[0][2])
            offset = 0
            for layer, width, _ in layers:
                self.layers.append((layer, layer.forward))
                # A buffer: the compiled blocks take it as an input like a weight, so the 57 blocks still
                # share their graphs; a view of `current`, so one copy a step fills every layer's.
                layer.register_buffer("modulation", self.current[device][:, offset:offset + width], persistent=False)
                layer.forward = types.MethodType(_read_modulation, layer)
                offset += width

    @property
    def norms(self) -> int:
        return len(self.layers)

    def install(self) -> "ModulationTable":
        """Wrap `transformer.forward` (the outermost: around the CUDA graph's) so that each pass fills the row first."""
        inner = self.transformer.forward

        def forward(*args, **kwargs):
            self.step(kwargs)
            return inner(*args, **kwargs)

        self.transformer.forward = forward
        return self

    @contextlib.contextmanager
    def run(self):
        """One pipeline call: its tables made as its passes come, dropped after (their memory: about 2 MiB a
        step per prompt on FLUX.1). Raises after the call if a pass's timestep differed from its row's."""
        self.runs.clear()
        self.differed, self.active = None, True
        try:
            yield
            if self.differed is not None and bool(self.differed):
                raise RuntimeError("a transformer pass's timestep was not the scheduler's for its step: the "
                                   "precomputed modulations do not apply to this pipeline (precompute_modulation)")
        finally:
            self.runs.clear()
            self.active = False

    def step(self, kwargs: dict) -> None:
        """Before a transformer pass: its row into the buffers, the prompt's table made at its first pass."""
        import torch

        if not self.active:  # a table outside a call could be another prompt's at the same address
            raise RuntimeError("the transformer ran outside ModulationTable.run (precompute_modulation)")
        hidden, t = kwargs["hidden_states"], kwargs["timestep"]
        if hidden.shape[0] != 1:
            raise ValueError(f"precompute_modulation runs one image per transformer pass, not {hidden.shape[0]}")
        pooled, guidance = kwargs["pooled_projections"], kwargs.get("guidance")
        index = self.scheduler.step_index
        if index is None:  # the first step: the scheduler counts from its begin index (image-to-image) or 0
            index = self.scheduler.begin_index or 0
        key = (pooled.data_ptr(), guidance is not None)
        run = self.runs.get(key)
        if run is None or not run.start <= index < run.start + len(run.timesteps):
            steps = self.scheduler.timesteps[index:].to(t.device).to(t.dtype) / 1000  # as the pipeline passes them
            if not torch.equal(steps[:1], t.reshape(-1)):  # not the scheduler's: this pass's own row only
                steps = t.reshape(-1)
            run = self.runs[key] = _Run(index, steps, self._rows(hidden, steps, guidance, pooled))
        else:  # checked on the device, read once by `run` after the call
            differed = (run.timesteps[index - run.start] != t).any()
            self.differed = differed if self.differed is None else self.differed | differed
        for device, current in self.current.items():
            current.copy_(run.rows[device][index - run.start:index - run.start + 1])

    def _rows(self, hidden, steps, guidance, pooled) -> dict:
        """Each norm's output for the embeddings of `steps`, by device: what the transformer's forward computes
        per pass (diffusers 0.42's FluxTransformer2DModel.forward, then each norm's linear(silu(temb)))."""
        import torch

        n = steps.shape[0]
        timestep = steps.to(hidden.dtype) * 1000
        embed = self.transformer.time_text_embed
        if guidance is None:
            temb = embed(timestep, pooled.expand(n, -1))
        else:
            temb = embed(timestep, (guidance.to(hidden.dtype) * 1000).reshape(-1)[:1].expand(n), pooled.expand(n, -1))
        temb = torch.nn.functional.silu(temb).to(hidden.dtype)
        rows: dict = {}
        for layer, forward in self.layers:
            device = layer.modulation.device
            rows.setdefault(device, []).append(forward(temb.to(device)))
        return {device: torch.cat(parts, dim=1) for device, parts in rows.items()}
