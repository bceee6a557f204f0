"""Where a LoRA comes from, and checking it before it touches the model.

A name is looked up in the LoRA folder first, then as a Hugging Face repo id (`owner/repo`, or
`owner/repo/file.safetensors` when the repo holds several files). Only `.safetensors` is read:
pickle formats can run code when loaded. A name that resolves outside the folder (`..`, an absolute
path, a symlink pointing out) is refused and never tried on the Hub. Hub downloads can be switched
off or limited to an allowlist of owners, are capped in size, and go through the Hugging Face cache.
"""

from __future__ import annotations

import errno
import hashlib
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from ..errors import InvalidLora, LoraHubUnreachable, LoraNotAllowed, LoraNotFound
from .hub import hub_failure

SUFFIX = ".safetensors"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+\.safetensors)?$")


@dataclass(frozen=True)
class LoraSpec:
    name: str
    weight: float

    def as_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight}


@dataclass(frozen=True)
class LoraFile:
    name: str
    path: Path
    source: str  # "folder" | "hub"
    sha256: str | None = None  # set once checked
    fit_checked: bool = False  # its tensors were checked against this model's layers

    def checked(self, sha256: str, fit_checked: bool = True) -> "LoraFile":
        return replace(self, sha256=sha256, fit_checked=fit_checked)


_HASHES: dict[tuple, str] = {}  # (path, size, mtime, inode) -> sha256: a file is hashed once per version
_HASHES_LOCK = threading.Lock()


