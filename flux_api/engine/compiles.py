"""Counting torch.compile's work after the warm-up: the promise that no live request compiles.

TorchDynamo counts every graph it compiles (`counters["stats"]["unique_graphs"]`, process-wide: one
service is one process). The count at the end of the warm-up is the baseline; anything above it was
compiled on a live request. /model-status and /metrics show it, and the benchmark checks it stays 0.
Read without importing torch._dynamo where nothing was compiled (it is then 0 by construction).
"""

from __future__ import annotations

import contextlib
import sys


def compiled_graphs() -> int:
    """Graphs TorchDynamo has compiled in this process so far."""
    dynamo = sys.modules.get("torch._dynamo.utils")
    return int(dynamo.counters["stats"]["unique_graphs"]) if dynamo is not None else 0


class CompileWatch:
    def __init__(self):
        self.baseline: int | None = None  # set when the warm-up ends
        self.at_warmup_start = compiled_graphs()

    def start(self) -> None:
        self.baseline = compiled_graphs()

    @contextlib.contextmanager
    def reloading(self):
        """Graphs compiled inside are a reload's (placement=parallel rebuilding its group), not a live request's."""
        before = compiled_graphs()
        try:
            yield
        finally:
            if self.baseline is not None:
                self.baseline += compiled_graphs() - before

    @property
    def during_warmup(self) -> int:
        return (self.baseline if self.baseline is not None else compiled_graphs()) - self.at_warmup_start

    @property
    def after_warmup(self) -> int | None:
        return None if self.baseline is None else compiled_graphs() - self.baseline

    def status(self) -> dict:
        return {"graphs_compiled_at_load": self.during_warmup, "compiles_after_warmup": self.after_warmup}
