"""Where the model comes from: 'tiny', a local diffusers folder, or a Hugging Face repo id.

`resolve_source` decides which, and `check_source` is the pre-flight that runs before the service
starts: a gated repo without a token, a token without access, a missing repo and an unreachable Hub
each stop start-up with their own message, instead of surfacing later as a stack trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HubAuthError, HubUnreachable, ModelSourceError
from .hub import hub_failure
from .tiny import tiny_model_dir

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "tiny" | "local" | "hub"
    spec: str  # what the settings said
    location: str  # what from_pretrained gets: a folder or a repo id
    revision: str | None = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "location": self.location, "revision": self.revision}


def resolve_source(spec: str, cache_dir: Path, revision: str | None = None) -> ModelSource:
    """Decide what `spec` names. Cheap: nothing is built or downloaded here."""
    if spec == "tiny":
        return ModelSource("tiny", spec, str(tiny_model_dir(cache_dir)))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelSourceError(f"model folder {path} is not a diffusers pipeline folder: it has no model_index.json")
        return ModelSource("local", spec, str(path.resolve()))
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") != 1
    if looks_like_path or not _REPO_ID.match(spec):
        raise ModelSourceError(
            f"model {spec!r} is neither 'tiny', an existing folder, nor a Hugging Face repo id (owner/name)"
        )
    return ModelSource("hub", spec, spec, revision)


def check_source(source: ModelSource, token: str | None, endpoint: str | None = None) -> None:
    """Pre-flight a Hub model by fetching its model_index.json (from the cache when offline)."""
    if source.kind != "hub":
        return
    from huggingface_hub import hf_hub_download

    repo = source.location
    page = f"https://huggingface.co/{repo}"
    try:
        hf_hub_download(repo, "model_index.json", revision=source.revision, token=token or False, endpoint=endpoint)
    except Exception as e:
        kind = hub_failure(e)
        if kind is None:
            raise
        if kind == "gated" and not token:
            raise HubAuthError(f"{repo} is a gated model and no Hugging Face token is set: accept its licence at "
                               f"{page}, then set HF_TOKEN to a token of that account") from e
        if kind == "gated":
            raise HubAuthError(f"{repo} is gated and the HF_TOKEN given has no access to it: accept the licence at "
                               f"{page} with the account that owns the token") from e
        if kind == "not_found":
            hint = "" if token else " (if it is private, set HF_TOKEN)"
            raise ModelSourceError(f"model repo {repo} was not found on the Hugging Face Hub{hint}") from e
        if kind == "no_revision":
            raise ModelSourceError(f"revision {source.revision!r} of {repo} was not found") from e
        if kind == "no_file":
            raise ModelSourceError(f"{repo} has no model_index.json: it is not a diffusers pipeline repo") from e
        if kind == "bad_token":
            raise HubAuthError(f"the Hugging Face Hub rejected the token (401) for {repo}: check HF_TOKEN") from e
        if kind == "unreachable":
            raise HubUnreachable(f"the Hugging Face Hub could not be reached and {repo} is not in the local cache "
                                 "(with HF_HUB_OFFLINE=1 only cached models load; check the network or HF_HOME)") from e
        raise HubUnreachable(f"the Hugging Face Hub failed for {repo}: {e}") from e


# FLUX.1-dev's bf16 component sizes, for when a Hub model's files cannot be listed.
_FLUX_DEV_BYTES = {"transformer": 23_802_932_552, "text_encoder_2": 9_524_621_424,
                   "text_encoder": 246_144_352, "vae": 167_666_902}


def estimate_pipeline_bytes(source: ModelSource, transformer_factor: float = 1.0, endpoint: str | None = None) -> int | None:
    """Bytes of weights one pipeline holds, from the files (the transformer scaled by its storage
    factor: ~0.28 for 4-bit). None when they cannot be known."""
    sizes: dict[str, int] = {}
    if source.kind in ("tiny", "local"):
        root = Path(source.location)
        for f in root.glob("*/*.safetensors"):
            sizes[f.parent.name] = sizes.get(f.parent.name, 0) + f.stat().st_size
    else:
        try:
            from huggingface_hub import HfApi

            info = HfApi(endpoint=endpoint).model_info(source.location, revision=source.revision, files_metadata=True)
            for s in info.siblings or []:
                if s.rfilename.endswith(".safetensors") and "/" in s.rfilename and s.size:
                    comp = s.rfilename.split("/")[0]
                    sizes[comp] = sizes.get(comp, 0) + s.size
        except Exception:  # offline, or the Hub would not say
            sizes = dict(_FLUX_DEV_BYTES) if source.location == "black-forest-labs/FLUX.1-dev" else {}
    if not sizes:
        return None
    return int(sum(v * (transformer_factor if k == "transformer" else 1.0) for k, v in sizes.items()))
