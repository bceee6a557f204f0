"""What every backend is: how the transformer is stored, and everything that follows from it.

A backend is one small class. It says whether it can run here and why not (`problem`, like
diffusers' `validate_environment` and vLLM's `get_min_capability`), how its precision reads in
/model-status, the quantization config diffusers loads it with, its storage size (for placement),
whether `compile=auto` compiles it, and how it holds LoRA adapters. Selection is in
`registry.py`; loading in `..loader`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..adapters import AdapterSet
from ..lora_slot import SlotAdapterSet
from ..devices import Hardware
from .environment import Packages

if TYPE_CHECKING:
    from ...settings import ServiceSettings
    from ..loader import LoadSpec


@dataclass(frozen=True)
class Requirements:
    """A CUDA GPU (of at least `min_capability`) and a package, each with what to say when missing."""

    gpu: str | None = None  # what it needs of the GPU, e.g. "fp8 tensor cores (sm_89+)"; None: the CPU will do
    min_capability: tuple[int, int] | None = None
    otherwise: str = ""  # what to choose where that GPU is missing
    package: str | None = None  # import name
    install: str | None = None  # what to pip install


class Backend:
    name: ClassVar[str]
    # Stored transformer bytes over its bf16 bytes (4-bit packs plus scales; 8-bit plus scales).
    size_factor: ClassVar[float] = 1.0
    # What compile=auto means for this backend on a GPU: "regional" where it was measured faster, else
    # "none". Compiling costs no feature: LoRAs go through the slot compiled in (lora_slot.py).
    auto_compile: ClassVar[str] = "none"
    # torch.compile(fullgraph=...): False where the backend's layers break the graph.
    fullgraph: ClassVar[bool] = True
    # Whether a LoRA's tensors are checked against the model's layers before it loads (diffusers widens
    # a layer to fit a LoRA made for another model instead of refusing it).
    checks_lora_fit: ClassVar[bool] = True
    # Whether its transformer's attention is diffusers' (so the `attention` setting chooses the kernel);
    # False for a backend with its own attention kernels.
    diffusers_attention: ClassVar[bool] = True
    # Why a request cannot use First Block Cache (`first_block_cache`) on this backend, or None: it needs
    # diffusers' transformer blocks, which its hooks wrap (step_cache.py).
    step_cache_problem: ClassVar[str | None] = None
    # What to suggest when this backend is asked for and cannot run.
    alternatives: ClassVar[str] = ""
    # Where it runs; most backends need nothing more than this to say `problem`.
    runs_on: ClassVar[Requirements] = Requirements()
    # /model-status texts: {dtype} is the compute dtype, {b} the backend; {sm} the GPU's architecture.
    precision_text: ClassVar[str] = "{dtype}"
    chosen_text: ClassVar[str] = "it can run here"

    def __init__(self, settings: "ServiceSettings", hardware: Hardware, packages: Packages, reason: str = "requested"):
        self.settings, self.hardware, self.packages, self.reason = settings, hardware, packages, reason

    # ------------------------------------------------------------------ can it run here?

    @classmethod
    def problem(cls, hw: Hardware, pkgs: Packages) -> str | None:
        """Why this backend cannot run on `hw` with `pkgs`, or None when it can."""
        need = cls.runs_on
        too_old = need.min_capability is not None and hw.cuda and hw.gpus[0].capability < need.min_capability
        if (need.gpu and not hw.cuda) or too_old:
            where = f"{hw.gpus[0].name} ({hw.gpus[0].sm})" if hw.cuda else "the CPU: no CUDA GPU is in use"
            return f"backend {cls.name} needs {need.gpu}, not {where}; {need.otherwise}"
        if need.package is not None and not getattr(pkgs, need.package):
            return f"backend {cls.name} needs {need.package}: pip install '{need.install}'"
        return None

    @classmethod
    def chosen_because(cls, hw: Hardware) -> str:
        """Why `auto` may pick it: the first clause of its reason."""
        return cls.chosen_text.format(sm=hw.gpus[0].sm if hw.cuda else "cpu")

    # ------------------------------------------------------------------ what it is

    def precision(self, dtype: str) -> str:
        """The transformer's precision as /model-status shows it; `dtype` is the compute dtype."""
        return self.precision_text.format(dtype=dtype, b=self)

    def transformer_quantization(self, dtype) -> Any | None:
        """The diffusers quantization config of the transformer, or None for plain weights."""
        return None

    def fuse(self, transformer) -> str | None:
        """Swap in this backend's fused kernels, on a GPU, after the LoRA slot and before compiling (the
        `fuse_kernels` setting). What was fused, for /model-status, or None."""
        return None

    def adapters(self, pipe, resolver, settings: "ServiceSettings", dtype) -> AdapterSet:
        """The LoRA adapters of a freshly loaded pipeline (before it is compiled): peft's, in one slot."""
        return SlotAdapterSet(pipe, resolver, settings.lora_cache_size, self.name, settings.lora_max_rank, dtype)

    def load_pipeline(self, spec: "LoadSpec", device: str):
        """One pipeline on `device`. The diffusers path; a backend with its own model class overrides it."""
        from ..loader import load_diffusers_pipeline

        return load_diffusers_pipeline(spec, device)
