"""One pipeline on one device (or one balanced pipeline over several), and how it generates.

A replica generates on one thread at a time: the load thread while it warms up, then its scheduler
worker (and placement=parallel's restart thread, while the worker waits for it or is idle), so
generation takes no lock. Its adapters change only there, between two generations; other
threads only read them (AdapterSet.loaded takes a snapshot).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..errors import FluxAPIError, GenerationFailed, GPUOutOfMemory
from .adapters import AdapterSet
from .loader import COMPONENTS
from .lora import LoraFile, LoraSpec
from .prompts import PromptCache
from .step_cache import StepCache
from .types import GenerationParams, GenerationResult

log = logging.getLogger(__name__)
WARM_UP_THRESHOLD = 1e-9  # First Block Cache at the warm-up: on, and no step's change is under it


@dataclass(frozen=True)
class RunConfig:
    """What every generation of a service shares."""

    backend: str
    model: str  # the source spec, as responses name it
    max_sequence_length: int
    text_on_cpu: bool  # memory_mode=low with the text encoders on the CPU: prompts are encoded there
    free_memory: Callable[[], None]


@dataclass
class Replica:
    index: int
    device: str
    pipe: Any
    adapters: AdapterSet
    config: RunConfig
    graphs: Any = None  # GraphedForward, where CUDA graphs are on
    stats: dict = field(default_factory=lambda: {"images": 0})
    variants: dict = field(default_factory=dict)  # image-to-image and inpainting pipelines, over the same modules
    prompts: PromptCache = field(default_factory=lambda: PromptCache(0))  # recent prompts' embeddings
    step_cache: StepCache | None = None  # First Block Cache, per request (None: the backend cannot)
    modulation: Any = None  # ModulationTable, where precompute_modulation is on

    def on_thread_start(self) -> None:
        if self.device.startswith("cuda:"):
            import torch

            torch.cuda.set_device(int(self.device.split(":")[1]))  # bnb and friends use the current device

    # placement=parallel's group restarting after a rank failed (parallel.py); never for one pipeline
    restarting = False

    def status(self) -> dict:
        """This replica in /model-status."""
        return {"index": self.index, "device": self.device, "components": self.components(), **self.stats,
                "prompt_cache": self.prompts.status()}

    def mark_serving(self) -> None:
        """The warm-up is over: from here on the replica serves requests (placement=parallel may restart)."""

    def close(self) -> None:
        """Release what the replica holds beyond its memory (placement=parallel: the other ranks)."""

    def components(self) -> dict:
        """Where each component is (accelerate's map, in GPU indices, for a balanced pipeline)."""
        hf_map = getattr(self.pipe, "hf_device_map", None)
        if isinstance(hf_map, dict):
            return {k: f"cuda:{v}" if isinstance(v, int) else str(v) for k, v in hf_map.items()}
        return {name: str(getattr(getattr(self.pipe, name, None), "device", "?")) for name in COMPONENTS}

    # ------------------------------------------------------------------ generation (worker thread)

    def generate(self, job, params: GenerationParams, loras: tuple[LoraSpec, ...], pinned: set[str],
                 files: dict[str, LoraFile]) -> GenerationResult:
        """1. Switch the adapters to `loras`. 2. Count the prompt's tokens. 3. Run the pipeline."""
        started = time.perf_counter()
        # 1. Adapters: all of them, or nothing changes.
        self.adapters.activate(loras, pinned, files)
        lora_ms = round((time.perf_counter() - started) * 1e3, 2)
        # 2. What the text encoders will really see.
        truncation = self.truncation(params.prompt)
        # 3. The pipeline, once per image (seed, seed+1, ...), stopping at a step boundary when the job
        # is cancelled or times out. One at a time, not batched: image i is then byte-identical to the
        # same request alone with its seed, and a batch was not faster where it was measured.
        images, skips = [], []
        for i, seed in enumerate(params.seeds()):
            images.append(self.run(params, job, seed=seed, steps_before=i * params.steps_per_image(), skips=skips))
            self.stats["images"] += 1
        return GenerationResult(
            images=images, params=params, loras=loras, truncation=truncation,
            queue_ms=round((job.started - job.created) * 1e3, 2), lora_ms=lora_ms,
            inference_ms=round((time.perf_counter() - started) * 1e3 - lora_ms, 2),
            backend=self.config.backend, model=self.config.model,
            steps_skipped=sum(c.skipped for c in skips) if params.first_block_cache is not None else None,
        )

    def activate_loras(self, loras: tuple[LoraSpec, ...], keep: set[str], files: dict[str, LoraFile]) -> None:
        """Load and switch to `loras` (pinning): all of them, or nothing changes."""
        self.adapters.activate(loras, keep, files)

    def drop_loras(self, keep: set[str], only: str | None = None) -> None:
        """Delete loaded adapters but those in `keep` (or only `only`)."""
        self.adapters.drop_all_but(keep, only=only)

    def warm_up(self, px: int) -> None:
        """Run `px` x `px` once (2 steps) for the base model and once per variant a LoRA request runs
        (the LoRA slot switched on), so compiling and capturing happen here, not on a request. Where CUDA
        graphs run the steps, each again with First Block Cache (a threshold no step is under: every step
        in full), which runs the blocks outside the graph: on an H100 its first request compiled 3 graphs
        of its own (2026-12-06; the cause is mended in graphs.py, this keeps any other such difference off
        a live request). Without graphs the cached path runs what the warm-up already ran."""
        params = GenerationParams(prompt="warm-up", seed=0, width=px, height=px, num_inference_steps=2,
                                  guidance_scale=3.5)
        graphed = self.step_cache is not None and self.graphs is not None
        cached = [replace(params, first_block_cache=WARM_UP_THRESHOLD)] if graphed else []
        for p in (params, *cached):
            self.run(p)
            for _ in self.adapters.warm_variants():
                self.run(p)

    def pipeline(self, kind: str):
        """The FLUX pipeline for `kind` ("text", "image", "inpaint"). The image-to-image and inpainting
        pipelines are built once from the loaded components themselves: the same modules (no second
        copy, no dtype or device change, the same LoRA adapters and CUDA graphs), unlike from_pipe,
        which defaults to float32 and moves modules."""
        if kind == "text":
            return self.pipe
        if kind not in self.variants:
            from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline

            cls = FluxImg2ImgPipeline if kind == "image" else FluxInpaintPipeline
            self.variants[kind] = cls(**self.pipe.components)
        return self.variants[kind]

    def run(self, params: GenerationParams, job=None, seed: int | None = None, steps_before: int = 0,
            skips: list | None = None):
        """The diffusers call for `params` (with `seed`, default params.seed); the PIL image. Progress
        counts on from `steps_before` (the images of the request already made). With first_block_cache,
        the call's SkipCount is appended to `skips`. Domain errors out, the GPU's memory freed on OOM."""
        import torch

        if self.device == "cpu":
            # Denormal floats (tiny attention weights, in the trained tiny model) make CPU matmuls up
            # to 8x slower; flushing them to zero changes no image visibly. A per-thread CPU flag, so
            # set on the thread that generates.
            torch.set_flush_denormal(True)
        # A per-image CPU generator: the same seed gives the same noise whatever the device, and
        # no request ever touches the global RNG.
        generator = torch.Generator(device="cpu").manual_seed(params.seed if seed is None else seed)
        kwargs = {"prompt": params.prompt}
        if params.negative_prompt:
            kwargs.update(negative_prompt=params.negative_prompt, true_cfg_scale=params.true_cfg_scale)
        if params.init_image is not None:
            kwargs.update(image=params.init_image, strength=params.strength)
        if params.mask_image is not None:
            kwargs.update(mask_image=params.mask_image)
        if job is not None:
            def on_step(pipe, i, t, callback_kwargs):
                job.on_step(steps_before + i + 1)  # raises to stop at this step when cancelled or timed out
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step
        try:
            kwargs = self._encode_prompts(kwargs)
            # text-to-image's pipeline names its passes' cache contexts; the others do not (step_cache.py)
            passes = None if params.kind == "text" else (2 if params.negative_prompt else 1)
            with self.cache_steps(params.first_block_cache, passes) as count, self.modulations():
                out = self.pipeline(params.kind)(
                    width=params.width, height=params.height,
                    num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
                    generator=generator, max_sequence_length=self.config.max_sequence_length,
                    output_type="pt", **kwargs,  # pil_images below: diffusers' "pil", its bytes, on the GPU
                )
            if count is not None and skips is not None:
                skips.append(count)
            image = pil_images(out.images)[0]  # GPU work too: its errors are the call's
        except torch.cuda.OutOfMemoryError as e:
            del e  # drop the traceback's references to the step's tensors before freeing
            self.prompts.clear()  # its embeddings are GPU memory too; they are recomputed when needed
            self.config.free_memory()
            raise GPUOutOfMemory(
                f"the GPU ran out of memory at {params.width}x{params.height}; the memory was freed, "
                "retry smaller or later"
            ) from None
        except FluxAPIError:
            raise
        except Exception as e:
            log.exception("generation failed")
            raise GenerationFailed(f"generation failed: {type(e).__name__}: {e}") from e
        return image

    def cache_steps(self, threshold: float | None, passes_to_name: int | None):
        """First Block Cache at `threshold` for one pipeline call (None: off; `passes_to_name`: see
        StepCache.on). The request's check refused it already where this replica has none."""
        if threshold is None:
            return contextlib.nullcontext()
        if self.step_cache is None:
            raise GenerationFailed("first_block_cache is not available on this replica")
        return self.step_cache.on(threshold, passes_to_name)

    def modulations(self):
        """One pipeline call's precomputed modulations (modulation.py), where they are on."""
        return self.modulation.run() if self.modulation is not None else contextlib.nullcontext()

    def _encode_prompts(self, kwargs: dict) -> dict:
        """The prompt and negative prompt as embeddings, from the prompt cache or encoded now (on the CPU
        where memory_mode=low keeps the text encoders there), on the pipeline's own device."""
        pipe, n = self.pipe, self.config.max_sequence_length
        device = pipe._execution_device
        out = {k: v for k, v in kwargs.items() if k not in ("prompt", "negative_prompt")}
        for prefix, key in (("", "prompt"), ("negative_", "negative_prompt")):
            if kwargs.get(key):
                embeds, pooled = self.prompts.embeddings(pipe, kwargs[key], n, "cpu" if self.config.text_on_cpu else device,
                                                         device)
                out[f"{prefix}prompt_embeds"], out[f"{prefix}pooled_prompt_embeds"] = embeds, pooled
        return out

    def truncation(self, prompt: str) -> dict:
        """Token counts of the prompt against CLIP's 77 and T5's budget: what the model really sees."""
        clip, t5 = self.pipe.tokenizer, self.pipe.tokenizer_2
        clip_limit, t5_limit = clip.model_max_length, self.config.max_sequence_length
        clip_n = len(clip(prompt, truncation=False, verbose=False)["input_ids"])
        t5_n = len(t5(prompt, truncation=False, verbose=False)["input_ids"])
        return {
            "clip": {"tokens": clip_n, "limit": clip_limit, "truncated": clip_n > clip_limit},
            "t5": {"tokens": t5_n, "limit": t5_limit, "truncated": t5_n > t5_limit},
        }


def pil_images(images) -> list:
    """The pipeline's "pt" output (B x C x H x W in [0, 1], on the pipeline's device) as PIL images, the
    same bytes as its "pil" output. diffusers' "pil" copies the image to the host and rounds it there with
    numpy (`numpy_to_pil`: x 255 in float32, round half to even, to uint8): 13.4 ms at 1024 px on the GPU
    host (docs/gpu/2026-12-06-issue25/phases.py). Here the same float32 arithmetic runs where the image is,
    and half the bytes cross (uint8, not bf16)."""
    import torch
    from PIL import Image

    pixels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p.squeeze(-1) if p.shape[-1] == 1 else p) for p in pixels]
