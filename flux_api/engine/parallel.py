"""placement=parallel: one pipeline run by several processes together, by context parallelism.

diffusers splits each image's tokens between the ranks of a torch.distributed group (Ulysses: an
all-to-all around each attention, `transformer.enable_parallelism`), so one image takes about 1/N of
the transformer's time on N GPUs. Every rank runs the whole pipeline call with the same arguments;
the transformer's collectives keep them in step, and rank 0's image is the answer.

Rank 0 is the service's own replica (its scheduler worker, its adapters, its status); ranks 1..N-1
are processes of their own (`parallel_rank.py`), fed by rank 0 over a pipe each: before rank 0 runs a
generation, a warm-up or a LoRA change, it sends the same call to every other rank, then runs it
itself, then collects their answers. So LoRAs, seeds, image-to-image and the prompt cache need no
code of their own here: every rank does what rank 0 does.

Two things need the ranks to agree:
- stopping: a cancel or a deadline is seen by rank 0 alone. At the end of every step, rank 0
  broadcasts "go on" or "stop" (one integer, on a gloo group of the host: no GPU sync), so every rank
  stops at the same step and the group stays in step for the next request;
- failing: any other failure, on any rank (a rank gone, an error, a collective timed out), fails the
  request, and the group is rebuilt (every process started again, rank 0's pipeline loaded again:
  diffusers' parallel hooks cannot be moved to a new group) in the background; the next request
  waits for it. No rank is left waiting in a collective: the followers are killed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from ..errors import FluxAPIError, GenerationFailed, GenerationTimeout, JobCancelled
from .replica import Replica

log = logging.getLogger(__name__)

# What rank 0 asks the other ranks to do: the Replica methods that run the pipeline or change adapters.
MIRRORED = ("generate", "warm_up", "activate_loras", "drop_loras")


class GroupFailed(Exception):
    """A rank failed or is gone: the group cannot go on as it is."""


# ---------------------------------------------------------------------- torch.distributed, on every rank


def init_group(rank: int, ranks: int, init_method: str, cpu: bool, timeout_s: float):
    """Join the group (NCCL between GPUs, gloo between CPU processes); returns the gloo group of the
    host on which the ranks agree at each step."""
    import torch.distributed as dist

    if not cpu:
        # A collective that times out aborts its communicator and raises, instead of NCCL's default of
        # tearing the process down: rank 0 is the service's process.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    dist.init_process_group("gloo" if cpu else "nccl", init_method=init_method, rank=rank, world_size=ranks,
                            timeout=timedelta(seconds=timeout_s))
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


def leave_group(aborted: bool = False) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    with contextlib.suppress(Exception):  # a group whose peers are gone may not close cleanly
        if aborted:
            from torch.distributed.distributed_c10d import _abort_process_group

            _abort_process_group()
        else:
            dist.destroy_process_group()


def enable_context_parallel(transformer, ranks: int) -> None:
    """Ulysses context parallelism over all `ranks`, before compiling (the hooks are part of the graph)."""
    import torch
    from diffusers import ContextParallelConfig

    heads = transformer.config.num_attention_heads
    if heads % ranks:
        raise ValueError(f"placement=parallel: the model's {heads} attention heads do not divide between "
                         f"{ranks} processes; choose parallel_degree among {[d for d in range(2, 9) if heads % d == 0]}")
    # diffusers picks each rank's device as rank % torch.accelerator.device_count(), which is 0 on a
    # CPU-only torch (a division by zero): there, one "device", the CPU.
    shim = torch.accelerator.device_count() == 0
    real = torch.accelerator.device_count
    if shim:
        torch.accelerator.device_count = lambda: 1
    try:
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=ranks))
    finally:
        torch.accelerator.device_count = real


class StepAgreement:
    """At the end of each step, every rank learns from rank 0 whether to go on."""

    def __init__(self, group):
        self.group = group

    def __call__(self, stop: bool = False) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if stop else 0], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self.group)
        return bool(flag.item())


class RankStopped(JobCancelled):
    """This rank stopped at a step because rank 0 did (a cancel or a deadline)."""


class RankZeroJob:
    """The scheduler's job as rank 0 runs it: its step (progress, cancel, deadline) decides for every rank."""

    def __init__(self, job, agree: StepAgreement):
        self._job, self._agree = job, agree

    def __getattr__(self, name):  # created, started, ...: the job's own
        return getattr(self._job, name)

    def on_step(self, step: int) -> None:
        try:
            self._job.on_step(step)
        except FluxAPIError:  # cancelled or timed out: every rank stops at this step
            self._agree(stop=True)
            raise
        self._agree(stop=False)


class FollowerJob:
    """What the other ranks run a generation with: rank 0's word at each step."""

    def __init__(self, agree: StepAgreement):
        self.agree = agree
        self.created = self.started = time.monotonic()

    def on_step(self, step: int) -> None:
        if self.agree():
            raise RankStopped("stopped with rank 0")


