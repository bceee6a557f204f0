"""The LoRA adapters of one pipeline: which are loaded (an LRU cache), which are active, and changing
that atomically. Each replica has its own set and changes it only on its own worker thread."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
from collections import OrderedDict

from ..errors import FluxAPIError, GenerationFailed, GPUOutOfMemory, InvalidLora, LoraNotFound
from .lora import LoraFile, LoraResolver, LoraSpec, file_sha256, file_version, inspect_lora

log = logging.getLogger(__name__)


def lora_load_error(e: Exception, names: str, backend: str) -> FluxAPIError:
    """What a failed LoRA load means for the client: only a file that does not fit is its fault (422).
    Running out of memory is the service's state (503, memory freed, retry later); anything else is
    an unforeseen failure (500, logged with its traceback). Call it inside the `except`."""
    import torch

    if isinstance(e, FluxAPIError):
        return e
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        return GPUOutOfMemory(f"out of memory while loading LoRA {names} ({backend} backend); the memory was "
                              "freed and nothing changed: retry later, or with fewer LoRAs")
    mismatch = isinstance(e, RuntimeError) and any(w in str(e) for w in ("size mismatch", "shape"))
    if isinstance(e, (ValueError, KeyError, TypeError)) or mismatch or type(e).__name__ == "SafetensorError":
        return InvalidLora(f"LoRA {names} cannot be loaded into this model ({backend} backend): {e}")
    log.exception("loading LoRA %s failed", names)
    return GenerationFailed(f"loading LoRA {names} failed unexpectedly ({type(e).__name__}: {e}); nothing "
                            "changed, see the server log")


def lora_metadata(data: bytes) -> dict | None:
    """diffusers' LoRA metadata (the LoraConfig it saved: rank, alpha, patterns) from a safetensors file's
    bytes, as diffusers reads it from a path (`lora_adapter_metadata` in the header). A dict of tensors
    loses it, and without it a LoRA saved with alpha != rank would load at the wrong scale."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    raw = (header.get("__metadata__") or {}).get("lora_adapter_metadata")
    return json.loads(raw) if raw else None


