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
  request, and the group is restarted in the background: the other ranks' processes are killed and
  started afresh, and rank 0 keeps its model, only its parallel hooks pointed at the new group (diffusers
  reads the mesh at each call), then every rank warms up again; the next request waits for it. Rank 0
  waits in a collective at most `parallel_timeout_s` for a rank that hangs (gloo notices a rank that
  exits at once; for NCCL a watcher aborts the communicator). A domain error that every rank raises
  before its pipeline (a LoRA file changed while queued) fails only its request.
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
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

from ..errors import FluxAPIError, GenerationFailed, GenerationTimeout, JobCancelled, ModelNotReady, ShuttingDown
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


def share_cpu_threads(ranks: int) -> None:
    """On the CPU, every rank a share of the host's cores (torch would otherwise take them all in each)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))


@contextlib.contextmanager
def _one_cpu_device():
    """diffusers picks each rank's device as rank % torch.accelerator.device_count(), which is 0 on a
    CPU-only torch (a division by zero): there, one "device", the CPU."""
    import torch

    real = torch.accelerator.device_count
    if real() == 0:
        torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = real


def enable_context_parallel(transformer, ranks: int) -> None:
    """Ulysses context parallelism over all `ranks`, before compiling (the hooks are part of the graph).
    Equal shares: the heads, and each request's tokens, must divide by the ranks (checked before a request
    queues, `uneven_split`). diffusers' "anything" mode would take uneven ones, but its size exchange does
    not compile (a fullgraph or not) and syncs the host at every attention."""
    from diffusers import ContextParallelConfig

    heads = transformer.config.num_attention_heads
    if heads % ranks:
        raise ValueError(f"placement=parallel: the model's {heads} attention heads do not divide between "
                         f"{ranks} processes; choose parallel_degree among {[d for d in range(2, 9) if heads % d == 0]}")
    with _one_cpu_device():
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=ranks))


def rejoin_context_parallel(transformer, rank: int, ranks: int, device: str) -> None:
    """Point a transformer's context parallelism at the group just formed (after a restart): diffusers'
    hooks and attention read the mesh from the config at each call, so the model itself stays loaded."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    config = transformer._parallel_config
    cp = config.context_parallel_config
    mesh = init_device_mesh("cpu" if device == "cpu" else "cuda", mesh_shape=cp.mesh_shape,
                            mesh_dim_names=cp.mesh_dim_names)
    config.setup(rank, ranks, torch.device(device), mesh=mesh)


# FLUX: the VAE downscales 8x, then 2x2 patches make one token: one token per 16x16 pixels.
PX_PER_TOKEN = 16


