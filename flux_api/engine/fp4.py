"""FP4FluxModelManager: the quantized transformer, and the choice of backend.

Backends:
- nunchaku: SVDQuant W4A4 (INT4 on sm_75/80/86/89, NVFP4 on sm_120/121). Not Hopper, not sm_100.
- bnb-fp4 / bnb-nf4: bitsandbytes 4-bit weights through diffusers, on any CUDA GPU.
- torchao-fp8: fp8 dynamic activations and weights (row-wise), the fast path on sm_89+.
- torchao-int8: int8 weight-only; runs on the CPU too, so CI loads a really quantized model.

`select_backend` is a pure function of the request, the hardware and the installed packages, so it
is tested with named stand-ins for GPUs and packages that are not on the test machine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailable
from .adapters import AdapterSet
from .base import FluxModelManager
from .devices import Hardware
from .lora import LoraSpec

NUNCHAKU_RELEASES = "https://github.com/nunchaku-tech/nunchaku/releases"
NUNCHAKU_INT4_SM = {(7, 5), (8, 0), (8, 6), (8, 9)}
NUNCHAKU_FP4_SM = {(12, 0), (12, 1)}


@dataclass(frozen=True)
class NunchakuProbe:
    installed: bool
    real: bool = False  # the SVDQuant package, with its compiled nunchaku._C
    version: str | None = None
    location: str | None = None


def probe_nunchaku() -> NunchakuProbe:
    """Find a `nunchaku` package without importing it, and tell the real one from its PyPI namesake.

    The real Nunchaku ships a compiled extension `nunchaku._C` and a `+torch` local version tag; the
    unrelated PyPI project of the same name has neither.
    """
    spec = importlib.util.find_spec("nunchaku")
    if spec is None:
        return NunchakuProbe(installed=False)
    try:
        version = importlib.metadata.version("nunchaku")
    except importlib.metadata.PackageNotFoundError:
        version = None
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    has_ext = any(any(d.glob("_C*.so")) or any(d.glob("_C*.pyd")) for d in dirs)
    location = str(dirs[0]) if dirs else spec.origin
    return NunchakuProbe(installed=True, real=has_ext, version=version, location=location)


@dataclass(frozen=True)
class Packages:
    nunchaku: NunchakuProbe
    bitsandbytes: bool
    torchao: bool

    @classmethod
    def detect(cls) -> "Packages":
        has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
        return cls(nunchaku=probe_nunchaku(), bitsandbytes=has("bitsandbytes"), torchao=has("torchao"))


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str
    nunchaku_precision: str | None = None  # "int4" | "fp4"


def nunchaku_precision(capability: tuple[int, int]) -> str | None:
    """INT4 or NVFP4 by the GPU; None where Nunchaku has no kernels (its own get_precision() says
    "int4" on an H100, where the kernels then fail at run time, so we do not ask it)."""
    if capability in NUNCHAKU_INT4_SM:
        return "int4"
    if capability in NUNCHAKU_FP4_SM:
        return "fp4"
    return None


def nunchaku_problem(hw: Hardware, pkgs: Packages) -> str | None:
    """Why Nunchaku cannot run here, or None if it can."""
    n = pkgs.nunchaku
    if not n.installed:
        return (
            "Nunchaku is not installed. Install the SVDQuant wheel matching your torch and CUDA from "
            f"{NUNCHAKU_RELEASES} (for example nunchaku-1.0.0+torch2.9-cp312-cp312-linux_x86_64.whl); "
            "do not `pip install nunchaku`: that is an unrelated PyPI project"
        )
    if not n.real:
        return (
            f"the installed 'nunchaku' {n.version or '(unknown version)'} at {n.location} is the unrelated PyPI "
            "project of that name, not Nunchaku SVDQuant (it has no compiled nunchaku._C). Run "
            f"`pip uninstall nunchaku`, then install the SVDQuant wheel from {NUNCHAKU_RELEASES}"
        )
    if not hw.cuda:
        return "Nunchaku needs a CUDA GPU; none is in use"
    gpu = hw.gpus[0]
    if nunchaku_precision(gpu.capability) is None:
        return (
            f"Nunchaku has no kernels for {gpu.name} ({gpu.sm}): INT4 runs on sm_75/80/86/89 (Turing, Ampere, "
            "Ada) and NVFP4 on sm_120/121 (Blackwell RTX); Hopper (H100/H200, sm_90), Volta and B200 (sm_100) "
            "have no 4-bit tensor cores it can use"
        )
    return None


def select_backend(requested: str, hw: Hardware, pkgs: Packages, low_memory: bool = False) -> BackendChoice:
    """The backend to load, or BackendUnavailable saying what to install or choose instead.
    low_memory (memory_mode=low): auto prefers a 4-bit backend over fp8, whose 11 GiB transformer
    does not fit the 12 GiB budget."""
    alt = "choose backend torchao-fp8 (sm_89+) or bnb-fp4 (any CUDA GPU), or auto"
    if requested == "nunchaku":
        problem = nunchaku_problem(hw, pkgs)
        if problem:
            raise BackendUnavailable(f"backend nunchaku cannot run here: {problem}. Otherwise {alt}")
        return BackendChoice("nunchaku", "requested", nunchaku_precision(hw.gpus[0].capability))
    if requested in ("bnb-fp4", "bnb-nf4"):
        if not hw.cuda:
            raise BackendUnavailable(f"backend {requested} needs a CUDA GPU (bitsandbytes); on the CPU choose torchao-int8")
        if not pkgs.bitsandbytes:
            raise BackendUnavailable(f"backend {requested} needs bitsandbytes: pip install 'bitsandbytes>=0.45'")
        return BackendChoice(requested, "requested")
    if requested == "torchao-fp8":
        if not hw.cuda or hw.gpus[0].capability < (8, 9):
            where = f"{hw.gpus[0].name} ({hw.gpus[0].sm})" if hw.cuda else "the CPU"
            raise BackendUnavailable(
                f"backend torchao-fp8 needs fp8 tensor cores (sm_89+: Ada, Hopper, Blackwell), not {where}; "
                "choose bnb-fp4 on older GPUs or torchao-int8 on the CPU"
            )
        if not pkgs.torchao:
            raise BackendUnavailable("backend torchao-fp8 needs torchao: pip install 'torchao>=0.12'")
        return BackendChoice("torchao-fp8", "requested")
    if requested == "torchao-int8":
        if not pkgs.torchao:
            raise BackendUnavailable("backend torchao-int8 needs torchao: pip install 'torchao>=0.12'")
        return BackendChoice("torchao-int8", "requested")
    if requested != "auto":
        raise BackendUnavailable(f"unknown FP4 backend {requested!r}")

    # auto: the FP4 service's promise is "faster and lighter than BF16".
    problem = nunchaku_problem(hw, pkgs)
    if problem is None:
        prec = nunchaku_precision(hw.gpus[0].capability)
        return BackendChoice("nunchaku", f"Nunchaku runs on {hw.gpus[0].sm} ({prec})", prec)
    why_not = f"not nunchaku: {problem}"
    if low_memory and hw.cuda and pkgs.bitsandbytes:
        return BackendChoice("bnb-fp4", f"memory_mode=low: a 4-bit transformer (fp8 takes 11 GiB); {why_not}")
    if hw.cuda and hw.gpus[0].capability >= (8, 9) and pkgs.torchao:
        return BackendChoice("torchao-fp8", f"{hw.gpus[0].sm} has fp8 tensor cores; {why_not}")
    if hw.cuda and pkgs.bitsandbytes:
        return BackendChoice("bnb-fp4", f"CUDA GPU {hw.gpus[0].sm} without fp8; {why_not}")
    if pkgs.torchao:
        where = "no CUDA GPU" if not hw.cuda else "bitsandbytes is not installed"
        return BackendChoice("torchao-int8", f"{where}; {why_not}")
    raise BackendUnavailable(f"no quantization backend can run here: install torchao or bitsandbytes ({why_not})")


_PRECISION = {
    "bnb-fp4": "bitsandbytes 4-bit fp4 weights, {dtype} compute",
    "bnb-nf4": "bitsandbytes 4-bit nf4 weights, {dtype} compute",
    "torchao-fp8": "torchao fp8 (e4m3) dynamic activations and weights, per-row scales",
    "torchao-int8": "torchao int8 weight-only, per-row scales, {dtype} compute",
    "nunchaku": "Nunchaku SVDQuant W4A4 {prec}, rank {rank} low-rank branch",
}


# Stored transformer bytes over bf16 bytes (4-bit packs plus scales; 8-bit plus scales).
_SIZE_FACTOR = {"bnb-fp4": 0.27, "bnb-nf4": 0.27, "nunchaku": 0.3, "torchao-fp8": 0.52, "torchao-int8": 0.52}


class NunchakuAdapters(AdapterSet):
    """Nunchaku has one LoRA slot: update_lora_params replaces (it does not stack), so several LoRAs
    are merged with compose_lora first; reset_lora removes it (a strength of 0 would not)."""

    def activate(self, loras: tuple[LoraSpec, ...], pinned=frozenset()) -> None:
        if self.active is not None and self.active == loras:
            return
        transformer = self.pipe.transformer
        if not loras:
            transformer.reset_lora()
        else:
            paths = [str(self.resolver.resolve(s.name).path) for s in loras]
            if len(loras) == 1:
                transformer.update_lora_params(paths[0])
                transformer.set_lora_strength(loras[0].weight)
            else:
                from nunchaku.lora.flux.compose import compose_lora

                transformer.update_lora_params(compose_lora([(p, s.weight) for p, s in zip(paths, loras)]))
                transformer.set_lora_strength(1.0)
        self.active = loras

    def loaded(self) -> list[dict]:
        return [{"name": s.name, "source": "nunchaku"} for s in self.active or ()]

    def drop_all_but(self, keep: set[str], only: str | None = None) -> None:
        if self.active and any(s.name not in keep for s in self.active):
            self.pipe.transformer.reset_lora()
            self.active = ()


class FP4FluxModelManager(FluxModelManager):
    def __init__(self, settings, hardware: Hardware | None = None, packages: Packages | None = None):
        super().__init__(settings, hardware)
        self.packages = packages if packages is not None else Packages.detect()
        self.choice: BackendChoice | None = None

    @property
    def backend(self) -> str:  # type: ignore[override]
        return self.choice.name if self.choice else f"{self.settings.backend} (not selected yet)"

    def _preflight_backend(self) -> None:
        in_use = self.hardware if self.uses_cuda else Hardware()
        self.choice = select_backend(self.settings.backend, in_use, self.packages, self.settings.memory_mode == "low")

    @property
    def transformer_size_factor(self) -> float:  # type: ignore[override]
        return _SIZE_FACTOR.get(self.choice.name, 1.0) if self.choice else 1.0

    @property
    def adapter_class(self):  # type: ignore[override]
        return NunchakuAdapters if self.choice and self.choice.name == "nunchaku" else AdapterSet

    def _auto_compile(self) -> str:
        # fp8 runs its activation quantization as separate kernels unless compiled: 434 ms a step at
        # 1024 eager against 110 ms compiled (H100, docs/PERFORMANCE.md).
        return "regional" if self.choice and self.choice.name == "torchao-fp8" else "none"

    @property
    def fullgraph(self) -> bool:  # type: ignore[override]
        return not (self.choice and self.choice.name.startswith("bnb-"))

    @property
    def low_memory_text_encoders(self) -> str:  # type: ignore[override]
        return "nf4" if self._t5_nf4 else "cpu"

    @property
    def _t5_nf4(self) -> bool:
        return self.settings.memory_mode == "low" and self.uses_cuda and self.packages.bitsandbytes

    def precision(self) -> dict:
        out = super().precision()
        if self._t5_nf4:
            out["text_encoders"] = "CLIP bf16; T5 bitsandbytes nf4"
        if self.choice:
            out["transformer"] = _PRECISION[self.choice.name].format(
                dtype=out["transformer"], prec=self.choice.nunchaku_precision, rank=self.settings.nunchaku_rank
            )
            out["backend_reason"] = self.choice.reason
        return out

    def _pipeline_kwargs(self) -> dict:
        from diffusers import PipelineQuantizationConfig

        name = self.choice.name
        if name.startswith("bnb-"):
            from diffusers import BitsAndBytesConfig

            cfg = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=name.removeprefix("bnb-"),
                bnb_4bit_compute_dtype=self._torch_dtype(),
            )
        else:
            from diffusers import TorchAoConfig
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, PerRow

            # set_inductor_config=False: torchao otherwise switches on inductor's coordinate-descent
            # tuning, which took the first fp8 compile past four minutes (H100); without it, 30 s.
            ao = (Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
                  if name == "torchao-fp8" else Int8WeightOnlyConfig(set_inductor_config=False))
            cfg = TorchAoConfig(ao)
        return {"quantization_config": PipelineQuantizationConfig(quant_mapping={"transformer": cfg, **self._t5_mapping()})}

    def _t5_mapping(self) -> dict:
        """memory_mode=low: T5-XXL in 4-bit nf4, 2.4 GiB instead of 8.9 (73 ms per prompt on an H100)."""
        if not self._t5_nf4:
            return {}
        from transformers import BitsAndBytesConfig as TransformersBnbConfig

        return {"text_encoder_2": TransformersBnbConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                        bnb_4bit_compute_dtype=self._torch_dtype())}

    def _load_pipeline(self, location: str, dtype, device: str):
        if self.choice.name != "nunchaku":
            return super()._load_pipeline(location, dtype, device)
        from diffusers import FluxPipeline
        from nunchaku import NunchakuFluxTransformer2dModel

        filename = f"svdq-{self.choice.nunchaku_precision}_r{self.settings.nunchaku_rank}-flux.1-dev.safetensors"
        repo = self.settings.nunchaku_repo
        ckpt = str(Path(repo) / filename) if Path(repo).is_dir() else f"{repo}/{filename}"
        # Nunchaku has no device_map: its transformer lives on one GPU, the other parts may be balanced.
        transformer = NunchakuFluxTransformer2dModel.from_pretrained(ckpt, offload=False)
        kwargs = {"device_map": "balanced"} if device == "balanced" else {}
        if self._t5_nf4:
            from diffusers import PipelineQuantizationConfig

            kwargs["quantization_config"] = PipelineQuantizationConfig(quant_mapping=self._t5_mapping())
        pipe = FluxPipeline.from_pretrained(location, transformer=transformer, dtype=dtype, **kwargs, **self._hub_kwargs())
        return pipe if device == "balanced" else pipe.to(device)
