"""Everything a request is checked for before it queues: what needs no GPU never waits for one.

Runs in the request's own path (a thread of the HTTP layer, never the event loop, never a worker):
readiness, the compile refusal, and each named LoRA found (folder or Hub), readable, fitting this
model's layers, and hashed. A bad request fails in milliseconds, even while every GPU is busy, and
never takes a queue slot. The worker re-checks each file's hash before it loads it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..errors import InvalidRequest
from .lora import LoraFile, LoraResolver, LoraSpec, check_lora_fits, file_sha256, inspect_lora


class LoraChecker:
    """Finds and checks LoRA files against one model. A file version (its hash) that passed is not
    read again: a request naming a loaded LoRA costs a stat, not a parse."""

    def __init__(self, resolver: LoraResolver, max_remembered: int = 512):
        self.resolver = resolver
        self._passed: set[tuple[str, str]] = set()  # (path, sha256) that fit this model
        self._lock = threading.Lock()
        self._max = max_remembered

    def check(self, loras: Iterable[LoraSpec], pipe, fit: bool = True) -> dict[str, LoraFile]:
        """Each LoRA's file, checked (against `pipe`'s layers too, where `fit`); the first problem
        raises (LoraNotFound, InvalidLora, ...)."""
        files = {}
        for spec in loras:
            found = self.resolver.resolve(spec.name)
            sha = file_sha256(found.path)
            key = (str(found.path), sha)
            with self._lock:
                passed = key in self._passed
            if not passed:
                inspect_lora(found.path)  # a damaged or non-LoRA file never reaches the model
                if fit:
                    check_lora_fits(pipe, found.path, spec.name)
                with self._lock:
                    if len(self._passed) >= self._max:
                        self._passed.clear()
                    self._passed.add(key)
            files[spec.name] = found.checked(sha, fit)
        return files


def refuse_lora_if_compiled(loras, compile_mode: str, compile_setting: str, service: str) -> None:
    # Loading an adapter into a compiled transformer recompiles it; hotswap is not built yet.
    if loras and compile_mode != "none":
        raise InvalidRequest(
            f"LoRA is not available while the transformer is compiled (compile={compile_setting} -> regional): "
            f"loading one would recompile it; set FLUX_{service.upper()}_COMPILE=none for LoRA")
