"""Every request and response body, validated at the boundary.

The /generate request model is built from the service's settings, so the defaults and limits that
/docs shows are the configured ones, not numbers copied into the schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .limits import MAX_IMAGES, MAX_LORA_NAME, MAX_LORAS, MAX_SEED, MAX_STEPS, ImageSide, OutputFormat, json_int
from .settings import ServiceSettings


# Every request body: unknown fields refused, and no coercion. `true` is not 1 step, "256" is not 256
# pixels, NaN is not a number: each is a 422 naming the field, never a silent guess.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# A LoRA name, in the schema as in the check: a relative path with "/" between its parts, none of them
# empty, "." or ".."; no backslash, no control character. So one file has one spelling (no "./x",
# "x/", "a//b", "a\\b"), and nothing can point outside the LoRA folder by its syntax.
_CHAR = r"[^/\\\x00-\x1f\x7f]"
_NOT_DOT = r"[^/\\.\x00-\x1f\x7f]"
_PART = rf"(?:{_NOT_DOT}{_CHAR}*|\.{_NOT_DOT}{_CHAR}*|\.\.{_CHAR}+)"
LORA_NAME = rf"^{_PART}(?:/{_PART})*$"
_LORA_NAME = re.compile(LORA_NAME)


def _lora_name(v: str | None) -> str | None:
    if v is not None and not _LORA_NAME.match(v):
        raise ValueError("a LoRA name is a path inside the LoRA folder (or owner/repo[/file] on the Hub): parts "
                         "separated by '/', none empty, '.' or '..', no backslash or control character")
    return v


LoraName = Annotated[str, AfterValidator(_lora_name)]


class LoraRef(BaseModel):
    model_config = STRICT

    name: LoraName = Field(..., min_length=1, max_length=MAX_LORA_NAME, json_schema_extra={"pattern": LORA_NAME},
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

    lora_name: LoraName | None = Field(None, min_length=1, max_length=MAX_LORA_NAME, json_schema_extra={"pattern": LORA_NAME},
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
        if self.loras is not None and len({r.name.removesuffix(".safetensors") for r in self.loras}) != len(self.loras):
            raise ValueError("loras names the same LoRA twice")
        return self

    def lora_refs(self) -> list[LoraRef] | None:
        """The LoRAs asked for, or None when the request names none."""
        if self.lora_name is not None:
            return [LoraRef(name=self.lora_name, weight=self.lora_weight)]
        return self.loras


# Some character that is not white space, white space as JSON Schema's (ECMAScript's) \s counts it, so
# that the schema and the check agree on what is blank.
_SPACE = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"  # regex escapes
NOT_BLANK = f"[^{_SPACE}]"
_NOT_BLANK = re.compile(NOT_BLANK)
# true_cfg_scale > 1 exactly when there is a (non-blank) negative prompt: at 1 a negative prompt would
# be ignored, and above 1 without one it would be too.
TRUE_CFG_RULE = {
    "if": {"required": ["negative_prompt"], "properties": {"negative_prompt": {"type": "string", "pattern": NOT_BLANK}}},
    "then": {"properties": {"true_cfg_scale": {"anyOf": [{"type": "number", "exclusiveMinimum": 1}, {"type": "null"}]}}},
    "else": {"properties": {"true_cfg_scale": {"anyOf": [{"type": "number", "maximum": 1}, {"type": "null"}]}}},
}


# An init image's companions need it: a mask or a strength without an image would be ignored (null
# counts as not given, as in the validator).
_IMAGE = {"required": ["image"], "properties": {"image": {"type": "string"}}}
IMAGE_RULES = [{"if": {"required": ["mask"], "properties": {"mask": {"type": "string"}}}, "then": _IMAGE},
               {"if": {"required": ["strength"], "properties": {"strength": {"type": "number"}}}, "then": _IMAGE}]


def build_generate_request(settings: ServiceSettings, services: tuple[str, ...] = ()) -> type[BaseModel]:
    """The /generate body for one service, with its configured defaults, limits and presets. `services`:
    a front that routes between services (Ray Serve) offers them, and "auto", in a `service` field."""
    presets = settings.presets
    preset_names = tuple(presets)
    preset_help = "; ".join(f"{name}: {p.fields()}" for name, p in presets.items()) or "none configured"

    class GenerateRequest(_LoraFields):
        model_config = ConfigDict(
            **STRICT,
            json_schema_extra={**LORA_RULES, "allOf": [TRUE_CFG_RULE, *IMAGE_RULES],
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
        seed: json_int(ge=0, le=MAX_SEED) | None = Field(
            None, description="Omit for a random seed; the one used is returned. Image i of num_images has seed + i.")
        output_format: OutputFormat = Field(settings.output_format, description="Image format.")
        num_images: json_int(ge=1, le=MAX_IMAGES) = Field(
            1, description=f"Images for this prompt, 1-{MAX_IMAGES}: seeds seed, seed+1, ...; image i is the image of "
            "the same request alone with its seed. One queue place; the timeout covers all of them.")
        image: str | None = Field(
            None, min_length=1, description="An init image (base64, or a data: URL): image-to-image. It must be "
            "width x height; give neither to take its size. PNG, JPEG or WebP, opaque.")
        mask: str | None = Field(
            None, min_length=1, description="With image: inpainting. Base64 image of the same size; white is "
            "repainted, black kept (diffusers' convention).")
        strength: float | None = Field(
            None, ge=0.01, le=1.0, description="With image: how much of it is repainted, 0.01-1 (default 0.8 without "
            "a mask, 1.0 with one); it runs about num_inference_steps x strength steps, at least one.")
        first_block_cache: float | None = Field(
            None, gt=0.0, le=1.0, description="First Block Cache: skip the rest of the transformer at a step whose "
            "first block changed less than this (relative) since the last full step, reusing that step's result. "
            "Faster and lossy (docs/QUALITY.md measures it); not given: off, every step in full. The `fast` preset sets it.")
        preset: Literal[preset_names] | None = Field(  # type: ignore[valid-type]
            None, description=f"A named parameter set (GET /presets); fields you give win. {preset_help}.")

        @field_validator("prompt")
        @classmethod
        def _not_blank(cls, v: str) -> str:
            if not _NOT_BLANK.search(v):
                raise ValueError("prompt is blank")
            return v

        @field_validator("negative_prompt")
        @classmethod
        def _blank_negative_is_none(cls, v: str | None) -> str | None:
            return v if v and _NOT_BLANK.search(v) else None

        @model_validator(mode="after")
        def _resolve(self):
            # One validator, in this order: the preset fills what the request left out, then the rules.
            if self.preset is not None:
                for name, value in presets[self.preset].fields().items():
                    if name not in self.model_fields_set:
                        setattr(self, name, value)
            if self.seed is not None and self.seed + self.num_images - 1 > MAX_SEED:
                raise ValueError(f"seed + num_images - 1 must stay within {MAX_SEED}: image i has seed + i")
            if self.image is None and (self.mask is not None or self.strength is not None):
                raise ValueError("mask and strength go with an init image: give image, or leave them out")
            if self.image is not None and self.strength is None:
                self.strength = 1.0 if self.mask is not None else 0.8
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

    if not services:
        return GenerateRequest
    choices = (*services, "auto")

    class RoutedGenerateRequest(GenerateRequest):
        service: Literal[choices] = Field(  # type: ignore[valid-type]
            "auto", description="Which service draws it: " + ", ".join(services) + ", or auto (the one with the "
            "shorter expected wait). The same seed gives other bytes on another service: the response names "
            "the one that drew it.")

    RoutedGenerateRequest.__name__ = RoutedGenerateRequest.__qualname__ = "GenerateRequest"
    return RoutedGenerateRequest


# A callback URL, as the schema can say it: http or https, lower-case scheme, an ASCII host name or an
# IP literal (IPv6 in brackets), an optional port 1-65535, then a path or query of printable ASCII; no
# user:password@ (a secret that GET /jobs/{id} and the log would show) and no #fragment (never sent).
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
CALLBACK_URL = rf"^https?://(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::{_PORT})?(?:[/?][!-\"$-~]*)?$"
MAX_CALLBACK_URL = 2048
# callback_images goes with a callback_url (null counts as not given, as in the validator).
CALLBACK_RULE = {"required": ["callback_url"], "properties": {"callback_url": {"type": "string"}}}


def build_job_request(generate: type[BaseModel], settings: ServiceSettings) -> type[BaseModel]:
    """The POST /jobs body: the /generate body, plus callback_url and callback_images where webhooks are
    on (webhook_secret set). Where they are off the schema does not offer them (a callback_url is then
    refused by api/deps.job_body, saying why)."""
    extra = generate.model_config["json_schema_extra"]
    if settings.webhook_secret is None:
        class JobRequest(generate):
            """The /generate body (webhooks are off on this service: no callback_url)."""

        return JobRequest

    class JobRequest(generate):
        model_config = ConfigDict(**STRICT, json_schema_extra={
            **extra, "dependentSchemas": {**extra["dependentSchemas"], "callback_images": CALLBACK_RULE},
            "examples": [{"prompt": "a lighthouse on a cliff at dusk", "seed": 42,
                          "callback_url": "https://example.com/hooks/flux"}]})

        callback_url: str | None = Field(
            None, max_length=MAX_CALLBACK_URL, pattern=CALLBACK_URL,
            description="Where to POST the job's final state when it ends (done, failed, cancelled or timed out), "
            "signed with HMAC-SHA256 (README: Webhooks). Public addresses only, unless the service's "
            "webhook_allow_hosts lists it; redirects are not followed.")
        callback_images: bool = Field(
            False, description="With callback_url: put the images in the callback as base64. Default: links "
            "(GET /v1/images/files/{token}, kept as long as finished jobs).")

        @model_validator(mode="after")
        def _callback(self):
            if "callback_images" in self.model_fields_set and self.callback_url is None:
                raise ValueError("callback_images goes with a callback_url; without one it would be ignored")
            return self

    return JobRequest


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
    image: str = Field(description="The image, base64-encoded (the first, with num_images > 1).")
    format: OutputFormat
    seed: int = Field(description="The seed actually used (drawn at random when the request gave none).")
    images: list[str] | None = Field(None, description="Every image, with num_images > 1 (image is images[0]).")
    seeds: list[int] = Field(description="The seed of each image: seed, seed+1, ...")
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str | None
    true_cfg_scale: float | None
    first_block_cache: float | None = Field(None, description="The First Block Cache threshold it ran with; null: off.")
    steps_skipped: int | None = Field(
        None, description="With first_block_cache: the transformer passes (of steps x images, twice a step with a "
        "negative prompt) that reused the last full step's result instead of running every block.")
    model: str
    backend: str
    service: str = Field(description="The service that drew it (fp4 or bf16): reproducing an image means naming it.")
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
    step: int = Field(description="Denoising steps done, over all its images.")
    total_steps: int = Field(description="Steps of all its images (image-to-image runs steps x strength each).")
    image: int = Field(description="The image (1-based) being made, of num_images.")
    num_images: int
    eta_s: float | None = Field(description="Seconds left, from the steps so far; null until a step is done.")
    replica: int | None = Field(description="The replica running it, once it runs.")
    queue_ms: float = Field(description="Time spent waiting for a replica.")
    cancel_requested: bool
    error: JobError | None = Field(description="Why it failed, was cancelled or timed out.")
    request_id: str | None


class JobList(BaseModel):
    """GET /jobs: the jobs still on record, newest first."""

    jobs: list[JobState]


class JobLinks(BaseModel):
    self: str
    events: str


class JobCreated(JobState):
    links: JobLinks


class WebhookAttempt(BaseModel):
    at: float = Field(description="When it started (Unix time, seconds).")
    duration_ms: float
    address: str | None = Field(description="The checked IP address connected to (none if refused or unresolved).")
    status_code: int | None = Field(description="The receiver's HTTP status; null when there was no answer.")
    error: str | None = Field(description="Why it failed, when it did (timeout, connection error, refused, ...).")


class WebhookStatus(BaseModel):
    url: str = Field(description="The callback URL, without its query string (which may carry a token).")
    delivery_id: str = Field(description="X-Flux-Delivery-Id: the same on every attempt, for de-duplication.")
    state: Literal["waiting", "delivering", "delivered", "failed"] = Field(
        description="waiting: for the job to end, or for the next attempt; failed: every attempt used, the deadline "
        "passed, the address was refused, the receiver answered a 3xx or 4xx other than 429, or the service shut down.")
    attempts: list[WebhookAttempt]
    next_attempt_in_s: float | None = Field(description="Seconds until the next attempt, while one is scheduled.")
    error: str | None = Field(description="Why it failed, once it has.")


class JobDetail(JobState):
    result: GenerateResponse | None = Field(description="The /generate body, once the job is done.")
    webhook: WebhookStatus | None = Field(None, description="The callback's delivery, when the job has a callback_url.")


class CallbackResult(GenerateResponse):
    """The /generate body in a callback: the images as links (`urls`) unless callback_images was true."""

    image: str | None = Field(None, description="The image, base64, with callback_images; else null.")
    urls: list[str] | None = Field(None, description="A link to each image (GET /v1/images/files/{token}), "
                                   "without callback_images.")


class CallbackJob(JobState):
    result: CallbackResult | None


class WebhookPayload(BaseModel):
    """The body POSTed to a callback_url (README: Webhooks)."""

    type: Literal["job.ended"]
    delivery_id: str
    job: CallbackJob


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

    lora_name: LoraName | None = Field(
        None, min_length=1, max_length=MAX_LORA_NAME, json_schema_extra={"pattern": LORA_NAME},
        description="Unpin this one (a LoRA neither pinned nor loaded is a 404); omit to unpin all.")


class ErrorDetail(BaseModel):
    type: str
    message: str
    code: int
    request_id: str
    details: dict | list | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error, as OpenAI's API says.")
    param: str | None = Field(description="The request parameter at fault, if one is.")
    code: str | None = Field(description="This service's own error type (validation_error, lora_not_found, ...).")


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail
    request_id: str
