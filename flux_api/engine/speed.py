"""The speed and memory policy of a service: compile, CUDA graphs, memory_mode=low, warm-up.

Each setting is resolved once, from the settings, the chosen backend and the placement plan, into a
decision with its reason (shown in /model-status). `prepare` applies them to a freshly loaded
pipeline. Nothing here runs on a live request.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field

from .backends import Backend
from .devices import Hardware, PlacementPlan

log = logging.getLogger(__name__)


@dataclass
class SpeedPolicy:
    settings: object  # ServiceSettings
    backend: Backend
    plan: PlacementPlan
    # memory_mode=low puts the text encoders on the CPU ("cpu") or T5 in 4-bit on the GPU ("nf4"):
    # the service's preference, kept only where bitsandbytes and a GPU are there.
    low_memory_text: str = "cpu"
    hardware: Hardware = field(default_factory=Hardware)  # the GPUs in use (none on the CPU)

    # ------------------------------------------------------------------ decisions

    @property
    def on_gpu(self) -> bool:
        return self.plan.device != "cpu"

    @property
    def compile_mode(self) -> str:
        """none | regional. auto: what the backend needs to be fast, never on the CPU."""
        if self.settings.compile != "auto":
            return self.settings.compile
        return self.backend.auto_compile if self.on_gpu else "none"

    @property
    def graphs_off_reason(self) -> str | None:
        """Why CUDA graphs are off, or None when they are on."""
        if not self.settings.cuda_graphs:
            return "cuda_graphs=false"
        if not self.on_gpu:
            return "no CUDA device"
        if self.plan.mode == "balanced":
            return "placement balanced (one model over several GPUs)"
        if self.plan.mode == "parallel":  # capturing NCCL's all-to-alls in a graph has not run on GPUs yet
            return "placement parallel (not yet measured with CUDA graphs over the ranks' collectives)"
        if self.low_memory:
            return "memory_mode=low (a graph keeps its own activation memory)"
        return None

    def __post_init__(self):
        self.fused: str | None = None  # what the backend fused at load (fuse_kernels), for /model-status
        self.qkv_fused: int | None = None  # attention modules whose q/k/v were stacked (fuse_qkv)
        self.rope_fused: int | None = None  # attention modules given qk_rope's processor (fuse_rope)
        self.fp8_attention_modules: int | None = None  # attention modules given fp8_attention's processor
        self.modulation_norms: int | None = None  # norms whose modulations are precomputed (precompute_modulation)
        self.split_group_norms: int | None = None  # the VAE's GroupNorms computed by group_norm.py (split_group_norm)
        self.attention = self._choose_attention()  # raises ValueError (start-up stops) where impossible
        if self.settings.compile_persistent_rows and self.compile_mode == "regional" and not self.persistent_rows:
            import torch

            why = f"inductor's choices seam (config.inductor_choices_class), which torch {torch.__version__} does not have"
            if "compile_persistent_rows" in self.settings.model_fields_set:  # asked for: start-up stops, saying why
                raise ValueError(f"compile_persistent_rows needs {why}: switch it off")
            log.info("compile_persistent_rows (the default) left off: it needs %s", why)
        if self.plan.mode == "parallel" and not self.backend.diffusers_attention:
            raise ValueError(f"placement=parallel splits diffusers' attention between processes; backend "
                             f"{self.backend.name} runs its own: choose another backend or placement")

    def _choose_attention(self) -> tuple[str, str]:
        """(sdpa | cudnn | own: the backend's, why). auto: PyTorch's own choice, which on an H100 with torch
        2.11 already is cuDNN's fused attention at FLUX's shapes (measured: forcing it changed nothing)."""
        if not self.backend.diffusers_attention:
            return "own", f"backend {self.backend.name} runs its own attention kernels"
        asked = self.settings.attention
        if asked == "cudnn" and not self.on_gpu:
            raise ValueError("attention=cudnn needs a CUDA GPU; none is in use (use attention=sdpa or auto)")
        old_gpu = next((g for g in self.hardware.gpus if g.capability < (8, 0)), None)
        if asked == "cudnn" and old_gpu is not None:  # cuDNN's fused attention runs on Ampere and newer
            raise ValueError(f"attention=cudnn needs an sm_80+ GPU, not {old_gpu.name} ({old_gpu.sm}); use sdpa or auto")
        if asked == "cudnn-fp8":
            if not self.one_gpu_process:
                raise ValueError("attention=cudnn-fp8 runs on a GPU in one process (not placement=parallel, not the "
                                 "CPU); use sdpa or auto")
            from . import fp8_attention

            why_not = fp8_attention.problem(min(g.capability for g in self.hardware.gpus))
            if why_not is not None:
                raise ValueError(f"attention=cudnn-fp8: {why_not}; use sdpa or auto")
            return asked, "as configured: cuDNN's fused attention in fp8 (e4m3 q, k, v, softmax and output)"
        if asked != "auto":
            return asked, "as configured"
        return "sdpa", "PyTorch's own choice of kernel (on an H100 with torch 2.11: cuDNN's, measured as fast as forcing it)"

    @property
    def persistent_rows(self) -> bool:
        """compile_persistent_rows, where the blocks are compiled by a torch with inductor's choices seam (where it
        was asked for explicitly without one, start-up stopped above; a default on is left off there)."""
        return self.settings.compile_persistent_rows and self.compile_mode == "regional" and has_choices_seam()

    @property
    def one_gpu_process(self) -> bool:
        """On a GPU in one process: where the levers that are on by default (or asked for as auto) were measured
        (placement=parallel splits the tokens between processes around the attention: not run with them)."""
        return self.on_gpu and self.plan.mode != "parallel"

    @property
    def compiles_vae(self) -> bool:
        """compile_vae, where the blocks are compiled and the VAE decodes in one piece (not memory_mode=low)."""
        return self.settings.compile_vae and self.compile_mode == "regional" and not self.low_memory

    @property
    def compiles_text_encoder(self) -> bool:
        """compile_text_encoder, where the blocks are compiled and T5 runs on the GPU in bf16 (not memory_mode=low)."""
        return self.settings.compile_text_encoder and self.compile_mode == "regional" and self.text_encoders == "gpu"

    @property
    def fuses_rope(self) -> bool:
        """fuse_rope, with Triton, where diffusers' attention runs on a GPU in one process."""
        from .fp8_rows import HAS_TRITON

        return self.settings.fuse_rope and self.one_gpu_process and HAS_TRITON and self.backend.diffusers_attention

    @property
    def low_memory(self) -> bool:
        return self.settings.memory_mode == "low"

    @property
    def text_encoders(self) -> str:
        """Where memory_mode=low keeps the text encoders: "cpu" or "nf4"; "gpu" in the default mode."""
        if not self.low_memory:
            return "gpu"
        nf4_possible = self.on_gpu and self.backend.packages.bitsandbytes
        return "nf4" if self.low_memory_text == "nf4" and nf4_possible else "cpu"

    @property
    def text_on_cpu(self) -> bool:
        return self.text_encoders == "cpu"

    def warmup_sizes(self, graphed: bool) -> list[int]:
        # Runs at each warm-up size pay the first-call costs (kernel selection, allocator growth,
        # tokenizer caches, compiling, capturing a CUDA graph) before /health says ready, instead of
        # on a user's request. Compiled (dynamic shapes: one graph for every size), on the CPU too.
        # None with warmup=false.
        if not self.settings.warmup:
            return []
        return self.settings.warmup_sizes if self.compile_mode != "none" or (self.on_gpu and graphed) else [256]

    # ------------------------------------------------------------------ loading

    def quantization(self, dtype) -> dict:
        """Quantization by component: the backend's transformer, and T5 in nf4 where memory_mode=low says so."""
        mapping = {}
        transformer = self.backend.transformer_quantization(dtype)
        if transformer is not None:
            mapping["transformer"] = transformer
        if self.text_encoders == "nf4":
            # T5-XXL in 4-bit nf4: 2.4 GiB instead of 8.9 (73 ms per prompt on an H100).
            from transformers import BitsAndBytesConfig as TransformersBnbConfig

            mapping["text_encoder_2"] = TransformersBnbConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                              bnb_4bit_compute_dtype=dtype)
        return mapping

    def restructure(self, transformer) -> None:
        """Right after loading, before the LoRA slot: q/k/v stacked into one layer where `fuse_qkv` says
        (qkv.py). The number of attention modules fused is kept for /model-status."""
        if self.settings.fuse_qkv:
            from .qkv import fuse_qkv

            self.qkv_fused = fuse_qkv(transformer)

    @property
    def precomputes_modulation(self) -> bool:
        """precompute_modulation, where the transformer runs diffusers' blocks (whose norms it reads). auto: on a
        GPU in one process, as measured (not on the CPU, whose tiny-model bytes it would change within a level)."""
        wanted = self.settings.precompute_modulation
        return (self.one_gpu_process if wanted == "auto" else wanted) and self.backend.step_cache_problem is None

    def modulation_table(self, pipe):
        """The ModulationTable installed on `pipe` (modulation.py), or None. After compile and the CUDA
        graphs: it patches the norms' layers before anything is traced, and wraps the graphed forward."""
        if not self.precomputes_modulation:
            return None
        from .modulation import ModulationTable

        table = ModulationTable(pipe.transformer, pipe.scheduler)
        self.modulation_norms = table.norms
        if table.problem:  # asked for, a warning; auto (a service's default), a note
            log.log(logging.INFO if self.settings.precompute_modulation == "auto" else logging.WARNING,
                    "precompute_modulation: not done, %s", table.problem)
        return table.install() if table.norms else None

    def prepare(self, pipe, free_memory) -> None:
        """After loading: the low-memory moves, then compile."""
        pipe.set_progress_bar_config(disable=True)
        if self.low_memory:
            if self.text_on_cpu:
                pipe.text_encoder.to("cpu")
                pipe.text_encoder_2.to("cpu")
            tile_vae(pipe.vae)
            free_memory()
        if self.attention[0] == "cudnn":
            # Before compiling: the kernel is part of what gets compiled and captured.
            pipe.transformer.set_attention_backend("_native_cudnn")
        if self.on_gpu and self.settings.fuse_kernels:  # before compiling: the fused code is what compiles
            self.fused = self.backend.fuse(pipe.transformer)
        if self.attention[0] == "cudnn-fp8":  # before compiling: the processor's quantization compiles with RoPE
            from . import fp8_attention

            self.fp8_attention_modules = fp8_attention.install(pipe.transformer)
        if self.fuses_rope:  # after the attention backend is set (the processor keeps it), before compiling
            from . import qk_rope

            self.rope_fused = qk_rope.install(pipe.transformer)
        if self.plan.mode == "parallel":  # before compiling too: its hooks split and gather the tokens
            from .parallel import enable_context_parallel

            enable_context_parallel(pipe.transformer, self.plan.ranks)
        if self.on_gpu and self.settings.split_group_norm and not self.compiles_vae:
            from . import group_norm

            if group_norm.HAS_TRITON:
                self.split_group_norms = group_norm.install(pipe.vae)
        if self.compile_mode == "regional":
            compile_blocks(pipe.transformer, self.settings.cache_dir, self.backend.fullgraph,
                           self.settings.compile_autotune, self.persistent_rows)
            if self.compiles_vae:
                compile_vae_decoder(pipe.vae)
            if self.compiles_text_encoder:  # T5's blocks, compiled at the warm-up's first prompt
                compile_forwards(pipe.text_encoder_2.encoder.block)

    # ------------------------------------------------------------------ status

    def attention_status(self) -> dict:
        kernel, why = self.attention
        out = {"kernel": kernel, "why": why}
        if self.fp8_attention_modules is not None:
            out["modules"] = self.fp8_attention_modules
        return out

    def memory_status(self) -> dict:
        out = {"mode": self.settings.memory_mode}
        if self.low_memory:
            out["text_encoders"] = {"cpu": "on the CPU, run there (about 2 s per prompt on 16 cores)",
                                    "nf4": "T5 in bitsandbytes nf4 on the GPU, CLIP in bf16"}[self.text_encoders]
            out["vae"] = "tiled decode"
        return out


