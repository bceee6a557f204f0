"""Every request and response body, validated at the boundary.

The /generate request model is built from the service's settings, so the defaults and limits that
/docs shows are the configured ones, not numbers copied into the schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .limits import MAX_LORA_NAME, MAX_LORAS, MAX_SEED, MAX_STEPS, ImageSide, OutputFormat, json_int
from .settings import ServiceSettings


# Every request body: unknown fields refused, and no coercion. `true` is not 1 step, "256" is not 256
# pixels, NaN is not a number: each is a 422 naming the field, never a silent guess.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# A LoRA name: no control characters (they name no file anyone meant), in the schema as in the check.
LORA_NAME = r"^[^\x00-\x1f\x7f]+$"


class LoraRef(BaseModel):
    model_config = STRICT

    name: str = Field(..., min_length=1, max_length=MAX_LORA_NAME, pattern=LORA_NAME,
                      description="LoRA name inside the LoRA folder (no .safetensors needed).")
    weight: float = Field(1.0, ge=0.0, le=2.0, description="LoRA strength, 0-2.")


# The cross-field rules, also in the JSON schema, so that clients and fuzzers see them: never both
# ways of naming LoRAs, and no lora_weight without lora_name.
# (null counts as not given, as in the validator below.)
LORA_RULES = {
    "not": {"required": ["lora_name", "loras"],
            "properties": {"lora_name": {"type": "string"}, "loras": {"type": "array"}}},
    "dependentSchemas": {"lora_weight": {"required": ["lora_name"], "properties": {"lora_name": {"type": "string"}}}},
}


class _LoraFields(BaseModel):
    """The seed's single `lora_name`/`lora_weight`, or `loras` for several; never both."""

    model_config = ConfigDict(**STRICT, json_schema_extra=LORA_RULES)

    lora_name: str | None = Field(None, min_length=1, max_length=MAX_LORA_NAME, pattern=LORA_NAME,
                                  description="One LoRA from the LoRA folder.")
    lora_weight: float = Field(1.0, ge=0.0, le=2.0, description="Strength of lora_name, 0-2; only with lora_name.")
    loras: list[LoraRef] | None = Field(
        None, max_length=MAX_LORAS, json_schema_extra={"uniqueItems": True},
        description="Several LoRAs at once, each with its weight, each name once; not together with lora_name.")

    @model_validator(mode="after")
    def _one_way(self):
        if self.lora_name is not None and self.loras is not None:
            raise ValueError("give either lora_name/lora_weight or loras, not both")
        if "lora_weight" in self.model_fields_set and self.lora_name is None:
            raise ValueError("lora_weight was given without lora_name; it would be ignored")
        if self.loras is not None and len({r.name for r in self.loras}) != len(self.loras):
            raise ValueError("loras names the same LoRA twice")
        return self

    def lora_refs(self) -> list[LoraRef] | None:
        """The LoRAs asked for, or None when the request names none."""
        if self.lora_name is not None:
            return [LoraRef(name=self.lora_name, weight=self.lora_weight)]
        return self.loras


NOT_BLANK = r"\S"  # some character that is not white space
# true_cfg_scale > 1 exactly when there is a (non-blank) negative prompt: at 1 a negative prompt would
# be ignored, and above 1 without one it would be too.
TRUE_CFG_RULE = {
    "if": {"required": ["negative_prompt"], "properties": {"negative_prompt": {"type": "string", "pattern": NOT_BLANK}}},
    "then": {"properties": {"true_cfg_scale": {"anyOf": [{"type": "number", "exclusiveMinimum": 1}, {"type": "null"}]}}},
    "else": {"properties": {"true_cfg_scale": {"anyOf": [{"type": "number", "maximum": 1}, {"type": "null"}]}}},
}


