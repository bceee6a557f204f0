"""Configuration: one pydantic-settings class per service over a shared base.

Precedence, highest first: explicit arguments (the launch scripts' flags), environment variables
(`FLUX_FP4_*` / `FLUX_BF16_*`), the service's TOML file in config/, then the defaults below.
Settings are read once and passed in; nothing reads them from a module global.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from .limits import MAX_STEPS, ImageSide, OutputFormat

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """Where the services' TOML files are: FLUX_API_CONFIG_DIR if set; else the source tree's config/;
    else the copy that installing the package puts under <prefix>/share/flux_api/config (pyproject's
    data-files), so an installed service reads the same defaults as a checkout."""
    if os.environ.get("FLUX_API_CONFIG_DIR"):
        return Path(os.environ["FLUX_API_CONFIG_DIR"])
    installed = Path(sys.prefix) / "share" / "flux_api" / "config"
    source = PROJECT_ROOT / "config"
    return source if source.is_dir() or not installed.is_dir() else installed

Placement = Literal["auto", "single", "balanced", "replicas", "parallel"]
DType = Literal["auto", "bfloat16", "float16", "float32"]
FP4Backend = Literal["auto", "nunchaku", "bnb-fp4", "bnb-nf4", "torchao-fp8", "torchao-int8"]

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"


class Preset(BaseModel):
    """A named set of generation parameters; a field the request gives itself wins over its preset.
    Only what changes a request, never the model or the service."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0.0, le=20.0)
    first_block_cache: float | None = Field(None, gt=0.0, le=1.0)

    def fields(self) -> dict:
        """The request fields this preset sets."""
        return self.model_dump(exclude={"description"}, exclude_none=True)


# FLUX.1-dev's steps/quality trade-off; the config files carry the same, to be edited there.
DEFAULT_PRESETS = {
    "fast": Preset(description="drafts: fewer steps, and First Block Cache skips the steps that change little (lossy)",
                   num_inference_steps=12, first_block_cache=0.2),
    "balanced": Preset(description="the usual trade-off", num_inference_steps=25),
    "quality": Preset(description="more steps for fine detail", num_inference_steps=40),
}


# What the descriptions of issue 25's four levers say of their measurement and defaults.
_FOUR_LEVERS = ("Measured on an H100 together with the other three of compile_persistent_rows, fuse_qkv, "
                "precompute_modulation and split_group_norm (docs/PERFORMANCE.md, 2026-12-07: FP4 0.544x -> 0.514x "
                "stock, the image 47.1 dB from the defaults before; BF16 with its fused kernels, three of them and "
                "compile_vae + compile_text_encoder 0.738x -> 0.697x, the image 47.96 dB from BF16's defaults before): "
                "on by default on both services.")
# What compile_vae's and compile_text_encoder's descriptions say of their one end-to-end measurement (together).
_VAE_AND_T5 = ("Measured end to end on an H100 together with the other of compile_vae and compile_text_encoder "
               "(docs/PERFORMANCE.md, 2026-12-07, sixth session): FP4 inference 2667 -> 2653 ms (0.7%), time to ready "
               "88 -> 193 s on a cold inductor cache: off (issue 25 asks for time to ready not worse).")