PERSISTENT_ROWS = 4096  # FLUX's rows are 3,072 wide; inductor keeps rows of at most 1,024 in registers


def has_choices_seam() -> bool:
    """Whether this torch's inductor takes its heuristics from `config.inductor_choices_class`."""
    import torch._inductor.config

    return hasattr(torch._inductor.config, "inductor_choices_class")


@functools.cache
def persistent_row_choices(limit: int = PERSISTENT_ROWS):
    """Inductor's heuristics (its `InductorChoices`, the seam `config.inductor_choices_class` exists for), but
    a reduction along rows of at most `limit` values is persistent: the row is read once into registers
    instead of looped over two or three times. Inductor does that for rows of at most 1,024, so each of
    FLUX's 3,072-wide norms and per-row fp8 quantizations loops (on an H100, 2026-12-06: 43-62 us a call at
    1024 px, 0.5-0.9 TB/s; about 4.5 ms of an FP4 step in all). Anything this cannot judge is inductor's call."""
    from torch._inductor.choices import InductorChoices

    class PersistentRows(InductorChoices):
        def uuid(self) -> str:  # inductor's cache keys on it: other kernels, another key
            return f"flux_api.persistent_rows.{limit}"

        @staticmethod
        def should_use_persistent_reduction(features, cooperative_reduction: bool) -> bool:
            import torch._inductor.config as config
            from torch._inductor.runtime.hints import ReductionHint

            try:
                numel = int(features.reduction_numel)  # static: the feature width (rows vary, widths do not)
                inner = features.get_reduction_hint() == ReductionHint.INNER
            except (TypeError, AttributeError):
                numel, inner = None, False
            if inner and not cooperative_reduction and numel <= limit and config.triton.persistent_reductions:
                return True
            return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    return PersistentRows


