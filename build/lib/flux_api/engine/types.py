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


@dataclass(frozen=True)
class CheckedRequest:
    """A generation that passed every check that needs no GPU, ready to queue. `files` holds each
    named LoRA's file as it was checked (with its hash), so the worker loads exactly that."""

    params: GenerationParams
    files: dict[str, LoraFile] = field(default_factory=dict)


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
