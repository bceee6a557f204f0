"""What every backend is: how the transformer is stored, and everything that follows from it.

A backend is one small class. It says whether it can run here and why not (`problem`, like
diffusers' `validate_environment` and vLLM's `get_min_capability`), how its precision reads in
/model-status, the quantization config diffusers loads it with, its storage size (for placement),
whether `compile=auto` compiles it, and which LoRA adapter implementation it takes. Selection is in
`registry.py`; loading in `..loader`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..adapters import AdapterSet
from ..devices import Hardware
from .environment import Packages

if TYPE_CHECKING:
    from ...settings import ServiceSettings
    from ..loader import LoadSpec


class Backend:
    name: ClassVar[str]
    # Stored transformer bytes over its bf16 bytes (4-bit packs plus scales; 8-bit plus scales).
    size_factor: ClassVar[float] = 1.0
    # What compile=auto means for this backend on a GPU: "regional" where eager is slow, else "none"
    # (so that LoRA works by default).
    auto_compile: ClassVar[str] = "none"
    # torch.compile(fullgraph=...): False where the backend's layers break the graph.
    fullgraph: ClassVar[bool] = True
    adapter_class: ClassVar[type[AdapterSet]] = AdapterSet
    # What to suggest when this backend is asked for and cannot run.
    alternatives: ClassVar[str] = ""

    def __init__(self, settings: "ServiceSettings", hardware: Hardware, packages: Packages, reason: str = "requested"):
        self.settings, self.hardware, self.packages, self.reason = settings, hardware, packages, reason

    # ------------------------------------------------------------------ can it run here?

    @classmethod
    def problem(cls, hw: Hardware, pkgs: Packages) -> str | None:
        """Why this backend cannot run on `hw` with `pkgs`, or None when it can."""
        return None

    @classmethod
    def chosen_because(cls, hw: Hardware) -> str:
        """Why `auto` may pick it: the first clause of its reason."""
        return "it can run here"

    # ------------------------------------------------------------------ what it is

    def precision(self, dtype: str) -> str:
        """The transformer's precision as /model-status shows it; `dtype` is the compute dtype."""
        return dtype

    def transformer_quantization(self, dtype) -> Any | None:
        """The diffusers quantization config of the transformer, or None for plain weights."""
        return None

    def load_pipeline(self, spec: "LoadSpec", device: str):
        """One pipeline on `device`. The diffusers path; a backend with its own model class overrides it."""
        from ..loader import load_diffusers_pipeline

        return load_diffusers_pipeline(spec, device)