def compile_blocks(transformer, cache_dir, fullgraph: bool, autotune: bool = False,
                   persistent_rows: bool = False) -> None:
    """torch.compile the transformer's repeated blocks. The 57 blocks share two compiled graphs, so this
    takes seconds instead of minutes; the LoRA slot switched on and off are two variants of each, made
    at warm-up. dynamic=True: one graph serves every image size (with torch's automatic dynamic shapes,
    the first request at a size the warm-up did not run compiled on the live request). Inductor's
    cache (`cache_dir`/inductor) is reused across restarts. `autotune`: coordinate-descent tuning of the
    generated kernels (slower to compile, faster to run; the tuned kernels are cached there too).
    `persistent_rows`: inductor's heuristics with `persistent_row_choices` (its cache in its own folder, so
    that a torch whose cache key does not include the heuristics never mixes the two).

    Each block's own `forward` is compiled, not the module's call (diffusers' `compile_repeated_blocks`,
    `module.compile()`): a hook diffusers installs on a block later (First Block Cache, per request:
    `step_cache.py`) then wraps the compiled code from outside. Compiling the call would trace the hook
    into the graph, and its data-dependent skip cannot be traced (a graph break, an error with
    fullgraph). The same graphs, the same bytes (checked on the CPU tiny model), the same count."""
    import torch._inductor.config

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / ("inductor-persistent-rows" if persistent_rows else "inductor")))
    config = torch._inductor.config
    if persistent_rows:  # a torch without the seam was refused at start-up (SpeedPolicy)
        config.inductor_choices_class = persistent_row_choices()
    elif has_choices_seam() and config.inductor_choices_class is persistent_row_choices():
        config.inductor_choices_class = None  # off again: the setting, not what came before
    torch._inductor.config.coordinate_descent_tuning = autotune  # read when the kernels are generated
    repeated = set(getattr(transformer, "_repeated_blocks", ()))
    blocks = [m for m in transformer.modules() if type(m).__name__ in repeated]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} declares no repeated blocks to compile (compile=none runs it)")
    compile_forwards(blocks, fullgraph)


