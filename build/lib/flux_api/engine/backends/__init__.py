"""One module per way of storing the transformer (bf16, bitsandbytes 4-bit, torchao fp8/int8,
Nunchaku SVDQuant), and the registry that chooses among them."""

from .base import Backend
from .environment import NunchakuProbe, Packages, probe_nunchaku
from .nunchaku import nunchaku_precision
from .registry import BACKENDS, select_backend

__all__ = ["BACKENDS", "Backend", "NunchakuProbe", "Packages", "nunchaku_precision", "probe_nunchaku", "select_backend"]
