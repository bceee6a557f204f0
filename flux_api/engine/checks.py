"""Everything a request is checked for before it queues: what needs no GPU never waits for one.

Runs in the request's own path (never on the event loop, never on a GPU worker): readiness, and each
named LoRA found (folder or Hub), readable, fitting this model's layers and its adapters' limits (the
adapter set's `fit_check`), and hashed. A bad request fails in milliseconds, even while every GPU is busy, and never takes a queue
slot. The worker hashes each file again, in full, right before it loads it. (A pinned set that a
reload has to load again is found and inspected on the worker: there is no request to check it in.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import InvalidLora, LoraNotFound
from .lora import LoraFile, LoraResolver, LoraSpec, file_sha256, file_version, inspect_lora


class LoraChecker:
    """Finds and checks LoRA files against one model. A file version (its hash) that fitted is not
    fitted again: a request naming a loaded LoRA costs a stat and a header read, not a parse of its
    tensors. Concurrent requests for the same new file check it once."""

    def __init__(self, resolver: LoraResolver, max_remembered: int = 512):
        self.resolver = resolver
        self._passed: set[tuple] = set()  # (path, sha256, fit) that passed
        self._lock = threading.Lock()
        self._file_locks: dict[str, threading.Lock] = {}
        self._max = max_remembered

    def check(self, loras: Iterable[LoraSpec], fit: Callable[[Path, str], None] | None) -> dict[str, LoraFile]:
        """Each LoRA's file, checked (and `fit(path, name)`, the adapter set's check against this model,
        where given: a backend with its own LoRA format has none). 1. Find and inspect every file, so a
        missing one is reported before one that does not fit, as the model would meet them; 2. hash
        each and check that it fits."""
        found = {}
        for spec in loras:
            found[spec.name] = self.resolver.resolve(spec.name)
            inspect_lora(found[spec.name].path, lora_keys=fit is not None)  # its header only: milliseconds
        return {name: self._hash_and_fit(f, fit) for name, f in found.items()}

    def _hash_and_fit(self, f: LoraFile, fit: Callable[[Path, str], None] | None) -> LoraFile:
        with self._lock:
            file_lock = self._file_locks.setdefault(str(f.path), threading.Lock())
        with file_lock:
            try:
                before = file_version(f.path)
                sha = file_sha256(f.path)
            except FileNotFoundError:
                raise LoraNotFound(f"LoRA {f.name!r} disappeared while it was being checked") from None
            except OSError as e:
                raise InvalidLora(f"LoRA {f.name!r} cannot be read: {e}") from e
            key = (str(f.path), sha, fit is not None)
            with self._lock:
                passed = key in self._passed
            if not passed:
                if fit is not None:
                    fit(f.path, f.name)
                if file_version(f.path) != before:  # what was checked may not be what was hashed
                    raise InvalidLora(f"LoRA {f.name!r} changed while it was being checked; send the request again")
                with self._lock:
                    if len(self._passed) >= self._max:
                        self._passed.clear()
                    self._passed.add(key)
        return f.checked(sha, fit is not None)
