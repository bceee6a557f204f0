"""Ranks 1..N-1 of placement=parallel: a process each, running what rank 0 runs (parallel.py).

It builds the service's pipeline the service's own way (the same manager class and settings: the same
backend, adapters, compile and graphs), joins the group, then does each call rank 0 sends, in order,
and answers "ok", "stopped" (a cancel at a step, agreed with rank 0), "failed" (a domain error: rank 0
decides whether the group can go on) or "error" (anything else; then it exits and the group is rebuilt). It exits when rank 0 says "close" or its pipe closes (rank 0's process is gone).
"""

from __future__ import annotations

import os
import signal
import traceback

from ..errors import FluxAPIError
from .parallel import MIRRORED, FollowerJob, RankStopped, StepAgreement, init_group, leave_group, share_cpu_threads


def follower_main(rank: int, ranks: int, init_method: str, cpu: bool, timeout_s: float, manager_cls, settings,
                  conn) -> None:
    # A signal to the whole process group (Ctrl-C, systemd, killpg) must not stop this rank before the
    # service has finished its requests: it exits when rank 0 says "close" or rank 0's pipe closes.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        if cpu:
            share_cpu_threads(ranks)
        else:
            torch.cuda.set_device(rank)
        agree = StepAgreement(init_group(rank, ranks, init_method, cpu, timeout_s))
        manager = manager_cls(settings)
        manager.preflight()
        replica = manager._build_replica(rank, manager.plan.rank_device(rank), manager._load_spec())
        replica.on_thread_start()
    except BaseException as e:  # noqa: BLE001 - said to rank 0, which fails the load with it
        _say(conn, "error", f"could not start: {type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
        os._exit(1)
    _say(conn, "ready", None)
    # Whether this call has reached the pipeline (and so the collectives): a rank that fails before it
    # leaves no one waiting and may stay; one that fails inside it must exit, so that no rank waits on it.
    in_pipeline = [False]
    pipeline_run = replica.run

    def run(*args, **kwargs):
        in_pipeline[0] = True
        return pipeline_run(*args, **kwargs)

    replica.run = run
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):  # rank 0 is gone
            break
        if op == "close":
            break
        in_pipeline[0] = False
        try:
            if op not in MIRRORED:
                raise ValueError(f"unknown call {op!r}")
            if op == "generate":
                replica.generate(FollowerJob(agree), *args)  # rank 0's image is the answer; this one is dropped
            else:
                getattr(replica, op)(*args)
            _say(conn, "ok", None)
        except RankStopped:
            _say(conn, "stopped", None)
        except FluxAPIError as e:
            if in_pipeline[0]:  # e.g. out of memory at a step: leave, the group is rebuilt
                _say(conn, "error", f"{type(e).__name__}: {e.message}")
                os._exit(1)
            # before the pipeline (a LoRA file changed, say): rank 0 decides whether the group goes on
            _say(conn, "failed", f"rank {rank}: {type(e).__name__}: {e.message}")
        except BaseException as e:  # noqa: BLE001 - said, then this rank exits and the group is rebuilt
            _say(conn, "error", f"{type(e).__name__}: {getattr(e, 'message', e)}")
            os._exit(1)
    leave_group()
    os._exit(0)


def _say(conn, kind: str, detail) -> None:
    try:
        conn.send((kind, detail))
    except (OSError, EOFError):
        pass
