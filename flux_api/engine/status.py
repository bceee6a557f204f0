"""/model-status: what a service is, where it runs and how it is doing, in one dict."""

from __future__ import annotations

import os


def precision(manager) -> dict | None:
    """The precision of each component actually in use, and why the backend was chosen."""
    if manager.plan is None:
        return None
    dtype = str(manager.torch_dtype()).removeprefix("torch.")
    out = {"transformer": dtype, "text_encoders": dtype, "vae": dtype}
    if manager.speed.text_encoders == "nf4":
        out["text_encoders"] = "CLIP bf16; T5 bitsandbytes nf4"
    out["transformer"] = manager.backend.precision(dtype)
    out["backend_reason"] = manager.backend.reason
    return out


def cuda_graphs(manager) -> dict:
    first = manager.replicas[0] if manager.replicas else None
    if first is not None and first.graphs is not None:
        return {"on": True, **first.graphs.status()}
    why = manager.speed.graphs_off_reason if manager.speed else None
    return {"on": False, "why": why or "not loaded"}


def service_status(manager) -> dict:
    s, plan, sched = manager.settings, manager.plan, manager.scheduler
    compiled = manager.speed is not None and manager.speed.compile_mode != "none"  # what "with compile" settings need
    replicas = [r.status() for r in manager.replicas]
    return {
        "service": s.service,
        "state": manager.phase,
        "loaded": bool(manager.replicas),
        "error": manager.error,
        "load_seconds": manager.load_seconds,
        "model": manager.source.as_dict() if manager.source else {"spec": s.model},
        "backend": manager.backend_name,
        "precision": precision(manager),
        "compile": {"mode": manager.speed.compile_mode if manager.speed else s.compile,
                    "autotune": s.compile_autotune and compiled,
                    "vae": manager.speed is not None and manager.speed.compiles_vae,
                    "text_encoder": manager.speed is not None and manager.speed.compiles_text_encoder,
                    "persistent_rows": manager.speed is not None and manager.speed.persistent_rows,
                    "fused": manager.speed.fused if manager.speed else None,
                    "qkv_fused": manager.speed.qkv_fused if manager.speed else None,
                    "rope_fused": manager.speed.rope_fused if manager.speed else None,
                    "modulation_precomputed": manager.speed.modulation_norms if manager.speed else None,
                    "split_group_norms": manager.speed.split_group_norms if manager.speed else None,
                    **manager.compiles.status()},
        "cuda_graphs": cuda_graphs(manager),
        "attention": manager.speed.attention_status() if manager.speed else {"kernel": s.attention},
        "memory": manager.speed.memory_status() if manager.speed else {"mode": s.memory_mode},
        "placement": {**plan.as_dict(), "replica_status": replicas,
                      "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")} if plan else None,
        "devices": manager.memory_report(),
        "queue": {"queued": sched.queued if sched else 0, "running": sched.running if sched else 0,
                  "max_queued": s.queue_size},
        "lora": manager.lora_status(),
    }
