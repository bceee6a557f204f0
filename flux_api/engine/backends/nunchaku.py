"""Nunchaku SVDQuant W4A4: INT4 on sm_75/80/86/89, NVFP4 on sm_120/121. Not Hopper, not sm_100.

Never run in this project (no wheel here, no kernels on its H100s): detection, selection and the
refusals are tested with stand-ins; the load and LoRA calls follow Nunchaku's documented API.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import FluxAPIError
from ..adapters import AdapterSet, lora_load_error
from ..lora import LoraSpec
from .base import Backend

NUNCHAKU_RELEASES = "https://github.com/nunchaku-tech/nunchaku/releases"
NUNCHAKU_INT4_SM = {(7, 5), (8, 0), (8, 6), (8, 9)}
NUNCHAKU_FP4_SM = {(12, 0), (12, 1)}


def nunchaku_precision(capability: tuple[int, int]) -> str | None:
    """INT4 or NVFP4 by the GPU; None where Nunchaku has no kernels (its own get_precision() says
    "int4" on an H100, where the kernels then fail at run time, so we do not ask it)."""
    if capability in NUNCHAKU_INT4_SM:
        return "int4"
    if capability in NUNCHAKU_FP4_SM:
        return "fp4"
    return None


class NunchakuAdapters(AdapterSet):
    """Nunchaku has one LoRA slot: update_lora_params replaces (it does not stack), so several LoRAs
    are merged with compose_lora first; reset_lora removes it (a strength of 0 would not). It reads
    LoRA formats of its own, so a file need not hold diffusers' lora_A/lora_down names."""

    lora_keys = False

    def activate(self, loras: tuple[LoraSpec, ...], pinned=frozenset(), checked=None) -> None:
        unchanged = all(self.hashes.get(n) == f.sha256 for n, f in (checked or {}).items())
        if self.active is not None and self.active == loras and unchanged:
            return
        transformer = self.pipe.transformer
        try:
            if not loras:
                transformer.reset_lora()
            else:
                files = self.files_to_load(loras, checked)  # no adapter cache here: every file, re-checked
                self.hashes = {n: f.sha256 for n, f in files.items()}
                paths = [str(files[s.name].path) for s in loras]
                if len(loras) == 1:
                    transformer.update_lora_params(paths[0])
                    transformer.set_lora_strength(loras[0].weight)
                else:
                    from nunchaku.lora.flux.compose import compose_lora

                    transformer.update_lora_params(compose_lora([(p, s.weight) for p, s in zip(paths, loras)]))
                    transformer.set_lora_strength(1.0)
        except FluxAPIError:
            raise
        except Exception as e:  # leave no half-applied LoRA behind
            self.active = None
            transformer.reset_lora()
            raise lora_load_error(e, ", ".join(s.name for s in loras), "nunchaku") from e
        self.active = loras

    def loaded(self) -> list[dict]:
        return [{"name": s.name, "source": "nunchaku"} for s in self.active or ()]

    def drop_all_but(self, keep: set[str], only: str | None = None) -> None:
        if self.active and any(s.name not in keep for s in self.active):
            self.pipe.transformer.reset_lora()
            self.active = ()


class NunchakuBackend(Backend):
    name = "nunchaku"
    size_factor = 0.3
    # Nunchaku converts LoRA formats into its own layers (update_lora_params): diffusers' shape check
    # against a diffusers transformer does not apply to its model.
    checks_lora_fit = False
    diffusers_attention = False  # its transformer runs Nunchaku's own attention kernels
    # Nunchaku's transformer runs its blocks in its own C++ module, which diffusers' hooks cannot wrap
    # (Nunchaku ships a First Block Cache of its own, apply_cache_on_pipe: not wired in, never run here).
    step_cache_problem = "backend nunchaku runs its transformer blocks in its own kernels, which First Block Cache cannot wrap"
    alternatives = "choose backend torchao-fp8 (sm_89+) or bnb-fp4 (any CUDA GPU), or auto"
    precision_text = "Nunchaku SVDQuant W4A4 {b.kind}, rank {b.settings.nunchaku_rank} low-rank branch"

    def __init__(self, settings, hardware, packages, reason="requested"):
        super().__init__(settings, hardware, packages, reason)
        self.kind = nunchaku_precision(hardware.gpus[0].capability) if hardware.cuda else None  # "int4" | "fp4"

    def adapters(self, pipe, resolver, settings, dtype) -> NunchakuAdapters:
        """Nunchaku's own LoRA slot (update_lora_params), not peft's."""
        return NunchakuAdapters(pipe, resolver, settings.lora_cache_size, self.name)

    @classmethod
    def problem(cls, hw, pkgs) -> str | None:
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

    @classmethod
    def chosen_because(cls, hw) -> str:
        return f"Nunchaku runs on {hw.gpus[0].sm} ({nunchaku_precision(hw.gpus[0].capability)})"

    def checkpoint(self) -> str:
        filename = f"svdq-{self.kind}_r{self.settings.nunchaku_rank}-flux.1-dev.safetensors"
        repo = self.settings.nunchaku_repo
        return str(Path(repo) / filename) if Path(repo).is_dir() else f"{repo}/{filename}"

    def load_pipeline(self, spec, device: str):
        from diffusers import FluxPipeline
        from nunchaku import NunchakuFluxTransformer2dModel

        # Nunchaku has no device_map: its transformer lives on one GPU, the other parts may be balanced.
        transformer = NunchakuFluxTransformer2dModel.from_pretrained(self.checkpoint(), offload=False)
        kwargs = {"device_map": "balanced"} if device == "balanced" else {}
        pipe = FluxPipeline.from_pretrained(spec.location, transformer=transformer, **kwargs, **spec.kwargs(with_transformer=False))
        return pipe if device == "balanced" else pipe.to(device)
