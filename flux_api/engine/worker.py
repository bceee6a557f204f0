"""The explicit queue in front of the pipeline.

One thread owns the pipeline. Everything that runs it or changes it (generation, LoRA changes) is a
job on this queue, so a LoRA change can never happen under a running generation, and the event loop
never runs model code. The queue is bounded: a full queue is refused at once (QueueFull -> 429)
instead of piling up unbounded work.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from ..errors import QueueFull


class GPUWorker:
    def __init__(self, max_pending: int, name: str = "flux-gpu"):
        self.max_pending = max_pending
        self._name = name
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # queued + running
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Jobs accepted and not finished (the running one included)."""
        return self._pending

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> Future:
        """Queue `fn(*args, **kwargs)`; the caller's context (request id for logs) travels with it."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise QueueFull(f"the queue is full ({self.max_pending} requests waiting or running); retry later")
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        fut: Future = Future()
        ctx = contextvars.copy_context()
        self._q.put((fut, ctx, fn, args, kwargs))
        return fut

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fut, ctx, fn, args, kwargs = item
            try:
                # A job whose caller went away (client disconnect) while queued is dropped unrun.
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(ctx.run(fn, *args, **kwargs))
                    except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                        fut.set_exception(e)
            finally:
                with self._lock:
                    self._pending -= 1

    def shutdown(self, timeout: float | None = None) -> None:
        """Let queued work finish, then stop the thread."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._q.put(None)
            thread.join(timeout)
