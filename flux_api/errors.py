"""Domain errors. The engine raises these; api/errors.py is the one place that maps them to HTTP.

Each error carries a stable `type` string that clients can switch on, and a human message that says
what went wrong and, where there is one, what to do about it.
"""

from __future__ import annotations


class FluxAPIError(Exception):
    """Base of every error the service reports to a client."""

    type = "internal_error"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class ModelNotReady(FluxAPIError):
    """The model is still loading, failed to load, or is not loaded."""

    type = "model_not_ready"

    def __init__(self, phase: str, message: str | None = None):
        super().__init__(message or f"the model is not ready (phase: {phase})", phase=phase)
        self.phase = phase


class ModelSourceError(FluxAPIError):
    """The configured model cannot be found or read (a start-up error)."""

    type = "model_source_error"


class HubAuthError(ModelSourceError):
    """The repo is gated or private and the token is missing or has no access."""

    type = "hub_auth_error"


class HubUnreachable(ModelSourceError):
    """The Hugging Face Hub could not be reached, and the files are not in the local cache."""

    type = "hub_unreachable"


class BackendUnavailable(FluxAPIError):
    """The chosen quantization backend cannot run here (package missing or GPU unsupported)."""

    type = "backend_unavailable"


class InvalidRequest(FluxAPIError):
    """A request that passed the schema but cannot be served as asked."""

    type = "invalid_request"


class LoraNotFound(FluxAPIError):
    type = "lora_not_found"


class InvalidLora(FluxAPIError):
    """Refused LoRA: outside the LoRA folder, not safetensors, corrupt, or not fitting this model."""

    type = "invalid_lora"


class LoraNotAllowed(FluxAPIError):
    """Hub LoRAs are switched off for this owner (allowlist), or the repo is gated."""

    type = "lora_not_allowed"


class LoraHubUnreachable(FluxAPIError):
    type = "lora_hub_unreachable"


class QueueFull(FluxAPIError):
    type = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class JobNotFound(FluxAPIError):
    type = "job_not_found"


class JobCancelled(FluxAPIError):
    """The work was cancelled (DELETE /jobs/{id}, the client went away, or shutdown)."""

    type = "cancelled"


class GenerationTimeout(FluxAPIError):
    """Queue wait plus generation took longer than the request timeout; the run was stopped."""

    type = "timeout"


class GPUOutOfMemory(FluxAPIError):
    type = "out_of_memory"


class GenerationFailed(FluxAPIError):
    type = "generation_failed"
