#!/usr/bin/env python3
"""Images/minute through Ray Serve: against the plain service (the cost of the extra hop), and with more
replicas (one GPU each) against one.

Same model, size, steps and torch thread count on every side, one after the other (never at once):
  plain: the plain BF16 service (`python -m flux_api bf16`, OMP_NUM_THREADS=--threads), on 127.0.0.1; on a
         GPU machine it draws on every visible GPU (one replica each, its default), reported as `replicas`;
  ray:   a local Ray cluster with the Ray Serve application (flux_api.serving): the ingress and BF16 replicas,
         through Ray's HTTP proxy on 127.0.0.1. With `--replicas 1,2` the same cluster is measured with one
         replica, then redeployed with two, and so on (a redeploy from Python is a new version to Ray: a rolling
         update starts every replica afresh, so `ready_s` of a count includes all of its replicas' loads).
Each side (and each replica count) gets --warmup requests per replica first, then --rounds rounds of
--requests timed ones at --concurrency; prints the median round of each in a table, and one JSON line
with every round (also written to --out after each side, so a killed run keeps what it measured).
Needs the `ray` extra.

    # the hop, on the CPU with the tiny model:
    python scripts/bench_ray.py --threads 2 --size 256 --steps 4 --requests 24 --concurrency 2
    # 2 GPU replicas against 1, then the plain service, with FLUX.1's architecture (random weights):
    python scripts/bench_ray.py --model full --gpus-per-replica 1 --replicas 1,2 --sides ray,plain \
        --size 1024 --steps 28 --requests 8 --concurrency 4 --rounds 2 --warmup 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(client, args, routed: bool, replicas: int = 1) -> dict:
    """Warm up (--warmup requests per replica, as many at once as replicas, so that each is likely to get
    its first request here), then time --requests /generate calls at --concurrency: images/min and latencies."""
    body = {"prompt": "a red circle on a blue background", "width": args.size, "height": args.size,
            "num_inference_steps": args.steps, **({"service": "bf16"} if routed else {})}

    def one(seed: int) -> float:
        t = time.perf_counter()
        r = client.post("/generate", json={**body, "seed": seed})
        r.raise_for_status()
        return time.perf_counter() - t

    with concurrent.futures.ThreadPoolExecutor(replicas) as pool:
        list(pool.map(one, range(args.warmup * replicas)))
    rounds = []
    for _ in range(args.rounds):  # a shared machine: the median of several rounds
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            latencies = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        rounds.append({"images_per_min": round(args.requests / wall * 60, 2), "wall_s": round(wall, 2),
                       "p50_s": round(statistics.median(latencies), 3), "max_s": round(max(latencies), 3)})
    middle = sorted(rounds, key=lambda r: r["images_per_min"])[len(rounds) // 2]
    return {**middle, "rounds": [r["images_per_min"] for r in rounds]}


def service_settings(args) -> dict:
    return json.loads(args.settings) if args.settings else {"warmup": False}


def plain(args, report) -> None:
    from flux_api.service_process import running_service

    port = free_port()
    env = {"OMP_NUM_THREADS": str(args.threads)}
    # as pydantic-settings reads them: strings as they are, anything else (bools, numbers, lists) as JSON
    env.update({f"FLUX_BF16_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                for k, v in service_settings(args).items()})
    with running_service("bf16", args.model, port, env=env, log_path="/tmp/bench-ray-plain.log") as (client, ready_s):
        placement = client.get("/model-status").json().get("placement") or {}
        report("plain", {**measure(client, args, routed=False), "replicas": placement.get("replicas", 1),
                         "ready_s": round(ready_s, 1)})


def running_replicas(name: str = "FluxBF16") -> int:
    from ray import serve

    app = serve.status().applications.get("flux")
    d = app.deployments.get(name) if app else None
    return int(d.replica_states.get("RUNNING", 0)) if d else 0


def through_ray(args, report) -> None:
    import httpx
    import ray
    from ray import serve

    from flux_api.serving.app import build_app

    def config(n: int) -> dict:
        deployment = {"num_cpus": 1, "num_gpus": args.gpus_per_replica,
                      "torch_threads": args.threads if not args.gpus_per_replica else None,
                      "min_replicas": n, "max_replicas": n, "max_queued_requests": -1,
                      "settings": service_settings(args)}
        return {"model": args.model, "slots": max(args.concurrency, 1), "fp4": None, "bf16": deployment,
                "ingress_settings": {"warmup": False}}

    most = max(args.replicas)
    init = {"num_cpus": max(2, most + 1)}
    if args.gpus_per_replica:
        init["num_gpus"] = most * args.gpus_per_replica
    # images come back through Ray's object store: a small one, whatever /dev/shm holds (the full model may be there)
    ray.init(**init, object_store_memory=2 * 2**30, include_dashboard=False, log_to_driver=args.ray_logs)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for n in args.replicas:
            t = time.perf_counter()
            serve.run(build_app(config(n)), name="flux", route_prefix="/")
            while running_replicas() < n:  # serve.run returns when the deployment is healthy: all n, usually
                time.sleep(0.5)
            ready_s = time.perf_counter() - t
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900) as client:
                report(f"ray x{n}", {**measure(client, args, routed=True, replicas=n), "replicas": n,
                                     "ready_s": round(ready_s, 1)})
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | full (FLUX.1's architecture, random weights) | a folder")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides (CPU)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3, help="untimed requests per replica before the rounds")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per side; the median is reported")
    ap.add_argument("--replicas", type=lambda s: [int(n) for n in s.split(",")], default=[1],
                    help="BF16 replica counts behind Ray's ingress, measured in this order on one cluster (e.g. 1,2)")
    ap.add_argument("--gpus-per-replica", type=float, default=0, help="num_gpus of each replica (1 on a GPU machine)")
    ap.add_argument("--settings", help="the BF16 service's settings as JSON, on both sides (default: {\"warmup\": false})")
    ap.add_argument("--sides", type=lambda s: s.split(","), default=["plain", "ray"], help="which, in this order")
    ap.add_argument("--ray-logs", action="store_true", help="show the replicas' logs")
    ap.add_argument("--out", default="bench_ray.json")
    args = ap.parse_args()
    header = {"args": vars(args), "command": " ".join(sys.argv)}
    try:
        import torch

        header.update(torch=torch.__version__, device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      gpus=torch.cuda.device_count())
        import diffusers
        import ray

        header.update(diffusers=diffusers.__version__, ray=ray.__version__)
    except ImportError:
        pass
    print(json.dumps(header), flush=True)
    if args.model == "full":
        from flux_api.random_model import full_model

        t = time.perf_counter()
        args.model = str(full_model()[0])
        print(f"full-size random model at {args.model} ({time.perf_counter() - t:.0f} s)", flush=True)
    results: dict[str, dict] = {}

    def report(name: str, r: dict) -> None:
        results[name] = r
        print(f"{name:8} {json.dumps(r)}", flush=True)
        Path(args.out).write_text(json.dumps({**header, "results": results}, indent=1))

    for side in args.sides:
        {"plain": plain, "ray": through_ray}[side](args, report)

    print(f"\n{'':8} {'replicas':>8} {'images/min':>10} {'p50 s':>7} {'max s':>7} {'ready s':>8}  rounds")
    for name, r in results.items():
        print(f"{name:8} {r['replicas']:>8} {r['images_per_min']:>10} {r['p50_s']:>7} {r['max_s']:>7} "
              f"{r.get('ready_s', ''):>8}  {r['rounds']}")
    if "plain" in results and f"ray x{results['plain']['replicas']}" in results:
        n = results["plain"]["replicas"]
        cost = 1 - results[f"ray x{n}"]["images_per_min"] / results["plain"]["images_per_min"]
        print(f"the Ray hop costs {cost:.0%} of the plain service's images/min ({n} replica(s) each)")
    one = results.get(f"ray x{args.replicas[0]}")
    for name, r in results.items():
        if one and name.startswith("ray x") and r is not one:
            print(f"{name}: {r['images_per_min'] / one['images_per_min']:.2f}x the images/min of {args.replicas[0]} replica(s)")
    print(json.dumps({**header, "results": results}))


if __name__ == "__main__":
    main()
