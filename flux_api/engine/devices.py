"""GPU discovery, the placement plan, and memory reports.

`Hardware` is a plain description of what is visible, so that the backend selection and the
placement plan can be tested on the CPU with named stand-ins for GPUs that are not here.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

MiB = 2**20


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...] = field(default_factory=tuple)

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)


def detect_hardware() -> Hardware:
    """The GPUs this process can see (CUDA_VISIBLE_DEVICES already applied by the launch script)."""
    import torch

    if not torch.cuda.is_available():
        return Hardware()
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GPU(index=i, name=p.name, capability=(p.major, p.minor), total_bytes=p.total_memory))
    return Hardware(tuple(gpus))


@dataclass(frozen=True)
class PlacementPlan:
    mode: str  # "single" or "balanced"
    device: str  # "cpu", "cuda:0", or "cuda" for balanced
    device_map: str | None  # what from_pretrained gets

    def as_dict(self) -> dict:
        return {"mode": self.mode, "device": self.device}


def plan_placement(device: str, placement: str, hw: Hardware) -> PlacementPlan:
    """Follow the seed: several visible GPUs mean device_map='balanced', one GPU means one device.

    `device` is the setting ("auto" | "cuda" | "cpu"), `placement` likewise ("auto" | "single" |
    "balanced"). Raises ValueError with a message for impossible combinations.
    """
    use_cuda = hw.cuda if device == "auto" else device == "cuda"
    if use_cuda and not hw.cuda:
        raise ValueError("device=cuda was asked for, but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES / -g)")
    if not use_cuda:
        if placement == "balanced":
            raise ValueError("placement=balanced needs CUDA GPUs; none is in use")
        return PlacementPlan("single", "cpu", None)
    if placement == "balanced" or (placement == "auto" and len(hw.gpus) > 1):
        return PlacementPlan("balanced", "cuda", "balanced")
    return PlacementPlan("single", "cuda:0", "cuda")


def memory_report(hw: Hardware) -> list[dict]:
    """Each device's memory, in MiB. On the CPU: the process's peak resident memory."""
    if not hw.cuda:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return [{"device": "cpu", "process_peak_rss_mib": round(peak_kib / 1024, 1)}]
    import torch

    out = []
    for g in hw.gpus:
        free, total = torch.cuda.mem_get_info(g.index)
        out.append(
            {
                "device": f"cuda:{g.index}",
                "name": g.name,
                "capability": g.sm,
                "total_mib": round(total / MiB, 1),
                "free_mib": round(free / MiB, 1),
                "allocated_mib": round(torch.cuda.memory_allocated(g.index) / MiB, 1),
                "peak_allocated_mib": round(torch.cuda.max_memory_allocated(g.index) / MiB, 1),
            }
        )
    return out
