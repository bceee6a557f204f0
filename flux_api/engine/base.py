"""FluxModelManager: the one place that owns the FLUX pipelines of a service.

Load and unload, placement (one device, balanced, or one replica per GPU), generation, LoRA state
and status live here, once, for both services. Subclasses only say how the transformer is stored
(bf16, or one of the 4-bit/8-bit backends). Nothing here knows about HTTP; errors leave as the
domain errors of flux_api.errors.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from ..errors import FluxAPIError, GenerationFailed, GPUOutOfMemory, InvalidLora, InvalidRequest, ModelNotReady
from ..settings import ServiceSettings
from .adapters import AdapterSet
from .devices import Hardware, PlacementPlan, detect_hardware, memory_report, plan_placement
from .lora import LoraResolver, LoraSpec, list_lora_folder
from .scheduler import Job, Scheduler
from .sources import ModelSource, check_source, estimate_pipeline_bytes, resolve_source
from .tiny import ensure_tiny_model

log = logging.getLogger(__name__)

NOT_LOADED, LOADING, WARMING_UP, READY, FAILED = "not_loaded", "loading", "warming_up", "ready", "failed"


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    seed: int
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str | None = None
    true_cfg_scale: float | None = None
    loras: tuple[LoraSpec, ...] | None = None  # None: the pinned set


@dataclass
class GenerationResult:
    image: Any  # PIL.Image
    params: GenerationParams
    loras: tuple[LoraSpec, ...]
    truncation: dict
    queue_ms: float
    lora_ms: float
    inference_ms: float
    backend: str
    model: str


@dataclass
class Replica:
    """One pipeline on one device (or one balanced pipeline over several), with its own adapters."""

    index: int
    device: str
    pipe: Any
    adapters: AdapterSet
    graphs: Any = None  # GraphedForward, where CUDA graphs are on
    stats: dict = field(default_factory=lambda: {"images": 0})

    def on_thread_start(self) -> None:
        if self.device.startswith("cuda:"):
            import torch

            torch.cuda.set_device(int(self.device.split(":")[1]))  # bnb and friends use the current device


def _all_on(pipe, device):
    """Move every component of `pipe` onto `device`; refuse with the list if one cannot be moved."""
    wrong = []
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
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


class FluxModelManager:
    """Base manager. Subclasses override `backend`, `_pipeline_kwargs`, `precision`, and may override
    `_load_pipeline` / `adapter_class` where a backend does things its own way."""

    backend = "diffusers"
    adapter_class = AdapterSet
    transformer_size_factor = 1.0  # bytes of the stored transformer over its bf16 bytes

    def __init__(self, settings: ServiceSettings, hardware: Hardware | None = None):
        self.settings = settings
        self.hardware = hardware if hardware is not None else detect_hardware()
        self.replicas: list[Replica] = []
        self.scheduler: Scheduler | None = None
        self.source: ModelSource | None = None
        self.plan: PlacementPlan | None = None
        self.phase = NOT_LOADED
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.pinned: tuple[LoraSpec, ...] = ()
        self.lora_files = LoraResolver.from_settings(settings)
        self.job_hooks: list = []  # called with each finished Job (metrics)
        self._load_lock = threading.Lock()  # held for a whole load: one copy, ever
        self._state_lock = threading.Lock()  # held briefly: never blocks the event loop
        self._loading = False

    @property
    def pipe(self):
        """The first replica's pipeline (the only one outside replicas mode)."""
        return self.replicas[0].pipe if self.replicas else None

    @property
    def ready(self) -> bool:
        return self.phase == READY

    # ------------------------------------------------------------------ lifecycle

    def preflight(self) -> None:
        """Cheap checks that must pass before the service starts (raise = start-up stops)."""
        self.source = resolve_source(self.settings.model, self.settings.cache_dir, self.settings.model_revision)
        check_source(self.source, self.settings.token)
        self._preflight_backend()
        size = estimate_pipeline_bytes(self.source, self.transformer_size_factor) if self.uses_cuda else None
        self.plan = plan_placement(self.settings.device, self.settings.placement, self.hardware, size,
                                   self.settings.replicas)

    def _preflight_backend(self) -> None:
        """Subclass hook: refuse a backend that cannot run here, before any weights are read."""

    @property
    def uses_cuda(self) -> bool:
        return self.hardware.cuda if self.settings.device == "auto" else self.settings.device == "cuda"

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
            replicas = []
            try:
                self.phase, self.error = LOADING, None
                if self.source is None or self.plan is None:
                    self.preflight()
                location = self.source.location
                if self.source.kind == "tiny":
                    location = str(ensure_tiny_model(self.settings.cache_dir))
                for i, device in enumerate(self.plan.devices):
                    pipe = self._load_pipeline(location, self._torch_dtype(), device)
                    pipe.set_progress_bar_config(disable=True)
                    if self.settings.memory_mode == "low":
                        self._low_memory(pipe)
                    if self.compile_mode == "regional":
                        self._compile(pipe)
                    adapters = self.adapter_class(pipe, self.lora_files, self.settings.lora_cache_size, self.backend)
                    graphs = None
                    if self.graphs_off_reason is None:
                        from .graphs import GraphedForward

                        graphs = GraphedForward(pipe.transformer).install()
                        adapters.on_change = graphs.clear  # a new or deleted adapter changes what a graph replays
                    replicas.append(Replica(i, device, pipe, adapters, graphs))
                if self.settings.warmup:
                    self.phase = WARMING_UP
                    for r in replicas:
                        r.on_thread_start()
                        self._warmup(r)
                self.replicas = replicas
                self.scheduler = Scheduler(replicas, self.settings.queue_size, self.settings.jobs_keep,
                                           self.settings.jobs_keep_s, on_finish=self._job_finished)
                self.load_seconds = round(time.perf_counter() - t0, 2)
                self.phase = READY
                log.info("model ready in %.1f s: %s, backend %s, %s", self.load_seconds, self.source.spec,
                         self.backend, self.plan.as_dict())
            except Exception as e:
                replicas.clear()
                self.replicas = []
                self._free_memory()
                self.phase = FAILED
                self.error = e.message if isinstance(e, FluxAPIError) else f"{type(e).__name__}: {e}"
                log.error("model load failed: %s", self.error)
                raise

    def unload(self, timeout: float = 60.0) -> None:
        """Cancel queued work, let running work finish (or cancel it after `timeout`), free the memory."""
        if self.scheduler is not None:
            self.scheduler.shutdown(timeout)
        with self._load_lock:
            self.scheduler = None
            self.replicas = []
            self._free_memory()
            if self.phase != FAILED:
                self.phase = NOT_LOADED

    def _free_memory(self) -> None:
        gc.collect()
        if self.hardware.cuda:
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ speed and memory

    def _auto_compile(self) -> str:
        """What compile=auto means for this backend on a GPU (subclass hook)."""
        return "none"

    @property
    def compile_mode(self) -> str:
        if self.settings.compile != "auto":
            return self.settings.compile
        return self._auto_compile() if self.plan is not None and self.plan.device != "cpu" else "none"

    @property
    def graphs_off_reason(self) -> str | None:
        """Why CUDA graphs are off, or None when they are on."""
        if not self.settings.cuda_graphs:
            return "cuda_graphs=false"
        if self.plan is None or self.plan.device == "cpu":
            return "no CUDA device"
        if self.plan.mode == "balanced":
            return "placement balanced (one model over several GPUs)"
        if self.settings.memory_mode == "low":
            return "memory_mode=low (a graph keeps its own activation memory)"
        return None

    # Where memory_mode=low puts the text encoders: "cpu" (run there) or "nf4" (4-bit on the GPU).
    low_memory_text_encoders = "cpu"

    def _low_memory(self, pipe) -> None:
        """memory_mode=low after loading: text encoders on the CPU (unless a subclass quantized them at
        load), and a tiled VAE decode, whose peak no longer grows with the image."""
        if self.low_memory_text_encoders == "cpu":
            pipe.text_encoder.to("cpu")
            pipe.text_encoder_2.to("cpu")
        self._tile_vae(pipe.vae)
        self._free_memory()

    @staticmethod
    def _tile_vae(vae) -> None:
        # Tiles of 512 px: images up to 512 decode in one piece as before; larger ones in overlapping
        # tiles. (diffusers' own tile size is the config's sample_size: 1024 for FLUX, which would
        # never tile an allowed size.)
        vae.enable_tiling()
        vae.tile_sample_min_size = 512
        vae.tile_latent_min_size = 512 // 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def text_on_cpu(self) -> bool:
        """memory_mode=low with the text encoders on the CPU: prompts are encoded there."""
        return self.settings.memory_mode == "low" and self.low_memory_text_encoders == "cpu"

    def memory_status(self) -> dict:
        out = {"mode": self.settings.memory_mode}
        if self.settings.memory_mode == "low":
            out["text_encoders"] = {"cpu": "on the CPU, run there (about 2 s per prompt on 16 cores)",
                                    "nf4": "T5 in bitsandbytes nf4 on the GPU, CLIP in bf16"}[self.low_memory_text_encoders]
            out["vae"] = "tiled decode"
        return out

    def _compile(self, pipe) -> None:
        """Regional compile: the 57 transformer blocks share two graphs, so compiling them takes
        seconds instead of minutes. Inductor's cache lives beside the tiny model, across restarts."""
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.settings.cache_dir / "inductor"))
        pipe.transformer.compile_repeated_blocks(fullgraph=self.fullgraph)

    fullgraph = True  # bitsandbytes' 4-bit layers break the graph: its subclass says False

    def _warmup(self, replica: Replica) -> None:
        # Runs at each warm-up size pay the first-call costs (kernel selection, allocator growth,
        # tokenizer caches, compiling, capturing a CUDA graph) before /health says ready, instead of
        # on a user's request. Compiled, after two sizes torch marks the shapes dynamic: later sizes
        # need no long recompile.
        gpu = self.plan.device != "cpu"
        sizes = self.settings.warmup_sizes if gpu and (self.compile_mode != "none" or replica.graphs) else [256]
        for px in sizes:
            self._run_pipeline(replica, GenerationParams(prompt="warm-up", seed=0, width=px, height=px,
                                                         num_inference_steps=2, guidance_scale=3.5))

    def _job_finished(self, job: Job) -> None:
        for hook in self.job_hooks:
            hook(job)

    # ------------------------------------------------------------------ subclass hooks

    def _torch_dtype(self):
        import torch

        name = self.settings.dtype
        if name == "auto":
            name = "bfloat16" if self.plan.device != "cpu" else "float32"
        return getattr(torch, name)

    def _pipeline_kwargs(self) -> dict:
        """Extra from_pretrained arguments (a quantization config, for instance)."""
        return {}

    def _hub_kwargs(self) -> dict:
        if self.source.kind != "hub":
            return {}
        return {"revision": self.source.revision, "token": self.settings.token}

    def _load_pipeline(self, location: str, dtype, device: str):
        """One pipeline on `device`: "cpu", "cuda:N", or "balanced" (spread over the visible GPUs)."""
        import torch
        from diffusers import FluxPipeline

        kwargs = dict(dtype=dtype, **self._pipeline_kwargs(), **self._hub_kwargs())
        if device == "balanced":
            return FluxPipeline.from_pretrained(location, device_map="balanced", **kwargs)
        if device.startswith("cuda") and self.text_on_cpu:
            # memory_mode=low: the text encoders never touch the GPU, not even while loading, since the
            # peak is what must fit the card. Load on the CPU, then move the transformer and the VAE.
            pipe = FluxPipeline.from_pretrained(location, **kwargs)
            pipe.transformer.to(device)
            pipe.vae.to(device)
            return pipe
        if device.startswith("cuda"):
            # diffusers takes device_map="cuda" but not "cuda:N". Under this replica's device context most
            # weights load straight onto its GPU; components that a loader pinned to cuda:0 are moved.
            with torch.cuda.device(device):
                pipe = FluxPipeline.from_pretrained(location, device_map="cuda", **kwargs)
                return _all_on(pipe, torch.device(device))
        return FluxPipeline.from_pretrained(location, **kwargs)

    def precision(self) -> dict:
        dtype = str(self._torch_dtype()).removeprefix("torch.") if self.plan else None
        return {"transformer": dtype, "text_encoders": dtype, "vae": dtype}

    # ------------------------------------------------------------------ submitting work

    def require_ready(self) -> None:
        if not self.ready or self.scheduler is None:
            raise ModelNotReady(self.phase, self._not_ready_message())

    def _not_ready_message(self) -> str:
        if self.phase == FAILED:
            return f"the model failed to load: {self.error}. POST /load-model to retry"
        if self.phase == NOT_LOADED:
            return "the model is not loaded: POST /load-model"
        return f"the model is still loading (phase: {self.phase}); retry when /health answers 200"

    def submit_generation(self, params: GenerationParams, deadline: float | None = None,
                          request_id: str | None = None) -> Job:
        """Queue a generation. Raises ModelNotReady or QueueFull at once; never blocks."""
        self.require_ready()
        return self.scheduler.submit(lambda replica, job: self.generate(replica, job, params),
                                     total_steps=params.num_inference_steps, deadline=deadline,
                                     request_id=request_id)

    def on_every_replica(self, fn) -> list:
        """Run fn(replica) on each replica between generations; block until all are done."""
        self.require_ready()
        futures = self.scheduler.broadcast(fn)
        wait_futures(futures)
        return [f.result() for f in futures]  # re-raises the first failure

    # ------------------------------------------------------------------ generation (worker thread)

    def generate(self, replica: Replica, job: Job, params: GenerationParams) -> GenerationResult:
        started = time.perf_counter()
        loras = self.pinned if params.loras is None else params.loras
        self._refuse_lora_if_compiled(loras)
        replica.adapters.activate(loras, {s.name for s in self.pinned})
        if replica.graphs is not None:
            replica.graphs.bypass = bool(loras)  # a graph replays the base model only
        lora_ms = round((time.perf_counter() - started) * 1e3, 2)
        truncation = self._truncation(replica.pipe, params.prompt)
        image = self._run_pipeline(replica, params, job)
        replica.stats["images"] += 1
        return GenerationResult(
            image=image, params=params, loras=loras, truncation=truncation,
            queue_ms=round((job.started - job.created) * 1e3, 2), lora_ms=lora_ms,
            inference_ms=round((time.perf_counter() - started) * 1e3 - lora_ms, 2),
            backend=self.backend, model=self.source.spec,
        )

    def _run_pipeline(self, replica: Replica, params: GenerationParams, job: Job | None = None):
        import torch

        # A per-request CPU generator: the same seed gives the same noise whatever the device, and
        # no request ever touches the global RNG.
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        kwargs = {"prompt": params.prompt}
        if params.negative_prompt:
            kwargs.update(negative_prompt=params.negative_prompt, true_cfg_scale=params.true_cfg_scale)
        if job is not None:
            def on_step(pipe, i, t, callback_kwargs):
                job.on_step(i + 1)  # raises to stop at this step when cancelled or timed out
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step
        try:
            if self.text_on_cpu:
                kwargs = self._encode_on_cpu(replica.pipe, kwargs)
            out = replica.pipe(
                width=params.width, height=params.height,
                num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
                generator=generator, max_sequence_length=self.settings.max_sequence_length,
                output_type="pil", **kwargs,
            )
        except torch.cuda.OutOfMemoryError as e:
            del e  # drop the traceback's references to the step's tensors before freeing
            self._free_memory()
            raise GPUOutOfMemory(
                f"the GPU ran out of memory at {params.width}x{params.height}; the memory was freed, "
                "retry smaller or later"
            ) from None
        except FluxAPIError:
            raise
        except Exception as e:
            log.exception("generation failed")
            raise GenerationFailed(f"generation failed: {type(e).__name__}: {e}") from e
        return out.images[0]

    def _encode_on_cpu(self, pipe, kwargs: dict) -> dict:
        """Text encoders on the CPU: encode there, hand the pipeline embeddings on its own device."""
        import torch

        device, n = pipe._execution_device, self.settings.max_sequence_length
        out = {k: v for k, v in kwargs.items() if k not in ("prompt", "negative_prompt")}
        with torch.no_grad():
            for prefix, key in (("", "prompt"), ("negative_", "negative_prompt")):
                if kwargs.get(key):
                    embeds, pooled, _ = pipe.encode_prompt(kwargs[key], None, device="cpu", max_sequence_length=n)
                    out[f"{prefix}prompt_embeds"] = embeds.to(device)
                    out[f"{prefix}pooled_prompt_embeds"] = pooled.to(device)
        return out

    def _truncation(self, pipe, prompt: str) -> dict:
        """Token counts of the prompt against CLIP's 77 and T5's budget: what the model really sees."""
        clip_limit = pipe.tokenizer.model_max_length
        t5_limit = self.settings.max_sequence_length
        clip_n = len(pipe.tokenizer(prompt, truncation=False, verbose=False)["input_ids"])
        t5_n = len(pipe.tokenizer_2(prompt, truncation=False, verbose=False)["input_ids"])
        return {
            "clip": {"tokens": clip_n, "limit": clip_limit, "truncated": clip_n > clip_limit},
            "t5": {"tokens": t5_n, "limit": t5_limit, "truncated": t5_n > t5_limit},
        }

    # ------------------------------------------------------------------ LoRA (blocking; call off the event loop)

    def _refuse_lora_if_compiled(self, loras: tuple[LoraSpec, ...]) -> None:
        # Loading an adapter into a compiled transformer recompiles it; hotswap is not built yet.
        if loras and self.compile_mode != "none":
            raise InvalidRequest(
                f"LoRA is not available while the transformer is compiled (compile={self.settings.compile} -> regional): "
                f"loading one would recompile it; set FLUX_{self.settings.service.upper()}_COMPILE=none for LoRA")

    def apply_loras(self, loras: tuple[LoraSpec, ...]) -> dict:
        """Pin a LoRA set for requests that name none, on every replica. All of it loads, or nothing
        changes (each replica rolls back what it loaded)."""
        self._refuse_lora_if_compiled(loras)
        pinned_names = {s.name for s in self.pinned} | {s.name for s in loras}
        self.on_every_replica(lambda r: r.adapters.activate(loras, pinned_names))
        self.pinned = loras
        return self.lora_status()

    def remove_loras(self, name: str | None = None) -> dict:
        """Unpin one LoRA, or all; their adapters are deleted from every replica."""
        loaded = {e["name"] for e in self.replicas[0].adapters.loaded()} if self.replicas else set()
        if name is not None and name not in {s.name for s in self.pinned} and name not in loaded:
            raise InvalidLora(f"LoRA {name!r} is neither pinned nor loaded")
        self.pinned = tuple(s for s in self.pinned if name is not None and s.name != name)
        keep = {s.name for s in self.pinned}
        self.on_every_replica(lambda r: r.adapters.drop_all_but(keep, only=name))
        return self.lora_status()

    def lora_status(self) -> dict:
        return {
            "pinned": [s.as_dict() for s in self.pinned],
            "loaded": self.replicas[0].adapters.loaded() if self.replicas else [],
            "cache_size": self.settings.lora_cache_size,
            "lora_dir": str(self.settings.lora_dir),
        }

    def list_loras(self) -> dict:
        return {"available": list_lora_folder(self.settings.lora_dir), **self.lora_status()}

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        replicas = []
        for r in self.replicas:
            hf_map = getattr(r.pipe, "hf_device_map", None)
            components = {name: str(getattr(getattr(r.pipe, name, None), "device", "?"))
                          for name in ("transformer", "text_encoder", "text_encoder_2", "vae")}
            if isinstance(hf_map, dict):  # balanced: accelerate's map gives GPU indices
                components = {k: f"cuda:{v}" if isinstance(v, int) else str(v) for k, v in hf_map.items()}
            replicas.append({"index": r.index, "device": r.device, "components": components, **r.stats})
        sched = self.scheduler
        return {
            "service": self.settings.service,
            "state": self.phase,
            "loaded": bool(self.replicas),
            "error": self.error,
            "load_seconds": self.load_seconds,
            "model": self.source.as_dict() if self.source else {"spec": self.settings.model},
            "backend": self.backend,
            "precision": self.precision() if self.plan else None,
            "compile": self.compile_mode if self.plan else self.settings.compile,
            "cuda_graphs": ({"on": True, **self.replicas[0].graphs.status()} if self.replicas and self.replicas[0].graphs
                            else {"on": False, "why": self.graphs_off_reason or "not loaded"}),
            "memory": self.memory_status(),
            "placement": {**self.plan.as_dict(), "replica_status": replicas,
                          "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")} if self.plan else None,
            "devices": memory_report(self.hardware),
            "queue": {"queued": sched.queued if sched else 0, "running": sched.running if sched else 0,
                      "max_queued": self.settings.queue_size},
            "lora": self.lora_status(),
        }
