"""Reading a FLUX pipeline from its folder or repo onto a device.

`LoadSpec` is everything a load needs, decided before any weight is read (where from, the dtype, the
quantization of each component, whether the text encoders stay on the CPU). `load_diffusers_pipeline`
is the one diffusers path, for one device ("cpu", "cuda:N") or one pipeline spread over the visible
GPUs ("balanced"); a backend with its own model class (Nunchaku) composes its own call from the spec.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "vae")


@dataclass(frozen=True)
class LoadSpec:
    location: str  # a folder or a Hub repo id
    dtype: Any  # torch dtype
    quantization: dict = field(default_factory=dict)  # component name -> its quantization config
    hub: dict = field(default_factory=dict)  # revision and token, for a Hub repo
    text_on_cpu: bool = False  # memory_mode=low: the text encoders never touch the GPU

    def kwargs(self, with_transformer: bool = True) -> dict:
        """from_pretrained's keyword arguments."""
        mapping = {k: v for k, v in self.quantization.items() if with_transformer or k != "transformer"}
        out = dict(dtype=self.dtype, **self.hub)
        if mapping:
            from diffusers import PipelineQuantizationConfig

            out["quantization_config"] = PipelineQuantizationConfig(quant_mapping=mapping)
        return out


def load_diffusers_pipeline(spec: LoadSpec, device: str):
    """One FluxPipeline on `device`: "cpu", "cuda:N", or "balanced" (spread over the visible GPUs)."""
    import torch
    from diffusers import FluxPipeline

    kwargs = spec.kwargs()
    if device == "balanced":
        return FluxPipeline.from_pretrained(spec.location, device_map="balanced", **kwargs)
    if device.startswith("cuda") and spec.text_on_cpu:
        # The peak is what must fit the card: load on the CPU, then move the transformer and the VAE.
        pipe = FluxPipeline.from_pretrained(spec.location, **kwargs)
        pipe.transformer.to(device)
        pipe.vae.to(device)
        return pipe
    if device.startswith("cuda"):
        # diffusers takes device_map="cuda" but not "cuda:N". Under this replica's device context most
        # weights load straight onto its GPU; components that a loader pinned to cuda:0 are moved.
        with torch.cuda.device(device):
            pipe = FluxPipeline.from_pretrained(spec.location, device_map="cuda", **kwargs)
            return all_on(pipe, torch.device(device))
    return FluxPipeline.from_pretrained(spec.location, **kwargs)


def all_on(pipe, device):
    """Move every component of `pipe` onto `device`; refuse with the list if one cannot be moved."""
    wrong = []
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None or next(module.parameters()).device == device:
            continue
        try:
            module.to(device)
        except Exception as e:  # e.g. a bitsandbytes 4-bit model cannot move between GPUs
            log.warning("cannot move %s to %s: %s", name, device, e)
        if next(module.parameters()).device != device:
            wrong.append(f"{name} on {next(module.parameters()).device}")
    if wrong:
        raise ValueError(f"the replica for {device} has components elsewhere ({', '.join(wrong)}); "
                         "use placement=single per process (one service per GPU with -g) for this backend")
    return pipe
