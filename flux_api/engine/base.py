"""FluxModelManager: the one place that owns a FLUX pipeline.

Load and unload, generation, LoRA state, status and placement live here, once, for both services.
Subclasses only say how the transformer is stored (bf16, or one of the 4-bit/8-bit backends).
Nothing here knows about HTTP; errors leave as the domain errors of flux_api.errors.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import FluxAPIError, GenerationFailed, GPUOutOfMemory, InvalidLora, ModelNotReady
from ..settings import ServiceSettings
from .devices import Hardware, PlacementPlan, detect_hardware, memory_report, plan_placement
from .lora import LoraFile, LoraResolver, LoraSpec, check_lora_fits, inspect_lora, list_lora_folder
from .sources import ModelSource, check_source, resolve_source
from .tiny import ensure_tiny_model
from .worker import GPUWorker

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
class _LoraState:
    adapters: OrderedDict = field(default_factory=OrderedDict)  # LoRA name -> adapter name, LRU order
    sources: dict = field(default_factory=dict)  # LoRA name -> "folder" | "hub"
    pinned: tuple[LoraSpec, ...] = ()
    active: tuple[LoraSpec, ...] | None = ()  # what the pipeline is set to now; None: unknown
    counter: int = 0


class FluxModelManager:
    """Base manager. Subclasses override `backend`, `_pipeline_kwargs`, `precision` (and may
    override `_load_pipeline` / `_set_active_loras` where a backend does things its own way)."""

    backend = "diffusers"

    def __init__(self, settings: ServiceSettings, hardware: Hardware | None = None):
        self.settings = settings
        self.hardware = hardware if hardware is not None else detect_hardware()
        self.pipe = None
        self.source: ModelSource | None = None
        self.plan: PlacementPlan | None = None
        self.phase = NOT_LOADED
        self.error: str | None = None
        self.load_seconds: float | None = None
        self._load_lock = threading.Lock()  # held for a whole load: one copy, ever
        self._state_lock = threading.Lock()  # held briefly: never blocks the event loop
        self._loading = False
        self._lora = _LoraState()
        self.lora_files = LoraResolver.from_settings(settings)
        self.worker = GPUWorker(settings.queue_size, name=f"flux-{settings.service}")

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        return self.phase == READY

    def preflight(self) -> None:
        """Cheap checks that must pass before the service starts (raise = start-up stops)."""
        self.plan = plan_placement(self.settings.device, self.settings.placement, self.hardware)
        self.source = resolve_source(self.settings.model, self.settings.cache_dir, self.settings.model_revision)
        check_source(self.source, self.settings.token)
        self._preflight_backend()

    def _preflight_backend(self) -> None:
        """Subclass hook: refuse a backend that cannot run here, before any weights are read."""

    def start_background_load(self) -> bool:
        """Start loading in a thread unless loaded or loading. Returns whether a load was started."""
        with self._state_lock:
            if self.pipe is not None or self._loading:
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
        """Load the pipeline (blocking). Idempotent: never loads a second copy."""
        with self._load_lock:
            if self.pipe is not None:
                return
            t0 = time.perf_counter()
            try:
                self.phase, self.error = LOADING, None
                if self.source is None or self.plan is None:
                    self.preflight()
                location = self.source.location
                if self.source.kind == "tiny":
                    location = str(ensure_tiny_model(self.settings.cache_dir))
                pipe = self._load_pipeline(location, self._torch_dtype(), self.plan)
                pipe.set_progress_bar_config(disable=True)
                self.pipe = pipe
                if self.settings.warmup:
                    self.phase = WARMING_UP
                    self._warmup()
                self.load_seconds = round(time.perf_counter() - t0, 2)
                self.phase = READY
                log.info("model ready in %.1f s: %s, backend %s, %s", self.load_seconds, self.source.spec,
                         self.backend, self.plan.as_dict())
            except Exception as e:
                self.pipe = None
                self._free_memory()
                self.phase = FAILED
                self.error = e.message if isinstance(e, FluxAPIError) else f"{type(e).__name__}: {e}"
                log.error("model load failed: %s", self.error)
                raise

    def unload(self) -> None:
        """Free the pipeline and its memory. Queued work is finished first."""
        self.worker.shutdown(timeout=60)
        with self._load_lock:
            self.pipe = None
            self._lora = _LoraState()
            self._free_memory()
            if self.phase != FAILED:
                self.phase = NOT_LOADED

    def _free_memory(self) -> None:
        gc.collect()
        if self.hardware.cuda:
            import torch

            torch.cuda.empty_cache()

    def _warmup(self) -> None:
        # One small run pays the first-call costs (kernel selection, allocator growth, tokenizer
        # caches) before /health says ready, instead of on the first user's request.
        self._run_pipeline(GenerationParams(prompt="warm-up", seed=0, width=256, height=256,
                                            num_inference_steps=2, guidance_scale=3.5))

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

    def _load_pipeline(self, location: str, dtype, plan: PlacementPlan):
        from diffusers import FluxPipeline

        kwargs = dict(dtype=dtype, **self._pipeline_kwargs())
        if plan.device_map:
            kwargs["device_map"] = plan.device_map
        if self.source.kind == "hub":
            kwargs.update(revision=self.source.revision, token=self.settings.token)
        return FluxPipeline.from_pretrained(location, **kwargs)

    def precision(self) -> dict:
        dtype = str(self._torch_dtype()).removeprefix("torch.") if self.plan else None
        return {"transformer": dtype, "text_encoders": dtype, "vae": dtype}

    # ------------------------------------------------------------------ the queue

    def submit(self, fn: Callable, *args) -> Future:
        """Queue work that needs the loaded pipeline. Raises ModelNotReady or QueueFull at once."""
        self.require_ready()
        return self.worker.submit(fn, *args)

    def require_ready(self) -> None:
        if not self.ready:
            raise ModelNotReady(self.phase, self._not_ready_message())

    def _not_ready_message(self) -> str:
        if self.phase == FAILED:
            return f"the model failed to load: {self.error}. POST /load-model to retry"
        if self.phase == NOT_LOADED:
            return "the model is not loaded: POST /load-model"
        return f"the model is still loading (phase: {self.phase}); retry when /health answers 200"

    # ------------------------------------------------------------------ generation (worker thread)

    def generate(self, params: GenerationParams, enqueued_at: float) -> GenerationResult:
        started = time.perf_counter()
        pipe = self.pipe
        if pipe is None:
            raise ModelNotReady(self.phase, self._not_ready_message())
        loras = self._lora.pinned if params.loras is None else params.loras
        self._set_active_loras(loras)
        lora_ms = round((time.perf_counter() - started) * 1e3, 2)
        truncation = self._truncation(params.prompt)
        image = self._run_pipeline(params)
        return GenerationResult(
            image=image, params=params, loras=loras, truncation=truncation,
            queue_ms=round((started - enqueued_at) * 1e3, 2), lora_ms=lora_ms,
            inference_ms=round((time.perf_counter() - started) * 1e3 - lora_ms, 2),
            backend=self.backend, model=self.source.spec,
        )

    def _run_pipeline(self, params: GenerationParams):
        import torch

        # A per-request CPU generator: the same seed gives the same noise whatever the device, and
        # no request ever touches the global RNG.
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        kwargs = {}
        if params.negative_prompt:
            kwargs.update(negative_prompt=params.negative_prompt, true_cfg_scale=params.true_cfg_scale)
        try:
            out = self.pipe(
                prompt=params.prompt, width=params.width, height=params.height,
                num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
                generator=generator, max_sequence_length=self.settings.max_sequence_length,
                output_type="pil", **kwargs,
            )
        except torch.cuda.OutOfMemoryError as e:
            self._free_memory()
            raise GPUOutOfMemory(
                f"the GPU ran out of memory at {params.width}x{params.height}; the memory was freed, "
                "retry smaller or later"
            ) from e
        except FluxAPIError:
            raise
        except Exception as e:
            log.exception("generation failed")
            raise GenerationFailed(f"generation failed: {type(e).__name__}: {e}") from e
        return out.images[0]

    def _truncation(self, prompt: str) -> dict:
        """Token counts of the prompt against CLIP's 77 and T5's budget: what the model really sees."""
        clip_limit = self.pipe.tokenizer.model_max_length
        t5_limit = self.settings.max_sequence_length
        clip_n = len(self.pipe.tokenizer(prompt, truncation=False, verbose=False)["input_ids"])
        t5_n = len(self.pipe.tokenizer_2(prompt, truncation=False, verbose=False)["input_ids"])
        return {
            "clip": {"tokens": clip_n, "limit": clip_limit, "truncated": clip_n > clip_limit},
            "t5": {"tokens": t5_n, "limit": t5_limit, "truncated": t5_n > t5_limit},
        }

    # ------------------------------------------------------------------ LoRA (worker thread)

    def _adapter_for(self, file: LoraFile, keep: set[str]) -> str:
        """Load a LoRA once (LRU-cached); a failure leaves the pipeline as it was."""
        st = self._lora
        if file.name in st.adapters:
            st.adapters.move_to_end(file.name)
            return st.adapters[file.name]
        check_lora_fits(self.pipe, file.path, file.name)
        st.counter += 1
        adapter = f"lora_{st.counter}"
        try:
            self.pipe.load_lora_weights(str(file.path), adapter_name=adapter)
        except Exception as e:
            self._delete_adapter(adapter)
            st.active = None
            raise InvalidLora(f"LoRA {file.name!r} cannot be loaded into this model ({self.backend} backend): {e}") from e
        st.adapters[file.name] = adapter
        st.sources[file.name] = file.source
        st.active = None  # loading an adapter changes which adapters are active
        self._evict_adapters(keep | {file.name})
        return adapter

    def _evict_adapters(self, keep: set[str]) -> None:
        st = self._lora
        keep = keep | {s.name for s in st.pinned}
        for name in list(st.adapters):
            if len(st.adapters) <= self.settings.lora_cache_size:
                break
            if name not in keep:
                self._drop(name)

    def _drop(self, name: str) -> None:
        self._lora.sources.pop(name, None)
        self._delete_adapter(self._lora.adapters.pop(name))

    def _delete_adapter(self, adapter: str) -> None:
        try:
            self.pipe.delete_adapters(adapter)
        except Exception:  # it was never (fully) created
            pass
        if not self._lora.adapters:
            # No adapter left: take the LoRA layers out entirely, so the base model is exactly back.
            self.pipe.unload_lora_weights()
            self._lora.active = ()

    def _resolve_new(self, loras: tuple[LoraSpec, ...]) -> dict[str, LoraFile]:
        """Find and check every LoRA not loaded yet, before any is loaded: one bad name changes nothing."""
        files = {}
        for s in loras:
            if s.name not in self._lora.adapters:
                files[s.name] = self.lora_files.resolve(s.name)
                inspect_lora(files[s.name].path)  # a damaged or non-LoRA file never reaches the model
        return files

    def _set_active_loras(self, loras: tuple[LoraSpec, ...]) -> None:
        st = self._lora
        if st.active is not None and st.active == loras:
            return
        if not loras:
            if st.adapters:
                self.pipe.disable_lora()
        else:
            files = self._resolve_new(loras)
            keep = {s.name for s in loras}
            try:
                names = [st.adapters[s.name] if s.name in st.adapters else self._adapter_for(files[s.name], keep)
                         for s in loras]
            except Exception:
                for n in files:
                    if n in st.adapters:
                        self._drop(n)
                st.active = None
                raise
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, [s.weight for s in loras])
            for s in loras:
                st.adapters.move_to_end(s.name)
        st.active = loras

    def apply_loras(self, loras: tuple[LoraSpec, ...]) -> dict:
        """Pin a LoRA set for requests that name none. All of it loads, or nothing changes."""
        before = self._lora.pinned
        try:
            self._set_active_loras(loras)
        except Exception:
            self._lora.active = None
            self._lora.pinned = before
            raise
        self._lora.pinned = loras
        return self.lora_status()

    def remove_loras(self, name: str | None = None) -> dict:
        """Unpin one LoRA, or all; unpinned adapters are deleted from the model."""
        st = self._lora
        if name is not None and name not in {s.name for s in st.pinned} and name not in st.adapters:
            raise InvalidLora(f"LoRA {name!r} is neither pinned nor loaded")
        st.pinned = tuple(s for s in st.pinned if name is not None and s.name != name)
        pinned_names = {s.name for s in st.pinned}
        for n in [n for n in st.adapters if n not in pinned_names and (name is None or n == name)]:
            self._drop(n)
        st.active = None
        return self.lora_status()

    def lora_status(self) -> dict:
        return {
            "pinned": [s.as_dict() for s in self._lora.pinned],
            "loaded": [{"name": n, "source": self._lora.sources.get(n)} for n in self._lora.adapters],
            "cache_size": self.settings.lora_cache_size,
            "lora_dir": str(self.settings.lora_dir),
        }

    def list_loras(self) -> dict:
        return {"available": list_lora_folder(self.settings.lora_dir), **self.lora_status()}

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        components = {}
        if self.pipe is not None:
            for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
                module = getattr(self.pipe, name, None)
                if module is not None:
                    components[name] = str(getattr(module, "device", "?"))
        return {
            "service": self.settings.service,
            "state": self.phase,
            "loaded": self.pipe is not None,
            "error": self.error,
            "load_seconds": self.load_seconds,
            "model": self.source.as_dict() if self.source else {"spec": self.settings.model},
            "backend": self.backend,
            "precision": self.precision() if self.plan else None,
            "placement": {**self.plan.as_dict(), "components": components,
                          "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")} if self.plan else None,
            "devices": memory_report(self.hardware),
            "queue": {"depth": self.worker.depth, "max": self.worker.max_pending},
            "lora": self.lora_status(),
        }
