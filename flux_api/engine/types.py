"""What crosses the engine's boundary: a generation's parameters, its checked LoRAs, its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .lora import LoraFile, LoraSpec

# The manager's phases, as /health and /model-status show them.
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
    num_images: int = 1  # image i has seed + i, and is the image of the same request with that seed alone
    init_image: Any = None  # a checked RGB PIL image of exactly width x height: image-to-image
    mask_image: Any = None  # with init_image: a PIL "L" image, 255 = repaint (inpainting)
    strength: float | None = None  # with init_image: how much of it is repainted (1.0: all of it)
    service: str | None = None  # Ray Serve's routing (fp4 | bf16 | auto); None on a plain service: itself
    first_block_cache: float | None = None  # First Block Cache's threshold (step_cache.py); None: off

    @property
    def kind(self) -> str:
        """Which FLUX pipeline draws it: text-to-image, image-to-image or inpainting."""
        if self.init_image is None:
            return "text"
        return "image" if self.mask_image is None else "inpaint"

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]

    def steps_per_image(self) -> int:
        """Denoising steps each image really runs: diffusers' image-to-image skips the first
        (1 - strength) of the schedule (FluxImg2ImgPipeline.get_timesteps)."""
        if self.init_image is None:
            return self.num_inference_steps
        return self.num_inference_steps - int(max(self.num_inference_steps - self.num_inference_steps * self.strength, 0))

    @property
    def total_steps(self) -> int:
        return self.steps_per_image() * self.num_images


@dataclass(frozen=True)
class CheckedRequest:
    """A generation that passed every check that needs no GPU, ready to queue. `files` holds each
    named LoRA's file as it was checked (with its hash), so the worker loads exactly that."""

    params: GenerationParams
    files: dict[str, LoraFile] = field(default_factory=dict)


@dataclass
class GenerationResult:
    images: list  # PIL images, one per seed of params.seeds()
    params: GenerationParams
    loras: tuple[LoraSpec, ...]
    truncation: dict
    queue_ms: float
    lora_ms: float
    inference_ms: float
    backend: str
    model: str
    service: str | None = None  # the service that drew it, where a front routes between two (Ray Serve)
    steps_skipped: int | None = None  # with first_block_cache: transformer passes it reused (all images)