def file_version(path: Path) -> tuple:
    st = Path(path).stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def file_sha256(path: Path, fresh: bool = False) -> str:
    """The file's SHA-256. Remembered per file version (path, size, mtime, inode) unless `fresh`: a
    check in the request's path costs a stat; the worker's re-check before a load reads every byte."""
    key = file_version(path)
    with _HASHES_LOCK:
        if not fresh and key in _HASHES:
            return _HASHES[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    with _HASHES_LOCK:
        if len(_HASHES) > 1024:
            _HASHES.clear()
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _check_name(name: str) -> PurePosixPath:
    if not name or not name.strip():
        raise InvalidLora("LoRA name is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidLora(f"LoRA name {name!r} contains a control character")
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or Path(name).is_absolute():
        raise InvalidLora(f"LoRA name {name!r} is an absolute path; give a name inside the LoRA folder")
    if ".." in rel.parts:
        raise InvalidLora(f"LoRA name {name!r} points outside the LoRA folder")
    if rel.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl"):
        raise InvalidLora(f"LoRA {name!r} is not a .safetensors file; pickle formats (.pt, .bin, .ckpt) are never read")
    return rel


def resolve_lora_path(lora_dir: Path, name: str) -> Path:
    """The file a LoRA name points to inside `lora_dir`. Raises InvalidLora or LoraNotFound."""
    rel = _check_name(name)
    if rel.suffix != SUFFIX:
        rel = rel.with_name(rel.name + SUFFIX)
    root = Path(lora_dir).resolve()
    try:
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise InvalidLora(f"LoRA {name!r} resolves outside the LoRA folder (a symlink pointing out?)")
        if not path.is_file():
            raise LoraNotFound(f"LoRA {name!r} was not found in the LoRA folder {root}")
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # no file can have that name, so none is there
            raise LoraNotFound(f"LoRA {name!r} was not found: the name is too long for a file name here") from e
        raise InvalidLora(f"LoRA name {name!r} cannot be looked up as a file: {e.strerror or e}") from e
    return path


class LoraResolver:
    """Turns a LoRA name into a local .safetensors file: the folder first, then the Hub."""

    def __init__(self, lora_dir: Path, hub: bool = True, owners: list[str] | None = None,
                 max_bytes: int = 2 * 2**30, token: str | None = None, endpoint: str | None = None):
        self.lora_dir, self.hub, self.owners = Path(lora_dir), hub, list(owners or [])
        self.max_bytes, self.token, self.endpoint = max_bytes, token, endpoint
        self._hub_paths: dict[str, Path] = {}

    @classmethod
    def from_settings(cls, s) -> "LoraResolver":
        return cls(s.lora_dir, s.lora_hub, s.lora_hub_owners, s.lora_max_mb * 2**20, s.token, s.hub_endpoint)

    def resolve(self, name: str) -> LoraFile:
        try:
            return LoraFile(name, resolve_lora_path(self.lora_dir, name), "folder")
        except LoraNotFound:
            if not _HUB_NAME.match(name):
                raise
            if not self.hub:
                raise LoraNotFound(f"LoRA {name!r} is not in the LoRA folder, and Hub LoRAs are switched off (lora_hub)") from None
            owner = name.split("/")[0]
            if self.owners and owner not in self.owners:
                raise LoraNotAllowed(f"Hub LoRAs are limited to the owners {', '.join(self.owners)}; {owner!r} is not one") from None
            # A Hub file found once is not looked up again (each look-up asks the Hub for the file's
            # current version): it is in the local cache, and the checks above still apply each time.
            path = self._hub_paths.get(name)
            if path is None or not path.is_file():
                path = self._hub_paths[name] = self._from_hub(name)
            self._check_size(name, path.stat().st_size)
            return LoraFile(name, path, "hub")

    # ------------------------------------------------------------------ the Hub

    def _from_hub(self, name: str) -> Path:
        from huggingface_hub import hf_hub_download

        from huggingface_hub.utils import HFValidationError, validate_repo_id

        parts = name.split("/")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
        try:
            validate_repo_id(repo)
        except HFValidationError:  # no repo can have that id, so there is none to find
            raise LoraNotFound(f"LoRA {name!r} is not in the LoRA folder, and {repo!r} cannot be a Hub repo id") from None
        try:
            filename = self._pick_file(repo, filename)
            path = Path(hf_hub_download(repo, filename, token=self.token or False, endpoint=self.endpoint))
        except Exception as e:
            kind = hub_failure(e)
            if kind is None:
                raise
            if kind == "gated":
                raise LoraNotAllowed(f"Hub LoRA {repo} is gated: accept its terms on the Hub and set HF_TOKEN") from e
            if kind in ("not_found", "no_revision"):
                raise LoraNotFound(f"Hub LoRA repo {repo} was not found") from e
            if kind == "no_file":
                raise LoraNotFound(f"Hub LoRA repo {repo} has no file {filename}") from e
            if kind == "unreachable":
                raise LoraHubUnreachable(f"the Hugging Face Hub could not be reached and {name} is not in the local cache") from e
            raise LoraHubUnreachable(f"the Hugging Face Hub failed for {name}: {e}") from e
        return path

    def _check_size(self, name: str, size: int | None) -> None:
        if size is not None and size > self.max_bytes:
            raise InvalidLora(f"LoRA {name} is {size / 2**20:.0f} MiB, over the {self.max_bytes / 2**20:.0f} MiB cap (lora_max_mb)")

    def _pick_file(self, repo: str, filename: str | None) -> str:
        """The file to download, its size checked before a byte of it is fetched: the named one, or
        the repo's one .safetensors file (with several, the client must say which)."""
        files, listed_by_hub = self._hub_files(repo)
        if filename is not None:
            if listed_by_hub and filename not in files:
                raise LoraNotFound(f"Hub LoRA repo {repo} has no file {filename}")
            self._check_size(f"{repo}/{filename}", files.get(filename))
            return filename
        if not files:
            raise LoraNotFound(f"Hub repo {repo} holds no .safetensors file")
        if len(files) > 1:
            raise InvalidLora(f"Hub repo {repo} holds several .safetensors files ({', '.join(sorted(files))}); "
                              f"name one as {repo}/<file>")
        (filename, size), = files.items()
        self._check_size(f"{repo}/{filename}", size)
        return filename

    def _hub_files(self, repo: str) -> tuple[dict[str, int | None], bool]:
        """The repo's .safetensors files and their sizes, and whether the Hub itself listed them."""
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            info = HfApi(endpoint=self.endpoint).model_info(repo, files_metadata=True, token=self.token or False)
            return {s.rfilename: s.size for s in info.siblings or [] if s.rfilename.endswith(SUFFIX)}, True
        except HfHubHTTPError:
            raise  # the Hub answered: not found, gated...
        except Exception:
            # Offline mode or no network: what the local cache holds of the repo is all we can know.
            snap = Path(snapshot_download(repo, local_files_only=True, token=self.token or False))
            return {p.relative_to(snap).as_posix(): None for p in snap.rglob(f"*{SUFFIX}")}, False


def _target_name(module: str) -> str:
    """'transformer.transformer_blocks.3.attn.to_out.0' -> 'attn.to_out.0': the module within its block."""
    parts = module.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return ".".join(parts[i + 1 :])
    return module.removeprefix("transformer.")


def inspect_lora(path: Path, lora_keys: bool = True) -> dict:
    """Rank and target modules, read from the tensors' names and shapes (no weights are loaded).
    `lora_keys=False` only asks for a readable safetensors file (for a backend with its own LoRA format)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            ranks, targets = set(), set()
            for k in keys:
                if ".lora_A." in k or ".lora_down." in k:
                    ranks.add(f.get_slice(k).get_shape()[0])
                    targets.add(_target_name(k.split(".lora_A.")[0].split(".lora_down.")[0]))
    except Exception as e:  # safetensors raises several types for a damaged header
        raise InvalidLora(f"LoRA file {path.name} is not a readable safetensors file: {e}") from e
    if not ranks and lora_keys:
        raise InvalidLora(f"LoRA file {path.name} holds no LoRA tensors (no lora_A / lora_down weights)")
    return {"rank": max(ranks, default=None), "target_modules": sorted(targets), "tensors": len(keys)}


def list_lora_folder(lora_dir: Path) -> list[dict]:
    """Every .safetensors file under the folder, with its size, rank and targets (or why not)."""
    root = Path(lora_dir)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        name = path.relative_to(root).as_posix()[: -len(SUFFIX)]
        try:
            resolve_lora_path(root, name)
        except (InvalidLora, LoraNotFound):
            continue  # symlinks out of the folder are not offered
        entry = {"name": name, "size_bytes": path.stat().st_size}
        try:
            entry.update(inspect_lora(path))
        except InvalidLora as e:
            entry["error"] = e.message
        out.append(entry)
    return out