# ---------------------------------------------------------------------- rank 0's side


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Follower:
    rank: int
    process: Any  # multiprocessing.Process
    conn: Any  # rank 0's end of the pipe

    @property
    def alive(self) -> bool:
        # The sentinel (a pipe the child holds open until it exits), not is_alive(): that waits on the pid,
        # which says "alive" forever once something else in the process has reaped the child.
        return not multiprocessing.connection.wait([self.process.sentinel], 0)

    def exited(self) -> str:
        code = self.process.exitcode
        return f"rank {self.rank} exited" + (f" (code {code})" if code is not None else "")

    def as_dict(self) -> dict:
        return {"rank": self.rank, "pid": self.process.pid, "alive": self.alive}


class ParallelGroup:
    """The other ranks' processes and rank 0's membership of the group."""

    def __init__(self, manager_cls, settings, ranks: int, cpu: bool):
        self.manager_cls, self.settings, self.ranks, self.cpu = manager_cls, settings, ranks, cpu
        self.followers: list[Follower] = []
        self.agree: StepAgreement | None = None
        self.closed = False

    def start(self) -> None:
        """Start ranks 1..N-1 and join the group as rank 0 (returns once every rank has joined)."""
        from .parallel_rank import follower_main

        init = f"tcp://127.0.0.1:{free_port()}"
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
        timeout = self.settings.parallel_timeout_s
        for rank in range(1, self.ranks):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=follower_main, name=f"flux-rank-{rank}",
                            args=(rank, self.ranks, init, self.cpu, timeout, self.manager_cls, self.settings, theirs))
            p.start()
            theirs.close()
            self.followers.append(Follower(rank, p, mine))
        self.agree = StepAgreement(init_group(0, self.ranks, init, self.cpu, timeout))
        if not self.cpu:
            threading.Thread(target=self._watch, name="flux-parallel-watch", daemon=True).start()

    def _watch(self) -> None:
        """NCCL does not notice a peer that is gone: a rank-0 collective would wait for the whole timeout.
        Abort the communicator as soon as another rank's process exits (gloo sees its socket close)."""
        while not self.closed:
            if any(not f.alive for f in self.followers) and not self.closed:
                log.error("parallel group: a rank exited; aborting the NCCL communicator")
                leave_group(aborted=True)
                return
            time.sleep(0.5)

    def send(self, op: str, args: tuple) -> None:
        for f in self.followers:
            try:
                f.conn.send((op, args))
            except (OSError, EOFError) as e:
                raise GroupFailed(f"rank {f.rank} is gone ({type(e).__name__})") from None

    def collect(self, timeout_s: float | None = None) -> list[tuple[str, Any]]:
        """Every other rank's answer to the last call: ("ok" | "stopped" | "ready", None) or ("failed", what:
        a domain error, the rank still in the group) each, or GroupFailed naming the first rank that
        failed otherwise, died or did not answer in time."""
        deadline = time.monotonic() + (timeout_s or self.settings.parallel_timeout_s)
        answers = []
        for f in self.followers:
            while not f.conn.poll(0.05):
                if not f.alive:
                    raise GroupFailed(f.exited())
                if time.monotonic() > deadline:
                    raise GroupFailed(f"rank {f.rank} did not answer within {timeout_s or self.settings.parallel_timeout_s} s")
            try:
                kind, detail = f.conn.recv()
            except (OSError, EOFError):
                raise GroupFailed(f.exited()) from None
            if kind == "error":
                raise GroupFailed(f"rank {f.rank}: {detail}")
            answers.append((kind, detail))
        return answers

    def errors(self, wait_s: float = 2.0) -> list[str]:
        """What the other ranks said before failing or exiting (after a failure seen on rank 0)."""
        out, deadline = [], time.monotonic() + wait_s
        for f in self.followers:
            said = None
            try:
                while said is None and f.conn.poll(max(0.0, deadline - time.monotonic())):
                    kind, detail = f.conn.recv()
                    said = f"rank {f.rank}: {detail}" if kind == "error" else None
            except (OSError, EOFError):
                pass
            if said is None and not f.alive:
                said = f.exited()
            if said is not None:
                out.append(said)
        return out

    def close(self, failed: bool = False) -> None:
        """Stop the other ranks (asked, then killed) and leave the group."""
        if self.closed:
            return
        self.closed = True
        for f in self.followers:
            with contextlib.suppress(Exception):
                if not failed:
                    f.conn.send(("close", ()))
        for f in self.followers:
            f.process.join(5 if not failed else 0.1)
            if f.alive:
                f.process.kill()
                f.process.join(5)
            with contextlib.suppress(Exception):
                f.conn.close()
        leave_group(aborted=failed and not self.cpu)

    def status(self) -> dict:
        return {"ranks": self.ranks, "backend": "gloo" if self.cpu else "nccl",
                "followers": [f.as_dict() for f in self.followers]}


