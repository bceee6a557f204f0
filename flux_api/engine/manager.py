"""FluxModelManager: the one owner of a service's FLUX pipelines.

It runs the phases (not loaded, loading, warming up, ready, failed), the load (`load`, as numbered
steps), checks and queues requests, and pins LoRAs. The parts it composes each live in their own
module: the backend (`backends/`), the loader, the speed policy, one replica's generation, the
scheduler, the request checks, the LoRA pinning and the status. A service's subclass (`services.py`)
says only which backends it offers and its defaults. Nothing here knows about HTTP; errors leave as
the domain errors of flux_api.errors.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import wait as wait_futures
from typing import ClassVar

from ..errors import FluxAPIError, InvalidRequest, JobNotFound, ModelNotReady, ShuttingDown
from ..settings import ServiceSettings
from .backends import Backend, Packages, select_backend
from .checks import LoraChecker
from .compiles import CompileWatch
from .devices import Hardware, PlacementPlan, detect_hardware, memory_report, plan_placement
from .lora import LoraFile, LoraResolver, LoraSpec, list_lora_folder
from .loader import LoadSpec
from .pinning import LoraPinning
from .prompts import PromptCache
from .replica import Replica, RunConfig
from .scheduler import Job, Scheduler
from .sources import ModelSource, check_source, estimate_pipeline_bytes, resolve_source
from .speed import SpeedPolicy
from .step_cache import StepCache
from .status import service_status
from .tiny import ensure_tiny_model
from .types import FAILED, LOADING, NOT_LOADED, READY, WARMING_UP, CheckedRequest, GenerationParams

log = logging.getLogger(__name__)


class FluxModelManager:
    """Base manager; `services.py` has the two services' subclasses."""

    # What a service offers: its backends, the order `auto` tries them in (and in memory_mode=low),
    # and where memory_mode=low keeps the text encoders ("cpu", or "nf4": T5 in 4-bit on the GPU).
    offered_backends: ClassVar[tuple[str, ...]] = ("diffusers",)
    auto_order: ClassVar[tuple[str, ...]] = ("diffusers",)
    low_memory_order: ClassVar[tuple[str, ...] | None] = None
    low_memory_note: ClassVar[str | None] = None
    low_memory_text: ClassVar[str] = "cpu"

    def __init__(self, settings: ServiceSettings, hardware: Hardware | None = None, packages: Packages | None = None):
        self.settings = settings
        self.hardware = hardware if hardware is not None else detect_hardware()
        self.packages = packages if packages is not None else Packages.detect()
        self.source: ModelSource | None = None
        self.backend: Backend | None = None
        self.plan: PlacementPlan | None = None
        self.speed: SpeedPolicy | None = None
        self.replicas: list[Replica] = []
        self.scheduler: Scheduler | None = None
        self.phase = NOT_LOADED
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.lora_files = LoraResolver.from_settings(settings)
        self.lora_checks = LoraChecker(self.lora_files)
        self.pinning = LoraPinning()
        self.job_hooks: list = []  # called with each finished Job (metrics)
        self.compiles = CompileWatch()  # torch.compile's graphs, counted from the end of the warm-up
        self._load_lock = threading.Lock()  # held for a whole load: one copy, ever
        self._state_lock = threading.Lock()  # held briefly: never blocks the event loop
        self._loading = False
        self.shutting_down = False  # set once, by begin_shutdown(): no new work from then on

    # ------------------------------------------------------------------ what it is

    @property
    def requested_backend(self) -> str:
        """The backend setting; a service that offers one backend (BF16) has none: auto picks that one."""
        return getattr(self.settings, "backend", "auto")

    @property
    def backend_name(self) -> str:
        if self.backend is not None:
            return self.backend.name
        if len(self.offered_backends) == 1:  # before the pre-flight too: there is nothing to choose
            return self.offered_backends[0]
        return f"{self.requested_backend} (not selected yet)"

    @property
    def pipe(self):
        """The first replica's pipeline (the only one outside replicas mode)."""
        return self.replicas[0].pipe if self.replicas else None

    @property
    def ready(self) -> bool:
        return self.phase == READY

    @property
    def uses_cuda(self) -> bool:
        return self.hardware.cuda if self.settings.device == "auto" else self.settings.device == "cuda"

    @classmethod
    def choose_backend(cls, requested: str, hw: Hardware, pkgs: Packages, low_memory: bool = False,
                       settings: ServiceSettings | None = None) -> Backend:
        """The backend this service loads on `hw` with `pkgs` (BackendUnavailable when none can run).
        memory_mode=low tries the service's low-memory order, and says so where that changed the choice."""
        default = select_backend(requested, cls.offered_backends, cls.auto_order, settings, hw, pkgs)
        if not (low_memory and cls.low_memory_order):
            return default
        low = select_backend(requested, cls.offered_backends, cls.low_memory_order, settings, hw, pkgs,
                             cls.low_memory_note)
        return default if low.name == default.name else low

    # ------------------------------------------------------------------ lifecycle

    def preflight(self) -> None:
        """Everything decided before a weight is read; raises to stop start-up."""
        s = self.settings
        # 1. Where the model comes from, and whether the Hub will give it.
        self.source = resolve_source(s.model, s.cache_dir, s.model_revision)
        check_source(self.source, s.token, s.hub_endpoint)
        # 2. The backend: the one asked for if it can run here, or auto's first that can.
        in_use = self.hardware if self.uses_cuda else Hardware()
        self.backend = self.choose_backend(self.requested_backend, in_use, self.packages,
                                           s.memory_mode == "low", s)
        # 3. Where the pipelines go: the weights' size (as the backend stores them) decides it.
        size = estimate_pipeline_bytes(self.source, self.backend.size_factor, s.hub_endpoint) if self.uses_cuda else None
        self.plan = plan_placement(s.device, s.placement, self.hardware, size, s.replicas, s.placement_goal,
                                   s.parallel_degree, can_split=self.backend.diffusers_attention)
        # 4. Compile, CUDA graphs, memory mode.
        self.speed = SpeedPolicy(s, self.backend, self.plan, self.low_memory_text, in_use)
        self._fit_presets()
        if self.plan.mode == "parallel":  # what every request splits between the ranks must divide
            from .parallel import check_parallel_settings

            check_parallel_settings(self.plan.ranks, s.max_sequence_length,
                                    self.speed.warmup_sizes(self.speed.graphs_off_reason is None))

    def start_background_load(self) -> bool:
        """Start loading in a thread unless loaded or loading. Returns whether a load was started."""
        with self._state_lock:
            if self.replicas or self._loading:
                return False
            self._loading = True
            self.phase, self.error = LOADING, None
        threading.Thread(target=self._load_in_background, name="flux-load", daemon=True).start()
        return True

    def _load_in_background(self) -> None:
        try:
            self.load()
        except Exception:  # already recorded in self.error and logged in load()
            pass
        finally:
            self._loading = False

    def load(self) -> None:
        """Load the pipeline(s) (blocking). Idempotent: never loads a second copy."""
        with self._load_lock:
            if self.replicas:
                return
            t0 = time.perf_counter()
            replicas: list[Replica] = []
            try:
                self.phase, self.error = LOADING, None
                # 1. The decisions, if start-up did not make them.
                if self.speed is None:
                    self.preflight()
                # 2. What to read: the tiny model is built once, on first use.
                spec = self._load_spec()
                # 3. One pipeline per device, prepared (low memory, compile), with adapters and graphs.
                if self.plan.mode == "parallel":
                    replicas.append(self._build_parallel(spec))
                else:
                    for i, device in enumerate(self.plan.devices):
                        replicas.append(self._build_replica(i, device, spec))
                # 4. Warm-up: first-call costs (compile, graph capture) before /health says ready, for
                # the base model and for each variant a LoRA request runs (the slot switched on).
                if self.settings.warmup:
                    self.phase = WARMING_UP
                    for r in replicas:
                        r.on_thread_start()
                        for px in self.speed.warmup_sizes(r.graphs is not None):
                            r.warm_up(px)
                for r in replicas:
                    r.mark_serving()
                self.compiles.start()  # from here on, a compile would be on a live request
                # 5. The workers: one thread per replica behind one queue.
                self.replicas = replicas
                self.scheduler = Scheduler(replicas, self.settings.queue_size, self.settings.jobs_keep,
                                           self.settings.jobs_keep_s, on_finish=self._job_finished)
                if self.shutting_down:  # the signal came while loading: this scheduler takes no work either
                    self.scheduler.drain()
                self.load_seconds = round(time.perf_counter() - t0, 2)
                self.phase = READY
                log.info("model ready in %.1f s: %s, backend %s, %s", self.load_seconds, self.source.spec,
                         self.backend.name, self.plan.as_dict())
            except Exception as e:
                for r in replicas:
                    r.close()
                replicas.clear()
                self.replicas = []
                self.free_memory()
                self.phase = FAILED
                self.error = e.message if isinstance(e, FluxAPIError) else f"{type(e).__name__}: {e}"
                log.error("model load failed: %s", self.error)
                raise

    def _load_spec(self) -> LoadSpec:
        location = self.source.location
        if self.source.kind == "tiny":
            location = str(ensure_tiny_model(self.settings.cache_dir))
        hub = {"revision": self.source.revision, "token": self.settings.token} if self.source.kind == "hub" else {}
        dtype = self.torch_dtype()
        return LoadSpec(location, dtype, self.speed.quantization(dtype), hub, self.speed.text_on_cpu)

    def _build_replica(self, index: int, device: str, spec: LoadSpec, kind: type[Replica] = Replica, **extra) -> Replica:
        pipe = self.backend.load_pipeline(spec, device)
        self.speed.restructure(pipe.transformer)  # before the LoRA slot, which wraps the layers it makes
        # The adapters before compiling: the LoRA slot is part of what gets compiled (lora_slot.py).
        adapters = self.backend.adapters(pipe, self.lora_files, self.settings, spec.dtype)
        self.speed.prepare(pipe, self.free_memory)
        step_cache = StepCache(pipe.transformer) if self.step_cache_problem() is None else None
        graphs = None
        if self.speed.graphs_off_reason is None:
            from .graphs import GraphedForward

            def variant():  # a step of First Block Cache cannot be one graph: the ordinary forward runs it
                return None if step_cache is not None and step_cache.active else adapters.graph_variant()

            graphs = GraphedForward(pipe.transformer, variant).install()
        # Outermost, around the graph's forward: each pass's modulations copied in before the graph replays.
        modulation = self.speed.modulation_table(pipe)
        config = RunConfig(self.backend.name, self.source.spec, self.settings.max_sequence_length,
                           self.speed.text_on_cpu, self.free_memory)
        return kind(index, device, pipe, adapters, config, graphs, prompts=PromptCache(self.settings.prompt_cache_size),
                    step_cache=step_cache, modulation=modulation, **extra)

    def _build_parallel(self, spec: LoadSpec):
        """placement=parallel: the other ranks' processes started, this process joined as rank 0, and rank 0's
        replica built beside theirs (parallel.py)."""
        from .parallel import ParallelReplica, share_cpu_threads

        if self.plan.device == "cpu":
            share_cpu_threads(self.plan.ranks)
        group = self._start_group()
        try:
            replica = self._build_replica(0, self.plan.device, spec, ParallelReplica, group=group,
                                          new_group=self._start_group, reloading=self.compiles.reloading,
                                          warm_sizes=tuple(self.speed.warmup_sizes(self.speed.graphs_off_reason is None)))
            group.collect()  # every rank built and ready
        except BaseException as e:
            self._close_failed_group(group, e)
            raise
        return replica

    def _start_group(self):
        """The other ranks' processes, and this process joined to them as rank 0 (a new group each time)."""
        from .parallel import ParallelGroup

        group = ParallelGroup(type(self), self.settings, self.plan.ranks, self.plan.device == "cpu")
        try:
            group.start()
        except BaseException as e:
            self._close_failed_group(group, e)
            raise
        return group

    @staticmethod
    def _close_failed_group(group, error: BaseException) -> None:
        """Close a group that failed to form, raising what its ranks said, if they said anything."""
        from .parallel import GroupFailed

        said = [str(error)] if isinstance(error, GroupFailed) else group.errors()
        group.close(failed=True)
        if said:
            raise RuntimeError(f"placement=parallel could not start: {'; '.join(said)}") from None

    def begin_shutdown(self) -> None:
        """The moment a shutdown begins (SIGTERM): take no more work and cancel what is queued, whose
        waiters answer 503 shutting_down at once; running work goes on until `unload`. Thread-safe,
        quick, idempotent."""
        self.shutting_down = True
        scheduler = self.scheduler  # one read: unload may clear it meanwhile
        if scheduler is not None:
            scheduler.drain()

    def unload(self, timeout: float = 60.0) -> None:
        """Cancel queued work, let running work finish (or cancel it after `timeout`), free the memory."""
        if self.scheduler is not None:
            self.scheduler.shutdown(timeout)
        with self._load_lock:
            self.scheduler = None
            for r in self.replicas:
                r.close()
            self.replicas = []
            self.free_memory()
            if self.phase != FAILED:
                self.phase = NOT_LOADED

    def memory_report(self) -> list[dict]:
        """The memory of the devices this process uses (placement=parallel: rank 0's GPU; asking another
        GPU would open a CUDA context on it)."""
        parallel_gpu = self.plan is not None and self.plan.mode == "parallel" and self.plan.device != "cpu"
        return memory_report(self.hardware, (0,) if parallel_gpu else None)

    def free_memory(self) -> None:
        gc.collect()
        if self.hardware.cuda:
            import torch

            torch.cuda.empty_cache()

    def torch_dtype(self):
        import torch

        name = self.settings.dtype
        if name == "auto":
            name = "bfloat16" if self.plan.device != "cpu" else "float32"
        return getattr(torch, name)

    def _job_finished(self, job: Job) -> None:
        for hook in self.job_hooks:
            hook(job)

    # ------------------------------------------------------------------ requests

    def require_ready(self) -> None:
        if self.shutting_down:
            raise ShuttingDown()
        if not self.ready or self.scheduler is None:
            raise ModelNotReady(self.phase, self._not_ready_message())
        if not self.scheduler.alive:
            raise ModelNotReady(self.phase, "no replica can generate: " + "; ".join(self.scheduler.dead.values()))

    def _not_ready_message(self) -> str:
        if self.phase == FAILED:
            return f"the model failed to load: {self.error}. POST /load-model to retry"
        if self.phase == NOT_LOADED:
            return "the model is not loaded: POST /load-model"
        return f"the model is still loading (phase: {self.phase}); retry when /health answers 200"

    def check(self, params: GenerationParams) -> CheckedRequest:
        """Everything that needs no GPU, in the caller's thread (blocking: a Hub LoRA may download).
        Raises the domain error of the first problem; nothing is queued."""
        self.require_ready()
        if params.first_block_cache is not None:
            why = self.step_cache_problem()
            if why:
                raise InvalidRequest(f"first_block_cache is not available here: {why}", field="first_block_cache")
        if self.plan.mode == "parallel":
            from .parallel import uneven_split

            why = uneven_split(params.width, params.height, self.plan.ranks)
            if why:
                raise InvalidRequest(why)
        loras = params.loras or ()
        if not loras:
            return CheckedRequest(params)
        return CheckedRequest(params, self.check_loras(loras))

    def _fit_presets(self) -> None:
        """A preset's first_block_cache where this service cannot run it (step_cache_problem) is left out of
        the preset, not refused: a client who only asked for `fast` (or OpenAI's `quality: low`) gets its
        steps, and /presets shows what applies. A first_block_cache the request gives itself is still a 422.
        The presets dict is the one the request model reads, changed in place."""
        why = self.step_cache_problem()
        if why is None:
            return
        for name, preset in list(self.settings.presets.items()):
            if preset.first_block_cache is not None:
                self.settings.presets[name] = preset.model_copy(update={"first_block_cache": None})
                log.warning("preset %s: first_block_cache left out (%s)", name, why)

    def step_cache_problem(self) -> str | None:
        """Why a request cannot use First Block Cache on this service, or None."""
        if self.backend.step_cache_problem is not None:
            return self.backend.step_cache_problem
        if self.plan.mode == "parallel":
            # each rank holds a part of the image, so their skip decisions could differ, and a rank that
            # skips would leave the others waiting in attention's all-to-all
            return "placement=parallel splits each step between processes, which would decide apart"
        if self.plan.mode == "balanced":
            # the cache keeps the first block's output (first GPU) and subtracts it from the last block's
            # (last GPU): tensors on two devices
            return "placement=balanced spreads the blocks over GPUs, and the cache subtracts across them"
        return None

    def check_loras(self, loras: tuple[LoraSpec, ...]) -> dict[str, LoraFile]:
        """Each LoRA found, read, fitting this model and what its adapters can hold (alone and together),
        and hashed: every LoRA check that needs no GPU, in the caller's thread. Raises the domain error."""
        replicas = self.replicas  # one read: an unload may empty the list meanwhile
        if not replicas:
            raise ModelNotReady(self.phase, self._not_ready_message())
        adapters = replicas[0].adapters
        files = self.lora_checks.check(loras, adapters.fit_check if self.backend.checks_lora_fit else None)
        adapters.check_together(loras, files)
        return files

    def submit(self, request: CheckedRequest, deadline: float | None = None, request_id: str | None = None) -> Job:
        """Queue a checked generation. Raises ModelNotReady or QueueFull at once; never blocks."""
        self.require_ready()

        def run(replica: Replica, job: Job):
            # The pinned set is read when the job runs: a request queued before /apply-lora gets it.
            pinned = self.pinning.pinned
            loras = pinned if request.params.loras is None else request.params.loras
            return replica.generate(job, request.params, loras, {s.name for s in pinned}, request.files)

        return self.scheduler.submit(run, total_steps=request.params.total_steps, deadline=deadline,
                                     request_id=request_id, num_images=request.params.num_images)

    def jobs(self, limit: int, states: frozenset[str] | None = None) -> list[Job]:
        return self.scheduler.recent(limit, states) if self.scheduler else []

    def job(self, job_id: str) -> Job:
        if self.scheduler is None:
            raise JobNotFound(f"no job {job_id}: the service has not started")
        return self.scheduler.find(job_id, self.settings.jobs_keep_s, self.settings.jobs_keep)

    def on_every_replica(self, fn) -> list:
        """Run fn(replica) on each replica between generations; block until all are done."""
        self.require_ready()
        futures = self.scheduler.broadcast(fn)
        wait_futures(futures)
        return [f.result() for f in futures]  # re-raises the first failure

    # ------------------------------------------------------------------ LoRA pinning (blocking)

    def apply_loras(self, loras: tuple[LoraSpec, ...]) -> dict:
        """Pin a LoRA set for requests that name none, on every replica: all of it, or nothing changes."""
        self.require_ready()
        files = self.check_loras(loras)
        self.pinning.apply(loras, files, self.on_every_replica)
        return self.lora_status()

    def remove_loras(self, name: str | None = None) -> dict:
        """Unpin one LoRA, or all; their adapters are deleted from every replica."""
        adapters = self._first_adapters()
        loaded = {e["name"] for e in adapters.loaded()} if adapters else set()
        self.pinning.remove(name, loaded, self.on_every_replica)
        return self.lora_status()

    def lora_status(self) -> dict:
        adapters = self._first_adapters()
        return {
            "pinned": [s.as_dict() for s in self.pinning.pinned],
            "loaded": adapters.loaded() if adapters else [],
            "cache_size": self.settings.lora_cache_size,
            "lora_dir": str(self.settings.lora_dir),
            "slot": adapters.slot_status() if adapters else None,
        }

    def _first_adapters(self):
        """The first replica's AdapterSet (every replica holds the same LoRAs), or None when unloaded."""
        replicas = self.replicas  # one read: an unload may empty the list meanwhile
        return replicas[0].adapters if replicas else None

    def list_loras(self) -> dict:
        return {"available": list_lora_folder(self.settings.lora_dir), **self.lora_status()}

    def status(self) -> dict:
        return service_status(self)
