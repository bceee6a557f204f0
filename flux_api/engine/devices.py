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
    mode: str  # "single" | "balanced" | "replicas" | "parallel"
    devices: tuple[str, ...]  # one per pipeline: "cpu", "cuda:N", or "balanced" (one pipeline over all GPUs)
    reason: str = ""
    ranks: int = 1  # parallel: processes running the one pipeline together (rank r on cuda:r, or CPU processes)

    @property
    def device(self) -> str:
        return self.devices[0]

    def rank_device(self, rank: int) -> str:
        """Where rank `rank` of a parallel plan runs."""
        return "cpu" if self.device == "cpu" else f"cuda:{rank}"

    def as_dict(self) -> dict:
        out = {"mode": self.mode, "devices": list(self.devices), "replicas": len(self.devices), "reason": self.reason}
        if self.mode == "parallel":
            out.update(ranks=self.ranks, rank_devices=[self.rank_device(r) for r in range(self.ranks)])
        return out


# Headroom over the weights for activations, the CUDA context and the allocator: 20% plus 3 GiB.
def fits_one_gpu(pipeline_bytes: int, gpu_bytes: int) -> bool:
    return pipeline_bytes * 1.2 + 3 * 2**30 <= gpu_bytes


def plan_placement(device: str, placement: str, hw: Hardware, pipeline_bytes: int | None = None,
                   replicas: int | None = None, goal: str = "throughput", degree: int | None = None,
                   can_split: bool = True) -> PlacementPlan:
    """Where the pipeline(s) go. `device`: auto | cuda | cpu; `placement`: auto | single | balanced |
    replicas | parallel; `goal`: throughput | latency (what auto serves); `degree`: parallel's processes;
    `can_split`: whether the backend's attention can be split between processes (not Nunchaku's).
    Raises ValueError with a message for impossible combinations.

    auto: one device with one GPU; with several, when a copy of the pipeline fits one GPU, one replica
    per GPU (goal throughput: images a minute scale with the replicas) or one pipeline run by every GPU
    together (goal latency: context parallelism, each image sooner); else one pipeline spread with
    device_map="balanced" (which only saves memory: its components still run one after another).
    """
    use_cuda = hw.cuda if device == "auto" else device == "cuda"
    if use_cuda and not hw.cuda:
        raise ValueError("device=cuda was asked for, but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES / -g)")
    n_gpus = len(hw.gpus) if use_cuda else 0
    if replicas is not None and replicas < 1:
        raise ValueError("replicas must be at least 1")
    if placement == "parallel":
        return _parallel_plan(use_cuda, n_gpus, degree, "as configured")
    if not use_cuda:
        if placement == "balanced":
            raise ValueError("placement=balanced needs CUDA GPUs; none is in use")
        if placement == "replicas" and (replicas or 1) > 1:
            return PlacementPlan("replicas", ("cpu",) * replicas, f"{replicas} CPU replicas, as configured")
        return PlacementPlan("single", ("cpu",), "no CUDA GPU in use")
    fits = pipeline_bytes is not None and fits_one_gpu(pipeline_bytes, min(g.total_bytes for g in hw.gpus))
    if placement == "auto" and n_gpus > 1 and fits and goal == "latency" and can_split:
        return _parallel_plan(True, n_gpus, degree, f"placement_goal=latency, and one copy (~{pipeline_bytes / 2**30:.1f} "
                              "GiB of weights) fits one GPU")
    if placement == "replicas" or (placement == "auto" and n_gpus > 1 and fits):
        n = replicas or n_gpus
        if n > n_gpus:
            raise ValueError(f"replicas={n} but only {n_gpus} GPU(s) are visible; one replica per GPU")
        why = "as configured" if placement == "replicas" else (
            f"placement_goal={goal}, and one copy (~{pipeline_bytes / 2**30:.1f} GiB of weights) fits one GPU"
            + ("" if goal == "throughput" else "; the backend's attention cannot be split between processes"))
        return PlacementPlan("replicas", tuple(f"cuda:{i}" for i in range(n)), why)
    if placement == "balanced" or (placement == "auto" and n_gpus > 1):
        why = "as configured" if placement == "balanced" else (
            "the pipeline does not fit one GPU" if pipeline_bytes is not None else "the pipeline size is unknown")
        return PlacementPlan("balanced", ("balanced",), why)
    return PlacementPlan("single", ("cuda:0",), "one GPU visible" if n_gpus == 1 else "as configured")


def _parallel_plan(use_cuda: bool, n_gpus: int, degree: int | None, why: str) -> PlacementPlan:
    """One pipeline run by `degree` processes together: one per GPU (all visible by default), or CPU
    processes over gloo where `degree` is given (tests)."""
    if not use_cuda:
        if degree is None or degree < 2:
            raise ValueError("placement=parallel on the CPU needs parallel_degree of 2 or more (CPU processes)")
        return PlacementPlan("parallel", ("cpu",), f"{degree} CPU processes over gloo, {why}", ranks=degree)
    n = degree or n_gpus
    if n < 2:
        raise ValueError(f"placement=parallel needs 2 or more GPUs; {n_gpus} visible (check -g / CUDA_VISIBLE_DEVICES)")
    if n > n_gpus:
        raise ValueError(f"parallel_degree={n} but only {n_gpus} GPU(s) are visible; one process per GPU")
    return PlacementPlan("parallel", ("cuda:0",), f"{n} GPUs by context parallelism, {why}", ranks=n)


def memory_report(hw: Hardware, only: tuple[int, ...] | None = None) -> list[dict]:
    """Each device's memory (or the GPUs `only`), in MiB. On the CPU: the process's peak resident memory."""
    if not hw.cuda:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return [{"device": "cpu", "process_peak_rss_mib": round(peak_kib / 1024, 1)}]
    import torch

    out = []
    for g in hw.gpus:
        if only is not None and g.index not in only:
            continue
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
                "peak_reserved_mib": round(torch.cuda.max_memory_reserved(g.index) / MiB, 1),
            }
        )
    return out
