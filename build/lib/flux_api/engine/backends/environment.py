"""What is installed: the quantization packages a backend may need, found without importing them.

`Packages` is a plain value, so backend choices are tested with named stand-ins for packages that are
not on the test machine (the real Nunchaku above all).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NunchakuProbe:
    installed: bool
    real: bool = False  # the SVDQuant package, with its compiled nunchaku._C
    version: str | None = None
    location: str | None = None


def probe_nunchaku() -> NunchakuProbe:
    """Find a `nunchaku` package without importing it, and tell the real one from its PyPI namesake.

    The real Nunchaku ships a compiled extension `nunchaku._C` and a `+torch` local version tag; the
    unrelated PyPI project of the same name has neither.
    """
    spec = importlib.util.find_spec("nunchaku")
    if spec is None:
        return NunchakuProbe(installed=False)
    try:
        version = importlib.metadata.version("nunchaku")
    except importlib.metadata.PackageNotFoundError:
        version = None
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    has_ext = any(any(d.glob("_C*.so")) or any(d.glob("_C*.pyd")) for d in dirs)
    location = str(dirs[0]) if dirs else spec.origin
    return NunchakuProbe(installed=True, real=has_ext, version=version, location=location)


@dataclass(frozen=True)
class Packages:
    nunchaku: NunchakuProbe
    bitsandbytes: bool
    torchao: bool

    @classmethod
    def detect(cls) -> "Packages":
        has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
        return cls(nunchaku=probe_nunchaku(), bitsandbytes=has("bitsandbytes"), torchao=has("torchao"))