def build_generate_request(settings: ServiceSettings) -> type[BaseModel]:
    """The /generate body for one service, with its configured defaults and limits."""

    class GenerateRequest(_LoraFields):
        model_config = ConfigDict(
            **STRICT,
            json_schema_extra={**LORA_RULES, "allOf": [TRUE_CFG_RULE],
                               "examples": [{"prompt": "a lighthouse on a cliff at dusk", "seed": 42}]},
        )

        prompt: str = Field(..., min_length=1, max_length=settings.max_prompt_chars, description="What to draw; not blank.",
                            json_schema_extra={"pattern": NOT_BLANK})
        negative_prompt: str | None = Field(
            None, max_length=settings.max_prompt_chars,
            description="What to avoid. Uses true CFG, which doubles the cost of each step.",
        )
        true_cfg_scale: float | None = Field(
            None, ge=1.0, le=10.0,
            description=f"True CFG strength for negative_prompt; {settings.default_true_cfg_scale} when a negative "
            "prompt is given without it. Must be > 1 with a negative prompt.",
        )
        num_inference_steps: json_int(ge=1, le=MAX_STEPS) = Field(settings.default_steps, description="Denoising steps.")
        guidance_scale: float = Field(
            settings.default_guidance, ge=0.0, le=20.0,
            description="FLUX.1-dev's distilled guidance (an embedding, not CFG). 0.0 is honoured as 0.0.",
        )
        width: ImageSide = Field(settings.default_width, description="Pixels, a multiple of 16.")
        height: ImageSide = Field(settings.default_height, description="Pixels, a multiple of 16.")
        seed: json_int(ge=0, le=MAX_SEED) | None = Field(None, description="Omit for a random seed; the one used is returned.")
        output_format: OutputFormat = Field(settings.output_format, description="Image format.")

        @field_validator("prompt")
        @classmethod
        def _not_blank(cls, v: str) -> str:
            if not v.strip():
                raise ValueError("prompt is blank")
            return v

        @field_validator("negative_prompt")
        @classmethod
        def _blank_negative_is_none(cls, v: str | None) -> str | None:
            return v if v and v.strip() else None

        @model_validator(mode="after")
        def _true_cfg(self):
            if self.negative_prompt is not None:
                if self.true_cfg_scale is None:
                    self.true_cfg_scale = settings.default_true_cfg_scale
                elif self.true_cfg_scale <= 1.0:
                    raise ValueError(
                        "true_cfg_scale must be greater than 1 with a negative_prompt: at 1 or less the negative "
                        "prompt would be silently ignored"
                    )
            elif self.true_cfg_scale is not None and self.true_cfg_scale > 1.0:
                raise ValueError("true_cfg_scale > 1 needs a negative_prompt; without one it would be ignored")
            return self

    return GenerateRequest


class Timings(BaseModel):
    queue_ms: float = Field(description="Waiting for the GPU.")
    lora_ms: float = Field(description="Loading or switching LoRA adapters for this request (0 when nothing changed).")
    inference_ms: float = Field(description="The pipeline call (text encoding, denoising, VAE decode).")
    encode_ms: float = Field(description="Image encoding (and base64 for JSON).")
    total_ms: float = Field(description="From the request's arrival to the response.")


class TokenCount(BaseModel):
    tokens: int
    limit: int
    truncated: bool


class PromptTruncation(BaseModel):
    clip: TokenCount
    t5: TokenCount


class GenerateResponse(BaseModel):
    image: str = Field(description="The image, base64-encoded.")
    format: OutputFormat
    seed: int = Field(description="The seed actually used (drawn at random when the request gave none).")
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str | None
    true_cfg_scale: float | None
    model: str
    backend: str
    loras: list[LoraRef] = Field(description="The LoRAs applied to this image (per-request or pinned).")
    prompt_truncation: PromptTruncation
    warnings: list[str]
    timings: Timings
    request_id: str


class JobError(BaseModel):
    type: str
    message: str


class JobState(BaseModel):
    """A job as GET /jobs/{id} (and DELETE, and the SSE `state` event) shows it."""

    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled", "timed_out"]
    position: int | None = Field(description="Place in the queue (0 is next); null once it runs.")
    step: int = Field(description="Denoising steps done.")
    total_steps: int
    eta_s: float | None = Field(description="Seconds left, from the steps so far; null until a step is done.")
    replica: int | None = Field(description="The replica running it, once it runs.")
    queue_ms: float = Field(description="Time spent waiting for a replica.")
    cancel_requested: bool
    error: JobError | None = Field(description="Why it failed, was cancelled or timed out.")
    request_id: str | None


class JobLinks(BaseModel):
    self: str
    events: str


class JobCreated(JobState):
    links: JobLinks


class JobDetail(JobState):
    result: GenerateResponse | None = Field(description="The /generate body, once the job is done.")


class ApplyLoraRequest(_LoraFields):
    model_config = ConfigDict(**STRICT, json_schema_extra={
        **LORA_RULES, "anyOf": [{"required": ["lora_name"], "properties": {"lora_name": {"type": "string"}}},
                                {"required": ["loras"], "properties": {"loras": {"type": "array"}}}],
        "examples": [{"lora_name": "my-style", "lora_weight": 0.8}]})

    @model_validator(mode="after")
    def _some(self):
        if self.lora_refs() is None:
            raise ValueError("give lora_name (and lora_weight) or loras")
        return self


class RemoveLoraRequest(BaseModel):
    model_config = STRICT

    lora_name: str | None = Field(
        None, min_length=1, max_length=MAX_LORA_NAME, pattern=LORA_NAME,
        description="Unpin this one (a LoRA neither pinned nor loaded is a 404); omit to unpin all.")


class ErrorDetail(BaseModel):
    type: str
    message: str
    code: int
    request_id: str
    details: dict | list | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
