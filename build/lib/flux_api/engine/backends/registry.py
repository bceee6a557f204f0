"""The backends by name, and choosing one.

Adding a backend: one module in this folder with its class, and one entry in BACKENDS. A service
offers some of them (its manager subclass says which, and in what order `auto` tries them).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import BackendUnavailable
from ..devices import Hardware
from .base import Backend
from .bitsandbytes import BnbFp4Backend, BnbNf4Backend
from .diffusers import DiffusersBackend
from .environment import Packages
from .nunchaku import NunchakuBackend
from .torchao import TorchaoFp8Backend, TorchaoInt8Backend

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (
    DiffusersBackend, NunchakuBackend, BnbFp4Backend, BnbNf4Backend, TorchaoFp8Backend, TorchaoInt8Backend,
)}


def select_backend(requested: str, offered: Sequence[str], order: Sequence[str], settings, hw: Hardware,
                   pkgs: Packages, order_note: str | None = None) -> Backend:
    """The backend to load: `requested` if it can run here, or for `auto` the first in `order` that can.
    Raises BackendUnavailable saying what to install or choose instead."""
    if requested != "auto":
        cls = BACKENDS.get(requested) if requested in offered else None
        if cls is None:
            raise BackendUnavailable(f"unknown backend {requested!r} for this service; choose one of {', '.join(offered)} or auto")
        problem = cls.problem(hw, pkgs)
        if problem:
            refusal = f"backend {cls.name} cannot run here: {problem}" if cls.alternatives else problem
            raise BackendUnavailable(refusal + (f". Otherwise {cls.alternatives}" if cls.alternatives else ""))
        return cls(settings, hw, pkgs, "requested")
    skipped = []
    for name in order:
        cls = BACKENDS[name]
        problem = cls.problem(hw, pkgs)
        if problem is None:
            why = "; ".join([*([order_note] if order_note else []), cls.chosen_because(hw),
                             *(f"not {n}: {p}" for n, p in skipped)])
            return cls(settings, hw, pkgs, why)
        skipped.append((name, problem))
    raise BackendUnavailable("no backend can run here: " + "; ".join(f"{n}: {p}" for n, p in skipped))
