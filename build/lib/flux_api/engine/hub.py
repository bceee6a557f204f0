"""What went wrong talking to the Hugging Face Hub, as one word, so that each caller (model source,
LoRA) words its own message without repeating huggingface_hub's exception ladder."""

from __future__ import annotations


def hub_failure(e: BaseException) -> str | None:
    """'gated' | 'not_found' | 'no_revision' | 'no_file' | 'unreachable' | 'bad_token' | 'http', or None
    when `e` is not a Hub error. Order matters: GatedRepoError is a RepositoryNotFoundError, and a
    LocalEntryNotFoundError (offline, not cached) is an EntryNotFoundError."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return "gated"
    if isinstance(e, RepositoryNotFoundError):
        return "not_found"
    if isinstance(e, RevisionNotFoundError):
        return "no_revision"
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return "unreachable"
    if isinstance(e, EntryNotFoundError):
        return "no_file"
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return "bad_token" if status == 401 else "http"
    return None