class AdapterSet:
    """The LoRA adapters of one pipeline, whatever holds them: which LoRAs are loaded (an LRU cache of
    `cache_size`), their files and hashes, which set is active, and changing that atomically. A
    subclass says how an adapter is checked, loaded, deleted, switched on and off
    (`lora_slot.SlotAdapterSet`, the default; the Nunchaku backend's own)."""

    lora_keys = True  # files must hold lora_A/lora_down tensors (a backend with its own format says no)

    def __init__(self, pipe, resolver: LoraResolver, cache_size: int, backend: str):
        self.pipe, self.resolver, self.cache_size, self.backend = pipe, resolver, cache_size, backend
        self.adapters: OrderedDict[str, str] = OrderedDict()  # LoRA name -> adapter name, LRU order
        self.sources: dict[str, str] = {}  # LoRA name -> "folder" | "hub"
        self.hashes: dict[str, str] = {}  # LoRA name -> the sha256 of the file its adapter was loaded from
        self.paths: dict[str, object] = {}  # LoRA name -> its file, and that file's version when loaded
        self.versions: dict[str, tuple] = {}
        self.active: tuple[LoraSpec, ...] | None = ()  # what the pipeline is set to; None: unknown
        self._counter = 0
        self._names = threading.Lock()  # the worker changes the name maps, other threads read them

    # ------------------------------------------------------------------ what a subclass says

    def fit_check(self, path, name: str) -> None:
        """Raise InvalidLora when the file cannot go into this model (in the request's path: no GPU)."""
        raise NotImplementedError

    def check_together(self, loras: tuple[LoraSpec, ...], files: dict[str, LoraFile]) -> None:
        """Raise InvalidLora when these LoRAs cannot be active at once (each one fits on its own)."""

    def _load_adapter(self, file: LoraFile, state: dict, adapter: str, metadata: dict | None) -> None:
        """Load the file's tensors (`state`) and diffusers' LoRA metadata (its LoraConfig, if the file
        has one) as `adapter`."""
        raise NotImplementedError

    def _delete_adapter(self, adapter: str) -> None:
        raise NotImplementedError

    def _switch_off(self) -> None:
        raise NotImplementedError

    def _switch_to(self, loras: tuple[LoraSpec, ...], adapters: list[str]) -> None:
        raise NotImplementedError

    def graph_variant(self):
        """The CUDA graph variant the active set runs, or None to run the ordinary forward."""
        return "base" if not self.active else None

    def warm_variants(self):
        """For the warm-up: switch to each variant a LoRA request runs, yielding once per variant."""
        yield from ()

    def slot_status(self) -> dict | None:
        """What /lora-status says of the adapters' own structure (None: nothing to say)."""
        return None

    # ------------------------------------------------------------------ bookkeeping

    def loaded(self) -> list[dict]:
        with self._names:
            return [{"name": n, "source": self.sources.get(n)} for n in self.adapters]

    def files_to_load(self, loras: tuple[LoraSpec, ...], checked: dict[str, LoraFile] | None) -> dict[str, LoraFile]:
        """The file of every LoRA not loaded yet, before any is loaded: one bad name changes nothing.
        A file checked in the request's path is re-checked by its hash (it may have changed while the
        request waited); one that was not (a pinned set) is found and inspected here."""
        files = {}
        for s in loras:
            if s.name in self.adapters:
                continue
            if checked and s.name in checked:
                files[s.name] = checked[s.name]  # _load hashes the very bytes it loads against the check
            else:
                found = self.resolver.resolve(s.name)
                inspect_lora(found.path, self.lora_keys)  # a damaged or non-LoRA file never reaches the model
                files[s.name] = found.checked(file_sha256(found.path, fresh=True), fit_checked=False)
        return files

    def drop_stale(self, loras: tuple[LoraSpec, ...], checked: dict[str, LoraFile] | None) -> None:
        """Drop a loaded adapter whose file has changed since it was loaded, so that it loads again from
        the new bytes: for a LoRA the request named, its check hashed the file as it is now; for one it
        did not (the pinned set), a stat says whether the file is still the one loaded. A pinned LoRA
        whose file is gone fails the request (LoraNotFound), as naming it would: what a request gets
        follows the files, never what other clients happened to send before."""
        for s in loras:
            if s.name not in self.adapters:
                continue
            new = checked.get(s.name) if checked else None
            if new is not None:
                if self.hashes.get(s.name) != new.sha256:
                    self.drop(s.name)
                continue
            try:
                unchanged = file_version(self.paths[s.name]) == self.versions.get(s.name)
            except FileNotFoundError:
                raise LoraNotFound(f"LoRA {s.name!r} (pinned) is gone from disk; re-apply or remove it") from None
            if not unchanged:
                self.drop(s.name)

    def activate(self, loras: tuple[LoraSpec, ...], pinned: set[str] = frozenset(),
                 checked: dict[str, LoraFile] | None = None) -> None:
        """Make exactly `loras` active (none: the base model). All of it, or nothing changes."""
        self.drop_stale(loras, checked)
        if self.active is not None and self.active == loras:
            return
        if not loras:
            self._switch_off()
        else:
            files = self.files_to_load(loras, checked)
            keep = {s.name for s in loras} | set(pinned)
            try:
                names = [self.adapters[s.name] if s.name in self.adapters else self._load(files[s.name], keep)
                         for s in loras]
            except Exception:
                for n in files:
                    if n in self.adapters:
                        self.drop(n)
                self.active = None
                raise
            self._switch_to(loras, names)
            with self._names:
                for s in loras:
                    self.adapters.move_to_end(s.name)
        self.active = loras

    def _load(self, file: LoraFile, keep: set[str]) -> str:
        if not file.fit_checked:
            self.fit_check(file.path, file.name)
        state, metadata, version = self._read(file)
        self._counter += 1
        adapter = f"lora_{self._counter}"
        try:
            self._load_adapter(file, state, adapter, metadata)
        except Exception as e:
            self._delete_adapter(adapter)
            raise lora_load_error(e, repr(file.name), self.backend) from e
        with self._names:
            self.adapters[file.name] = adapter
            self.sources[file.name] = file.source
            self.hashes[file.name] = file.sha256
            self.paths[file.name], self.versions[file.name] = file.path, version
        self.active = None  # loading an adapter changes which adapters are active
        for name in list(self.adapters):  # evict least recently used, never what is needed now
            if len(self.adapters) <= self.cache_size:
                break
            if name not in keep:
                self.drop(name)
        return adapter

    @staticmethod
    def _read(file: LoraFile) -> tuple[dict, dict | None, tuple]:
        """The file's tensors and diffusers' LoRA metadata, read once into memory, and its version. Never
        memory-mapped: diffusers would keep the mapping as the adapter's weights, so a file overwritten
        in place would change them behind our back, or kill the process with SIGBUS when it shrinks.
        The bytes loaded are the bytes hashed: they must be the ones the request's check saw."""
        from safetensors.torch import load

        try:
            version = file_version(file.path)
            data = file.path.read_bytes()
        except FileNotFoundError:
            raise LoraNotFound(f"LoRA {file.name!r} disappeared after it was checked; send the request again") from None
        if file.sha256 is not None and hashlib.sha256(data).hexdigest() != file.sha256:
            raise InvalidLora(f"LoRA {file.name!r} changed on disk after it was checked; send the request again")
        try:
            return load(data), lora_metadata(data), version
        except Exception as e:
            raise InvalidLora(f"LoRA {file.name!r} is not a readable safetensors file: {e}") from e

    def drop(self, name: str) -> None:
        with self._names:
            self.sources.pop(name, None)
            self.hashes.pop(name, None)
            self.paths.pop(name, None)
            self.versions.pop(name, None)
            adapter = self.adapters.pop(name)
        self._delete_adapter(adapter)
        self.active = None  # what is switched on may have been this adapter: set it again on next use

    def drop_all_but(self, keep: set[str], only: str | None = None) -> None:
        for n in [n for n in self.adapters if n not in keep and (only is None or n == only)]:
            self.drop(n)