class ServiceSettings(BaseSettings):
    """Everything both services share. Subclasses set the port, the env prefix and the TOML file."""

    service: ClassVar[str] = "base"
    config_file: ClassVar[str] = ""

    # hide_input_in_errors: a setting's value is never quoted in its error (it may be a secret: an API key
    # given as a string instead of a list, HF_TOKEN); the error names the setting and says what is wrong.
    model_config = SettingsConfigDict(extra="forbid", validate_default=True, populate_by_name=True,
                                      hide_input_in_errors=True)

    # --- network
    host: str = Field("127.0.0.1", description="Bind address. 0.0.0.0 exposes the service: a deliberate choice.")
    port: int = Field(8000, ge=1, le=65535)

    # --- model source
    model: str = Field(
        DEFAULT_MODEL,
        description="'tiny' (the small trained model shipped with the package), a local diffusers folder, or a Hugging Face repo id.",
    )
    model_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of a repo id model.")
    hf_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("hf_token", "HF_TOKEN"),
        description="Hugging Face token for gated repos. HF_TOKEN is honoured.",
    )
    cache_dir: Path = Field(Path("~/.cache/flux_api"), description="Where caches go (torch.compile's inductor cache).")

    # --- placement and precision
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when available, else CPU.")
    placement: Placement = Field(
        "auto",
        description="single: one device. balanced: one pipeline over the visible GPUs (device_map='balanced'). "
        "replicas: one pipeline per GPU, requests go to an idle one. parallel: one pipeline over the GPUs by "
        "context parallelism (one process per GPU, each image's tokens split between them): one image faster. "
        "auto: with several GPUs and a copy that fits one, replicas (placement_goal=throughput) or parallel "
        "(placement_goal=latency); balanced when a copy does not fit; single with one GPU.",
    )
    replicas: int | None = Field(None, ge=1, le=64, description="Pipelines in replicas mode (default: one per GPU).")
    placement_goal: Literal["throughput", "latency"] = Field(
        "throughput", description="What placement=auto serves on several GPUs: throughput (replicas: more images "
        "a minute when requests come together) or latency (parallel: each image sooner, for one request at a time)."
    )
    parallel_degree: int | None = Field(
        None, ge=2, le=8, description="Processes in placement=parallel (default: one per visible GPU). On the CPU "
        "it must be given: CPU processes over gloo (tests)."
    )
    parallel_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="placement=parallel: the longest one rank waits for another (a rank "
        "stuck: in a collective, joining the group at start-up, or answering rank 0); the request then fails "
        "and the group restarts."
    )
    dtype: DType = Field("auto", description="auto: bfloat16 on CUDA, float32 on the CPU.")

    # --- generation defaults and limits
    default_steps: int = Field(25, ge=1, le=MAX_STEPS)
    default_guidance: float = Field(3.5, ge=0.0, le=20.0)
    default_true_cfg_scale: float = Field(1.5, gt=1.0, le=10.0, description="Used when a negative prompt is given.")
    default_width: ImageSide = 1024
    default_height: ImageSide = 1024
    presets: dict[str, Preset] = Field(
        default_factory=lambda: dict(DEFAULT_PRESETS),
        description="Named parameter sets, usable as `preset` on every generation route (GET /presets lists them).")
    max_prompt_chars: int = Field(2000, ge=1, le=100_000)
    max_body_bytes: int = Field(48 << 20, ge=1024, description="Largest request body accepted; larger is a 413.")
    max_image_bytes: int = Field(16 << 20, ge=1024, description="Largest uploaded image or mask (decoded), in bytes.")
    max_image_pixels: int = Field(4096 * 4096, ge=256 * 256, description="Most pixels an uploaded image may have "
                                  "before it is decoded (a decompression bomb is refused unread).")
    public_base_url: str | None = Field(
        None, description="The URL clients reach this service at (behind a proxy), for result links; default: the "
        "URL the request came in on.")
    max_sequence_length: int = Field(512, ge=1, le=512, description="T5 token budget for the prompt.")
    output_format: OutputFormat = "png"
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level of PNG output. 1: runs only (zlib's RLE "
                                    "strategy), the fastest that compresses; 2-9: longer matches searched, smaller and "
                                    "slower; 0: stored.")
    jpeg_quality: int = Field(90, ge=1, le=100)
    queue_size: int = Field(16, ge=1, le=10_000, description="Requests waiting for the GPU before 429.")
    request_timeout_s: float = Field(300.0, gt=0, description="Queue wait plus generation, per request, before 504.")
    jobs_keep: int = Field(256, ge=1, description="Finished jobs kept for GET /jobs/{id}.")
    jobs_keep_s: float = Field(3600.0, gt=0, description="How long a finished job is kept.")

    # --- webhooks: POST /jobs's callback_url (api/webhooks.py, api/webhook_policy.py)
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key that signs every callback (X-Flux-Signature over '{timestamp}.{body}'); at "
        "least 16 characters. Unset: webhooks are off, and a callback_url is refused (422), never sent unsigned.")
    webhook_allow_hosts: list[str] = Field(
        default_factory=list, description="Host names, IP addresses or CIDR ranges a callback may reach although they "
        "are not public (loopback, private, link-local, CGNAT, reserved), e.g. [\"127.0.0.1\", \"10.2.0.0/16\", "
        "\"hooks.internal\"]. A name listed here may resolve to any address.")
    webhook_allow_public: bool = Field(
        True, description="Callbacks may reach any public address; false: only what webhook_allow_hosts lists.")
    webhook_max_attempts: int = Field(5, ge=1, le=20, description="Attempts per callback, the first included.")
    webhook_timeout_s: float = Field(10.0, gt=0, le=300, description="One attempt (resolve, connect, send, answer).")
    webhook_backoff_s: float = Field(1.0, gt=0, le=3600, description="Wait before the first retry; doubled before "
                                     "each next one (retries follow connection errors, timeouts, 5xx and 429).")
    webhook_deadline_s: float = Field(
        900.0, gt=0, description="No attempt starts later than this after the job ended; never later than jobs_keep_s "
        "(the job's record, where the attempts show, outlives every delivery).")
    webhook_shutdown_s: float = Field(5.0, ge=0, le=60, description="At shutdown, callbacks not yet delivered get one "
                                      "last attempt within this; those still undelivered are logged (WARNING).")

    # --- LoRA
    lora_dir: Path = Field(Path("loras"), description="Folder of .safetensors LoRA files.")
    lora_hub: bool = Field(True, description="Allow LoRAs from the Hugging Face Hub (owner/repo[/file.safetensors]).")
    lora_hub_owners: list[str] = Field(default_factory=list, description="If set, only these Hub owners' LoRAs load.")
    lora_max_mb: int = Field(2048, ge=1, description="Size cap for one LoRA file, in MiB.")
    lora_cache_size: int = Field(4, ge=1, le=64, description="LoRAs kept converted on the device (LRU): switching "
                                 "back to one is a copy into the LoRA slot, not a read of its file.")
    hub_endpoint: str | None = Field(
        None, description="Hugging Face Hub URL (a mirror) for everything the service fetches: the pre-flight, the "
        "size estimate, LoRAs, and (through HF_ENDPOINT, set at start-up) the pipeline's files. Default: HF_ENDPOINT "
        "or huggingface.co.")

    # --- speed
    compile: Literal["auto", "none", "regional"] = Field(
        "auto", description="regional: torch.compile the repeated transformer blocks at load, for every image size "
        "and for requests with and without LoRA (counted in time to ready; inductor's cache in cache_dir makes "
        "restarts quicker). Never compiles on a live request: /model-status counts compiles after the warm-up. "
        "auto: regional on a CUDA GPU for the diffusers (BF16) and torchao-fp8 backends, none on the CPU and "
        "for the others."
    )
    attention: Literal["auto", "sdpa", "cudnn", "cudnn-fp8"] = Field(
        "auto", description="The transformer's attention kernel (diffusers' attention backends). sdpa: PyTorch's "
        "scaled_dot_product_attention with its own choice of kernel. cudnn: cuDNN's fused attention forced "
        "(diffusers' _native_cudnn). Measured on an H100 with torch 2.11 (docs/PERFORMANCE.md): PyTorch already "
        "picks cuDNN at FLUX's shapes (0.399 ms a call at 1024 px, FlashAttention-2 0.780), so both give the same "
        "time; cudnn is for a torch that picks FlashAttention-2 there. cudnn-fp8: cuDNN's fused attention with q, k, "
        "v, the softmax and the output in e4m3 (per-tensor scales; the output back in bf16 after it; engine/fp8_attention.py): "
        "on Hopper or newer with cuDNN 9.14+ and nvidia-cudnn-frontend, one GPU per process; it changes the image (fp8 rounding). "
        "Measured on an H100 (docs/PERFORMANCE.md, 2026-12-07, seventh session): FP4 1% faster at 1024 px (2.712 -> "
        "2.686 s, the image 47.14 dB from the defaults'), 7% slower at 768 px: the kernel is about as fast as bf16 "
        "there (cuDNN 9.19), so auto does not choose it. "
        "auto: sdpa. cudnn and cudnn-fp8 need a CUDA GPU. A backend with its own attention (nunchaku) ignores it."
    )
    compile_autotune: bool = Field(
        False, description="With compile: inductor's coordinate-descent tuning of the compiled blocks' kernels "
        "(what torchao's recommended settings turn on). Measured on an H100 (docs/PERFORMANCE.md, one run): "
        "1.3-1.4% faster end to end on both services (FP4's fp8 blocks alone 4.3%), 2-2.3x the time to ready "
        "with a cold inductor cache; the tuned kernels are cached in cache_dir for restarts (not measured)."
    )
    compile_persistent_rows: bool = Field(
        True, description="With compile: inductor keeps rows of up to 4,096 values in registers (a persistent "
        "reduction: the row read once) where it would loop over rows wider than 1,024 (read two or three times): "
        "FLUX's 3,072-wide norms and per-row fp8 quantizations (engine/speed.py, persistent_row_choices). The "
        "same arithmetic in another kernel shape. " + _FOUR_LEVERS
    )
    fuse_qkv: bool = Field(
        True, description="Each attention's q, k and v projections (and the text stream's) as one Linear layer, "
        "their weights stacked by rows (diffusers' fused-projection path; engine/qkv.py): one GEMM of 9,216 "
        "outputs reading the input once instead of three of 3,072. Stacking is exact for bf16 and torchao fp8 per-row "
        "weights (on the CPU: the tiny model's images the same bytes, fp8 blocks bit for bit; a GPU's wider GEMM may "
        "round otherwise). LoRAs for q/k/v become one branch of the fused layer, whose slot holds three times "
        "lora_max_rank: about 2.7 MiB more per unit of rank on FLUX.1 for the slot and for each cached LoRA. Stacks "
        "nothing where the weights are 4-bit or int8 (the CPU's torchao-int8). " + _FOUR_LEVERS
    )
    fuse_rope: bool = Field(
        False, description="On a CUDA GPU, each attention's q/k RMSNorms, the text and image streams' concatenation, "
        "RoPE and the (B, H, S, D) layout the attention takes in one Triton kernel that reads q, k and v once "
        "(engine/qk_rope.py), where inductor makes several, the single blocks' a looped reduction: 5.4 ms of a 101 ms "
        "FP4 step in the 2026-12-06 H100 trace. diffusers' arithmetic (a value's last bit may differ from "
        "inductor's). Measured on an H100 (docs/PERFORMANCE.md, 2026-12-07, fourth session): slower, FP4 0.0958 -> "
        "0.0987 s a step end to end and LoRA / base 1.075 -> 1.099, its image 47.2 dB from the defaults': off (why it "
        "is slower is not known: its kernel probe has not run); /model-status compile.rope_fused counts the "
        "attention modules."
    )
    precompute_modulation: bool | Literal["auto"] = Field(
        "auto", description="Each norm's shift, scale and gate for all of a request's steps computed at its first "
        "step, one GEMM per norm (the weights read once instead of once a step: 77 one-row GEMVs of about 3.2 G "
        "weights a step on FLUX.1), each step then copying its row (engine/modulation.py). The same arithmetic "
        "up to the GEMM's rounding. Backends running diffusers' blocks whose norm weights keep their shape (not "
        "nunchaku; with bitsandbytes' packed 4-bit weights none is precomputed: /model-status says 0). auto: on a "
        "CUDA GPU in one process (not on the CPU, where the tiny model's images would change within a level; not "
        "with placement=parallel, not run there): the default. /model-status "
        "compile.modulation_precomputed counts the norms. " + _FOUR_LEVERS
    )
    split_group_norm: bool = Field(
        True, description="On a CUDA GPU, the VAE's GroupNorms take their statistics from a Triton kernel that "
        "splits each group over many programs (engine/group_norm.py), where ATen's reads each group in one thread "
        "block: 32 blocks for up to 536 MB, 47 ms of a 1024 px decode in the 2026-12-06 H100 trace. ATen's "
        "arithmetic (mean and 1/std kept in the input's dtype, one fp32 multiply-add per value) but for the "
        "variance's last bits. Not with compile_vae (inductor compiles the norms). " + _FOUR_LEVERS,
    )
    fuse_kernels: bool = Field(
        True, description="On a CUDA GPU, the backend's fused kernels. torchao-fp8: the activation quantization "
        "of each single block's proj_out and each feed-forward's output layer (GELU, concatenation, per-row amax "
        "and the fp8 cast) in one Triton kernel that reads the row once, instead of inductor's two passes "
        "(engine/fp8_fused.py). Measured on an H100 (docs/PERFORMANCE.md): FP4 end to end 3.029 -> 2.771 s at 1024 px, "
        "the image 47 dB from the unfused one (torchao's arithmetic with a fast tanh: 0.012-0.014% of its fp8 bytes "
        "differ from torchao's eager ones, 2.3-2.4% of inductor's for the same arithmetic). diffusers (BF16): the "
        "MLPs' GELU in the GEMM's epilogue and a single block's proj_out as two GEMMs instead of reading a "
        "concatenation (engine/bf16_fused.py): measured on an H100 with three of the four levers and compile_vae + "
        "compile_text_encoder (docs/PERFORMANCE.md, 2026-12-07, sixth session): BF16 3.872 -> 3.658 s at 1024 px, "
        "0.738x -> 0.697x stock, the image 47.96 dB from the defaults before. Off runs diffusers' and torchao's code "
        "as they are."
    )
    compile_vae: bool = Field(
        False, description="With compile: the VAE's decoder compiled too (dynamic shapes: one graph for every size, "
        "made at warm-up; not with memory_mode=low, whose tiled decode it is not measured with). Measured in "
        "isolation on an H100: a 1024 px decode 91 -> 38 ms, for about 16 s more compiling on a cold inductor "
        "cache (docs/PERFORMANCE.md). " + _VAE_AND_T5
    )
    compile_text_encoder: bool = Field(
        False, description="With compile: T5-XXL's blocks compiled too (each block's forward, dynamic shapes, made at "
        "warm-up; not with memory_mode=low). Eager, the text encoders took 38 ms a prompt at 512 tokens on an H100 "
        "(docs/PERFORMANCE.md), where T5's matrix products are about 10 ms of work by their count (4.8 TFLOP); the "
        "rest is presumably the many small kernels and the Python between them, which compiling fuses and removes. "
        "Each new prompt pays it (the prompt cache skips it for a repeated one); the embeddings move within the "
        "compiled kernels' rounding. " + _VAE_AND_T5
    )
    prompt_cache_size: int = Field(
        32, ge=0, le=4096, description="Prompts whose embeddings (CLIP and T5) are kept where they were encoded "
        "(the GPU; host memory in memory_mode=low), least recently used dropped first (engine/prompts.py): a "
        "request of n images, a retry or a new seed for the same prompt skips the text encoders. About 4 MiB "
        "each at 512 T5 tokens; the images are the same bytes. 0: off (where clients must not learn from "
        "timings that another sent a prompt)."
    )
    lora_max_rank: int = Field(
        64, ge=1, le=1024, description="The size of the LoRA slot made at load (lora_slot.py): the highest rank "
        "of one LoRA, and of the LoRAs of one request together. It costs memory (about 11 MiB per unit of rank "
        "on FLUX.1, in bf16; about 13.7 with fuse_qkv, whose q/k/v slot holds three times the rank) and a little time on requests with a LoRA; a LoRA over it gets a 422 naming it."
    )
    cuda_graphs: bool = Field(
        True, description="Replay the transformer step as a CUDA graph (one per image size) for requests without "
        "a LoRA: removes the CPU launch overhead that bounds small sizes. Output is bitwise the same. CUDA only; "
        "off in memory_mode=low."
    )
    memory_mode: Literal["default", "low"] = Field(
        "default", description="low: the BF16 service keeps the text encoders on the CPU (fits a 24 GiB card, about "
        "2 s slower per image); the FP4 service stores T5 in 4-bit nf4 and auto picks a 4-bit backend (fits 12 GiB). "
        "Both tile the VAE decode and turn CUDA graphs off."
    )
    warmup_sizes: list[ImageSide] = Field(
        default_factory=lambda: [1024, 512],
        description="Square sizes run once at load on a GPU (compiling, capturing CUDA graphs), so live requests "
        "do not pay for it.",
    )

    # --- access: API keys, /metrics, CORS (api/access.py)
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="API keys: when any is set, every route but the open ones (/health, /health/live, the docs, /ui, "
        "result links, and /metrics if metrics_open) needs `Authorization: Bearer <key>`; 401 otherwise. Empty: no "
        "keys needed. A JSON list in the environment: FLUX_FP4_API_KEYS='[\"k1\", \"k2\"]'.")
    metrics_open: bool = Field(True, description="GET /metrics needs no API key (for a Prometheus scraper without "
                               "one). false: it needs a key, as every other route does.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) whose browser pages may call this service (CORS); '*' for any. "
        "Empty: no CORS headers at all.")

    # --- start-up
    warmup: bool = Field(True, description="Run one small generation before /health reports ready.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ):
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_dir() / cls.config_file) if cls.config_file else None
        sources = [init_settings, env_settings]
        if toml is not None:
            sources.append(toml)
        return tuple(sources)

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("model must be 'tiny', a local folder or a Hugging Face repo id")
        return v

    @field_validator("lora_dir", "cache_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("presets")
    @classmethod
    def _preset_names(cls, v: dict) -> dict:
        import re

        bad = [name for name in v if not re.fullmatch(r"[a-z0-9_-]{1,32}", name)]
        if bad:
            raise ValueError(f"preset names are 1-32 of a-z 0-9 _ -: {bad}")
        return v

    @field_validator("api_keys")
    @classmethod
    def _keys_usable(cls, v: list[SecretStr]) -> list[SecretStr]:
        def numbers(bad: list[int]) -> str:  # which keys, by position: the keys themselves are never printed
            return f"API key number {', '.join(str(i + 1) for i in bad)} of {len(v)}"

        keys = [key.get_secret_value() for key in v]
        blank = [i for i, key in enumerate(keys) if not key.strip()]
        if blank:
            raise ValueError(f"{numbers(blank)} is blank or only whitespace: give each key a value, or remove it")
        # What a client can send in `Authorization: Bearer <key>` as it is: printable ASCII, no spaces.
        odd = [i for i, key in enumerate(keys) if not all("!" <= c <= "~" for c in key)]
        if odd:
            raise ValueError(f"{numbers(odd)} has a space or a character outside printable ASCII: an HTTP header "
                             "cannot carry it reliably")
        return v

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        import re

        # A browser's Origin header is scheme://host[:port], nothing after: "https://app.example/" never matches.
        bad = [o for o in v if o != "*" and not re.fullmatch(r"https?://[^/\s?#]+", o)]
        if bad:
            raise ValueError(f"CORS origins are scheme://host[:port] (no path, no trailing slash) or '*': {bad}")
        return v

    @model_validator(mode="after")
    def _body_fits_an_edit(self):
        # The largest legitimate body: an image and a mask of max_image_bytes each, base64 in JSON (4/3 of
        # their size) on /generate, plus room for the other fields. Multipart edits need less (raw bytes).
        needed = 2 * 4 * -(-self.max_image_bytes // 3) + (64 << 10)
        if self.max_body_bytes < needed:
            raise ValueError(f"max_body_bytes ({self.max_body_bytes}) is too small for an image and a mask of "
                             f"max_image_bytes ({self.max_image_bytes}) each: it must be at least {needed}")
        return self

    @field_validator("webhook_secret")
    @classmethod
    def _secret_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("webhook_secret must be at least 16 characters (a guessable key signs nothing)")
        return v

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _allow_hosts(cls, v: list[str]) -> list[str]:
        from .webhook_policy import parse_allow_entry

        for entry in v:
            parse_allow_entry(entry)  # ValueError names the entry
        return v

    @model_validator(mode="after")
    def _cuda_choice(self):
        if self.device == "cpu" and self.placement == "balanced":
            raise ValueError("placement=balanced needs CUDA GPUs; it cannot be combined with device=cpu")
        if self.device == "cpu" and self.placement == "parallel" and self.parallel_degree is None:
            raise ValueError("placement=parallel on the CPU needs parallel_degree (the number of processes)")
        if self.device == "cpu" and self.attention in ("cudnn", "cudnn-fp8"):
            raise ValueError(f"attention={self.attention} needs a CUDA GPU; it cannot be combined with device=cpu")
        if self.attention == "cudnn-fp8" and self.fuse_rope:
            raise ValueError("attention=cudnn-fp8 and fuse_rope both replace diffusers' attention processor: choose one")
        return self

    @property
    def token(self) -> str | None:
        return self.hf_token.get_secret_value() if self.hf_token else None


class BF16Settings(ServiceSettings):
    service: ClassVar[str] = "bf16"
    config_file: ClassVar[str] = "bf16.toml"
    model_config = SettingsConfigDict(env_prefix="FLUX_BF16_", extra="forbid", validate_default=True, populate_by_name=True)

    port: int = Field(8001, ge=1, le=65535)


class FP4Settings(ServiceSettings):
    service: ClassVar[str] = "fp4"
    config_file: ClassVar[str] = "fp4.toml"
    model_config = SettingsConfigDict(env_prefix="FLUX_FP4_", extra="forbid", validate_default=True, populate_by_name=True)

    port: int = Field(8000, ge=1, le=65535)
    backend: FP4Backend = Field(
        "auto",
        description="auto: nunchaku where it runs, torchao-fp8 on sm_89+, bnb-fp4 on other CUDA GPUs, "
        "torchao-int8 on the CPU.",
    )
    nunchaku_repo: str = Field(
        "nunchaku-tech/nunchaku-flux.1-dev",
        description="Hub repo (or local folder) of the Nunchaku SVDQuant FLUX.1-dev checkpoints.",
    )
    nunchaku_rank: int = Field(32, ge=1, description="SVDQuant low-rank branch rank of the checkpoint file.")


SETTINGS_CLASSES: dict[str, type[ServiceSettings]] = {"fp4": FP4Settings, "bf16": BF16Settings}