@dataclass
class ParallelReplica(Replica):
    """Rank 0: a Replica whose pipeline calls every other rank makes too (see the module's docstring)."""

    group: ParallelGroup | None = None
    rebuild: Callable[[], "ParallelReplica"] | None = None  # a new group and rank-0 pipeline, warmed up
    restarts: int = 0
    broken: str | None = None  # why the group failed, until it is rebuilt
    _rebuilt: threading.Event | None = None

    def __post_init__(self):
        self._rebuilt = threading.Event()
        self._rebuilt.set()

    # The mirrored calls: each runs on every rank.
    def generate(self, job, params, loras, pinned, files):
        return self._on_every_rank("generate", (params, loras, pinned, files), job)

    def warm_up(self, px: int) -> None:
        self._on_every_rank("warm_up", (px,))

    def activate_loras(self, loras, keep, files) -> None:
        self._on_every_rank("activate_loras", (loras, keep, files))

    def drop_loras(self, keep, only=None) -> None:
        self._on_every_rank("drop_loras", (keep, only))

    def _on_every_rank(self, op: str, args: tuple, job=None):
        self._rebuilt.wait()
        if self.broken is not None:  # the last rebuild failed: try again, on this request
            self._restart()
            if self.broken is not None:
                raise GenerationFailed(f"the parallel group could not restart: {self.broken}")
        gone = [f.rank for f in self.group.followers if not f.alive]
        if gone:  # a rank died between two requests: rebuild first, then serve this one
            self._begin_restart(f"rank(s) {gone} exited while idle")
            return self._on_every_rank(op, args, job)
        local = getattr(super(), op)
        try:
            self.group.send(op, args)
            if job is not None:
                result = local(RankZeroJob(job, self.group.agree), *args)
            else:
                result = local(*args)
        except (JobCancelled, GenerationTimeout) as e:
            try:
                self.group.collect()  # every rank stopped at the same step
            except GroupFailed as g:
                self._begin_restart(f"{g}, while stopping a request")
            raise e
        except GroupFailed as e:
            self._fail(str(e))
        except FluxAPIError as e:  # rank 0's own domain error (a LoRA file changed, out of memory, ...)
            self._settle(e)
        except BaseException as e:  # on rank 0, or a collective that failed because another rank did
            self._fail(f"rank 0: {type(e).__name__}: {e}", e)
        try:
            answers = self.group.collect()
        except GroupFailed as e:
            self._fail(str(e))
        failed = [detail for kind, detail in answers if kind == "failed"]
        if failed:  # another rank failed where rank 0 did not: their states differ
            self._fail("; ".join(failed))
        return result

    def _settle(self, error: FluxAPIError):
        """Rank 0 failed with a domain error. If every other rank failed too and said so (none waits in a
        collective), they all left the call the same way: raise it, the group as it is. Otherwise rebuild."""
        try:
            answers = self.group.collect(timeout_s=min(10.0, self.settings_timeout))
        except GroupFailed as g:
            self._fail(str(g), error)
        if all(kind == "failed" for kind, _ in answers):
            raise error
        self._fail(f"rank 0: {error.message}, where the other ranks went on", error)

    @property
    def settings_timeout(self) -> float:
        return self.group.settings.parallel_timeout_s

    def _fail(self, why: str, error: BaseException | None = None):
        """Fail the request (raises) and rebuild the group in the background."""
        said = self.group.errors()
        detail = "; ".join(said) if said else why
        self._begin_restart(detail)
        if isinstance(error, FluxAPIError) and not said:  # rank 0's own domain error (e.g. out of memory)
            raise error
        raise GenerationFailed(f"placement=parallel: {detail}; the request failed and the group of "
                               f"{self.group.ranks} processes is restarting") from None

    def _begin_restart(self, why: str) -> None:
        log.error("parallel group failed: %s; restarting it", why)
        self.broken = why
        self._rebuilt.clear()
        self.group.close(failed=True)
        threading.Thread(target=self._restart_then_signal, name="flux-parallel-restart", daemon=True).start()

    def _restart_then_signal(self) -> None:
        try:
            self._restart()
        finally:
            self._rebuilt.set()

    def _restart(self) -> None:
        if self.group is not None and not self.group.closed:
            self.group.close(failed=True)
        try:
            fresh = self.rebuild()
        except Exception as e:  # noqa: BLE001 - said in /model-status and on the next request
            self.broken = f"{type(e).__name__}: {e}"
            log.error("parallel group restart failed: %s\n%s", self.broken, traceback.format_exc())
            return
        self.pipe, self.adapters, self.graphs, self.prompts = fresh.pipe, fresh.adapters, fresh.graphs, fresh.prompts
        self.group, self.variants = fresh.group, {}
        self.restarts += 1
        self.broken = None
        log.info("parallel group restarted (%d restart(s) so far)", self.restarts)

    def close(self) -> None:
        self._rebuilt.wait(60)  # a rebuild under way finishes first, so its group is the one closed
        if self.group is not None:
            self.group.close()

    def parallel_status(self) -> dict:
        state = "restarting" if not self._rebuilt.is_set() else ("failed" if self.broken else "ready")
        return {**(self.group.status() if self.group else {}), "state": state, "restarts": self.restarts,
                "last_failure": self.broken}
