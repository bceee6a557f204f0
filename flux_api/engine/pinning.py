"""The pinned LoRA set: what requests that name no LoRA get, the same on every replica.

Changes are broadcast to every replica's worker and run between two generations there. Requests read
the set under the same lock, so a request queued before a change and one after each see one whole set.
"""

from __future__ import annotations

import threading
from typing import Callable

from ..errors import LoraNotPinned
from .lora import LoraFile, LoraSpec


class LoraPinning:
    def __init__(self):
        self._pinned: tuple[LoraSpec, ...] = ()
        self._lock = threading.Lock()  # guards _pinned; held briefly, never across a broadcast
        self._changing = threading.Lock()  # one change at a time, held across its broadcast

    @property
    def pinned(self) -> tuple[LoraSpec, ...]:
        with self._lock:
            return self._pinned

    def names(self) -> set[str]:
        return {s.name for s in self.pinned}

    def apply(self, loras: tuple[LoraSpec, ...], files: dict[str, LoraFile], on_every_replica: Callable) -> None:
        """Pin `loras` on every replica. All of it loads, or nothing changes (each replica rolls back
        what it loaded)."""
        with self._changing:
            keep = self.names() | {s.name for s in loras}
            on_every_replica(lambda r: r.activate_loras(loras, keep, files))
            with self._lock:
                self._pinned = loras

    def remove(self, name: str | None, loaded: set[str], on_every_replica: Callable) -> None:
        """Unpin one LoRA, or all (name None); their adapters are deleted from every replica. All of it,
        or the pinned set stays as it was."""
        with self._changing:
            pinned = self.pinned
            if name is not None and name not in {s.name for s in pinned} and name not in loaded:
                raise LoraNotPinned(f"LoRA {name!r} is neither pinned nor loaded: nothing to remove")
            remaining = tuple(s for s in pinned if name is not None and s.name != name)
            keep = {s.name for s in remaining}
            # Every replica first; the pinned set changes only once all of them have dropped it (a
            # replica that fails leaves the set as it was, and a replica that already dropped the
            # adapter loads it again when a pinned request needs it).
            on_every_replica(lambda r: r.drop_loras(keep, only=name))
            with self._lock:
                self._pinned = remaining