def compile_forwards(modules, fullgraph: bool = False) -> None:
    """torch.compile each module's own `forward` (see compile_blocks for why not the module's call), dynamic=True:
    one graph for every shape, so that no request compiles. The transformer's blocks and T5's."""
    import torch
    import torch._dynamo

    # A transformer block has two variants (the LoRA slot off/on) per dtype and grad mode: room to spare, so
    # that a variant never falls back to eager for want of cache entries.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    for module in modules:
        module.forward = torch.compile(module.forward, fullgraph=fullgraph, dynamic=True)


def compile_vae_decoder(vae) -> None:
    """torch.compile the VAE's decoder (its forward, like the blocks'), dynamic=True: one graph for every
    image size. Its convolutions and norms run in inductor's fused kernels; the encoder (image-to-image)
    stays as it is. Compiled here, on a non-square latent: a square one first (the warm-up's) would make
    height and width one symbol (torch's duck sizing), and the first non-square request would compile."""
    import torch

    vae.decoder.forward = torch.compile(vae.decoder.forward, dynamic=True)
    weight = next(vae.decoder.parameters())
    with torch.no_grad():  # as the pipeline decodes: grad mode is part of the compiled graph's guards
        vae.decoder(torch.zeros(1, vae.config.latent_channels, 16, 24, device=weight.device, dtype=weight.dtype))


def tile_vae(vae) -> None:
    # Tiles of 512 px: images up to 512 decode in one piece as before; larger ones in overlapping
    # tiles. (diffusers' own tile size is the config's sample_size: 1024 for FLUX, which would never
    # tile an allowed size.)
    vae.enable_tiling()
    vae.tile_sample_min_size = 512
    vae.tile_latent_min_size = 512 // 2 ** (len(vae.config.block_out_channels) - 1)