def uneven_split(width: int, height: int, ranks: int) -> str | None:
    """Why this image's tokens cannot be split evenly between `ranks`, or None."""
    n = (height // PX_PER_TOKEN) * (width // PX_PER_TOKEN)
    if n % ranks == 0:
        return None
    return (f"placement=parallel splits an image's tokens evenly between its {ranks} processes: {width}x{height} "
            f"has {n} tokens ({width // PX_PER_TOKEN} x {height // PX_PER_TOKEN} of {PX_PER_TOKEN} px), which do "
            f"not divide; choose sides whose counts of {PX_PER_TOKEN} px multiply to a multiple of {ranks}")


def check_parallel_settings(ranks: int, max_sequence_length: int, warmup_sizes) -> None:
    """What must divide between the ranks for every request, checked at start-up (ValueError)."""
    if max_sequence_length % ranks:
        raise ValueError(f"placement=parallel splits the prompt's {max_sequence_length} T5 tokens (max_sequence_length) "
                         f"evenly between {ranks} processes: choose a max_sequence_length that divides by {ranks}")
    for px in warmup_sizes:
        why = uneven_split(px, px, ranks)
        if why:
            raise ValueError(f"warmup_sizes: {why}")


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
    new_group: Callable[[], ParallelGroup] | None = None  # starts the other ranks and joins a new group
    warm_sizes: tuple = ()  # what a restarted group warms up, as at load
    reloading: Callable = contextlib.nullcontext  # its compiles inside are a restart's, not a live request's
    restarts: int = 0
    broken: str | None = None  # why the group failed, until a restart succeeds
    last_failure: str | None = None
    serving: bool = False  # restarts only once serving: a failure while loading fails the load
    _closing: bool = False
    _in_pipeline: bool = False  # whether rank 0 reached the pipeline (and so the collectives) in this call
    _restart_thread: threading.Thread | None = None
    _lifecycle: threading.Lock = field(default_factory=threading.Lock)  # restarts against close()

    def mark_serving(self) -> None:
        self.serving = True

    # The mirrored calls: each runs on every rank.
    def generate(self, job, params, loras, pinned, files):
        return self._on_every_rank("generate", (params, loras, pinned, files), job)

    def warm_up(self, px: int) -> None:
        self._on_every_rank("warm_up", (px,))

    def activate_loras(self, loras, keep, files) -> None:
        self._on_every_rank("activate_loras", (loras, keep, files))

    def drop_loras(self, keep, only=None) -> None:
        self._on_every_rank("drop_loras", (keep, only))

    def run(self, *args, **kwargs):
        self._in_pipeline = True
        return super().run(*args, **kwargs)

    def _on_every_rank(self, op: str, args: tuple, job=None):
        if self._closing:
            raise ShuttingDown()
        if self.broken is None and any(not f.alive for f in self.group.followers):
            # a rank died between two requests: restart first, then serve this one
            self._begin_restart(f"rank(s) {[f.rank for f in self.group.followers if not f.alive]} exited while idle")
        self._wait_for_restart(self.group.settings.parallel_timeout_s)
        if self._closing:
            raise ShuttingDown()
        if self.broken is not None:  # still restarting (it retries until it succeeds)
            raise ModelNotReady("restarting", f"placement=parallel: the group of {self.group.ranks} processes is "
                                f"restarting after a failure ({self.last_failure}); retry shortly")
        local = getattr(super(), op)
        self._in_pipeline = False
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
        except FluxAPIError as e:
            if self._in_pipeline:  # in the pipeline: another rank may wait in a collective
                self._fail(f"rank 0: {e.message}", e)
            self._settle(e)  # before it (a LoRA file changed, say): the others may have failed alike
        except BaseException as e:
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
        """Rank 0 failed with a domain error before its pipeline. If every other rank failed before its
        pipeline too and said so, no rank waits in a collective and they all left the call the same way:
        raise it, the group as it is. Otherwise restart."""
        try:
            answers = self.group.collect(timeout_s=min(10.0, self.group.settings.parallel_timeout_s))
        except GroupFailed as g:
            self._fail(str(g), error)
        if all(kind == "failed" for kind, _ in answers):
            raise error
        self._fail(f"rank 0: {error.message}, where the other ranks went on", error)

    def _fail(self, why: str, error: BaseException | None = None):
        """Fail the request (raises) and restart the group in the background."""
        said = self.group.errors()
        detail = "; ".join(said) if said else why
        self._begin_restart(detail)
        if isinstance(error, FluxAPIError) and not isinstance(error, GenerationFailed) and not said:
            raise error  # rank 0's own domain error (out of memory, say), as on one GPU
        then = "is restarting" if self.serving and not self._closing else "is closed"
        raise GenerationFailed(f"placement=parallel: {detail}; the request failed and the group of "
                               f"{self.group.ranks} processes {then}") from None

    # ------------------------------------------------------------------ restarts

    def _begin_restart(self, why: str) -> None:
        log.error("parallel group failed: %s", why)
        self.broken = self.last_failure = why
        self.group.close(failed=True)
        with self._lifecycle:  # never a restart once close() has begun
            if self.serving and not self._closing and not self._restarting():
                self._restart_thread = threading.Thread(target=self._restart_until_up, name="flux-parallel-restart",
                                                        daemon=True)
                self._restart_thread.start()

    def _restarting(self) -> bool:
        t = self._restart_thread
        return t is not None and t.is_alive()

    def _wait_for_restart(self, timeout_s: float | None = None) -> None:
        t = self._restart_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout_s)

    def _restart_until_up(self) -> None:
        """Restart until it works (backing off: 5 s, 10 s, ... a minute) or the replica closes, so a group
        comes back by itself even while no request arrives (/health answers 503 `restarting` meanwhile)."""
        wait = 5.0
        while not self._closing:
            try:
                self._restart()
                return
            except Exception as e:  # noqa: BLE001 - said in /model-status and to requests meanwhile
                self.broken = f"restart failed: {type(e).__name__}: {getattr(e, 'message', e)}"
                log.error("parallel group: %s; trying again in %.0f s\n%s", self.broken, wait, traceback.format_exc())
            deadline = time.monotonic() + wait
            while not self._closing and time.monotonic() < deadline:
                time.sleep(0.2)
            wait = min(60.0, wait * 2)

    def _restart(self) -> None:
        """A new group: the other ranks started afresh, rank 0's own model kept (only its parallel hooks
        pointed at the new group, so no second copy of the model on its GPU), then the warm-up again."""
        group = None
        try:
            with self.reloading():
                group = self.new_group()
                rejoin_context_parallel(self.pipe.transformer, 0, group.ranks, self.device)
                group.collect()  # every new rank built
                # Rank 0 as fresh as the new ranks: no adapter loaded, the slot off (the warm-up leaves it
                # so), and nothing remembered as active, so the next request sets its LoRAs on every rank.
                Replica.drop_loras(self, set())
                self.adapters.active = None
                for px in self.warm_sizes:  # as at load (not through _on_every_rank: no restart within)
                    if self._closing:
                        raise ShuttingDown()
                    group.send("warm_up", (px,))
                    Replica.warm_up(self, px)
                    group.collect()
                self.adapters.active = None
        except BaseException:
            if group is not None:
                group.close(failed=True)
            raise
        self.group, self.broken = group, None
        self.restarts += 1
        log.info("parallel group restarted (%d restart(s) so far)", self.restarts)

    def close(self) -> None:
        with self._lifecycle:
            self._closing = True  # no restart from here on; a restart under way stops at its next step
        self._wait_for_restart(self.group.settings.parallel_timeout_s * 2 if self.group else None)
        if self.group is not None:
            self.group.close()

    def parallel_status(self) -> dict:
        state = "restarting" if self._restarting() else ("down" if self.broken else "ready")
        return {**(self.group.status() if self.group else {}), "state": state, "restarts": self.restarts,
                "last_failure": self.last_failure, "down_because": self.broken}

    @property
    def restarting(self) -> bool:
        return self._restarting()

    def status(self) -> dict:
        return {**super().status(), "parallel": self.parallel_status()}
