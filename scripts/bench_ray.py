#!/usr/bin/env python3
"""Images/minute through Ray Serve against the plain service, on this machine (the cost of the extra hop).

Same model, size, steps and torch thread count on both sides, one after the other (never at once):
  1. the plain BF16 service (`python -m flux_api bf16`, OMP_NUM_THREADS=--threads), on 127.0.0.1;
  2. a local Ray cluster with the Ray Serve application (flux_api.serving): the ingress and BF16 replicas
     (--replicas, torch_threads=--threads), through Ray's HTTP proxy on 127.0.0.1.
Each side gets --warmup requests first, then --rounds rounds of --requests timed ones at --concurrency;
prints the median round of each side in a table, and one JSON line with every round. Needs the `ray` extra.

    python scripts/bench_ray.py --threads 2 --size 256 --steps 4 --requests 24 --concurrency 2
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


def measure(client, args, routed: bool) -> dict:
    """Warm up, then time --requests /generate calls at --concurrency: images/min and latencies."""
    body = {"prompt": "a red circle on a blue background", "width": args.size, "height": args.size,
            "num_inference_steps": args.steps, **({"service": "bf16"} if routed else {})}

    def one(seed: int) -> float:
        t = time.perf_counter()
        r = client.post("/generate", json={**body, "seed": seed})
        r.raise_for_status()
        return time.perf_counter() - t

    for seed in range(args.warmup):
        one(seed)
    rounds = []
    for _ in range(args.rounds):  # a shared machine: the median of several rounds
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            latencies = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        rounds.append({"images_per_min": round(args.requests / wall * 60, 1), "wall_s": round(wall, 2),
                       "p50_s": round(statistics.median(latencies), 3), "max_s": round(max(latencies), 3)})
    middle = sorted(rounds, key=lambda r: r["images_per_min"])[len(rounds) // 2]
    return {**middle, "rounds": [r["images_per_min"] for r in rounds]}


def plain(args) -> dict:
    from flux_api.service_process import running_service

    port = free_port()
    env = {"OMP_NUM_THREADS": str(args.threads), "FLUX_BF16_WARMUP": "false"}
    with running_service("bf16", args.model, port, env=env) as (client, _):
        return measure(client, args, routed=False)


def through_ray(args) -> dict:
    import httpx
    import ray
    from ray import serve

    from flux_api.serving.app import build_app

    deployment = {"num_cpus": 1, "torch_threads": args.threads, "min_replicas": args.replicas,
                  "max_replicas": args.replicas, "max_queued_requests": -1, "settings": {"warmup": False}}
    config = {"model": args.model, "slots": max(args.concurrency, 1), "fp4": None, "bf16": deployment,
              "ingress_settings": {"warmup": False}}
    ray.init(num_cpus=max(2, args.replicas + 1), include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="flux", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900) as client:
            return measure(client, args, routed=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per side; the median is reported")
    ap.add_argument("--replicas", type=int, default=1, help="BF16 replicas behind Ray's ingress")
    args = ap.parse_args()
    results = {"plain": plain(args), "ray": through_ray(args)}
    cost = 1 - results["ray"]["images_per_min"] / results["plain"]["images_per_min"]
    print(f"{'':6} {'images/min':>10} {'p50 s':>7} {'max s':>7}  rounds")
    for name, r in results.items():
        print(f"{name:6} {r['images_per_min']:>10} {r['p50_s']:>7} {r['max_s']:>7}  {r['rounds']}")
    print(f"the Ray hop costs {cost:.0%} of the plain service's images/min")
    print(json.dumps({"args": vars(args), **results, "ray_cost": round(cost, 3)}))


if __name__ == "__main__":
    main()
