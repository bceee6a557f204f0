"""Domain errors. The engine raises these; api/errors.py is the one place that maps them to HTTP.

Each error carries a stable `type` string that clients can switch on, and a human message that says
what went wrong and, where there is one, what to do about it.
"""

from __future__ import annotations

import re


class FluxAPIError(Exception):
    """Base of every error the service reports to a client. A subclass's `type` is its name in
    snake_case (LoraNotFound -> "lora_not_found") unless it sets one."""

    type = "internal_error"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "type" not in cls.__dict__:
            cls.type = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class ModelNotReady(FluxAPIError):
    """The model is still loading, failed to load, or is not loaded."""

    def __init__(self, phase: str, message: str | None = None):
        super().__init__(message or f"the model is not ready (phase: {phase})", phase=phase)
        self.phase = phase
        # While it loads, a retry soon will do (Retry-After); after a failure only /load-model helps.
        self.retry_after_s = 5 if phase in ("loading", "warming_up") else None


class ModelSourceError(FluxAPIError):
    """The configured model cannot be found or read (a start-up error)."""


class HubAuthError(ModelSourceError):
    """The repo is gated or private and the token is missing or has no access."""


class HubUnreachable(ModelSourceError):
    """The Hugging Face Hub could not be reached, and the files are not in the local cache."""


class BackendUnavailable(FluxAPIError):
    """The chosen quantization backend cannot run here (package missing or GPU unsupported)."""


class InvalidRequest(FluxAPIError):
    """A request that passed the schema but cannot be served as asked."""


class LoraNotFound(FluxAPIError):
    """The LoRA is neither in the LoRA folder nor on the Hub (or the Hub is switched off)."""


class LoraNotPinned(LoraNotFound):
    """/remove-lora named a LoRA that is neither pinned nor loaded: nothing to remove."""


class InvalidLora(FluxAPIError):
    """Refused LoRA: outside the LoRA folder, not safetensors, corrupt, or not fitting this model."""


class LoraNotAllowed(FluxAPIError):
    """Hub LoRAs are switched off for this owner (allowlist), or the repo is gated."""


class LoraHubUnreachable(FluxAPIError):
    """A Hub LoRA that is not in the local cache, while the Hub cannot be reached."""


class QueueFull(FluxAPIError):
    """Every place in the queue is taken (or the service is shutting down); retry after a while."""

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class CallbackNotAllowed(FluxAPIError):
    """A callback_url this service will not call: webhooks are off (no secret), or its address is refused
    by the address policy (not public and not in webhook_allow_hosts)."""


class JobNotFound(FluxAPIError):
    """No such job, or it finished long enough ago to be forgotten."""


class ResultNotFound(FluxAPIError):
    """No image behind that result link, or the link has expired."""


class JobAlreadyEnded(FluxAPIError):
    """A cancel that came too late: the job had already ended (its state is in the details)."""


class JobCancelled(FluxAPIError):
    """The work was cancelled (DELETE /jobs/{id}, or the client went away)."""

    type = "cancelled"


class ShuttingDown(JobCancelled):
    """The service is stopping: queued work was cancelled and new work is refused; retry elsewhere."""

    def __init__(self, message: str = "the service is shutting down; retry on another instance or later",
                 retry_after_s: int = 30):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClientDisconnected(JobCancelled):
    """The client went away before its answer; nobody reads this error, the log and metrics count it."""


class BodyNotAccepted(FluxAPIError):
    """A body sent to a route that takes none (it would be silently ignored)."""


class BodyTooLarge(FluxAPIError):
    """The request body is larger than the service accepts."""


class Unauthorized(FluxAPIError):
    """API keys are on and the request has no key, or not a valid one (the key is never repeated)."""


class GenerationTimeout(FluxAPIError):
    """Queue wait plus generation took longer than the request timeout; the run was stopped."""

    type = "timeout"


class GPUOutOfMemory(FluxAPIError):
    """The GPU (or the host) ran out of memory; the memory was freed and the service goes on."""

    type = "out_of_memory"


class GenerationFailed(FluxAPIError):
    """The pipeline failed in a way nobody foresaw; the service goes on."""
