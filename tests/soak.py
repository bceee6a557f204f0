"""The soak driver (issue 10): mixed traffic at a fixed concurrency against a service on the loopback
address, then a sequential reference run of every parameter set that completed, then the figures.

What it sends (seeded, so a run is repeatable), drawn per request:
- generate      POST /generate (JSON; one in five asks for the raw PNG with Accept: image/png)
- job           POST /jobs, then GET /jobs/{id} until it ends
- sse           POST /jobs, then its events until `result` or `error`
- cancel        POST /jobs, then DELETE /jobs/{id} at a random moment: at once (queued), after the first
                step, or after the last denoising step (racing the end of the job)
- invalid       a body the contract refuses (wrong type, out of range, unknown field, unknown LoRA,
                broken JSON, not UTF-8)
- drop_generate a client that sends POST /generate and goes away (mid-body, before the answer)
- drop_sse      POST /jobs, read the first events of its stream, go away; the job must still end done

Parameter sets come from a small pool (per-request LoRAs, steps, seeds), so the same set runs many
times, on either replica, next to other sets: each image must be byte-identical to the sequential run of
its own set. One that equals another set's image is cross-contaminated; one that equals neither is wrong.

    python tests/soak.py [--service bf16] [--requests 200] [--concurrency 8] [--out docs/soak-figures.json]
starts its own service process (the tiny model, two CPU replicas) and prints the figures; the pytest
test (tests/test_soak.py) runs the same.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from flux_api.service_process import stop_process

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"done", "failed", "cancelled", "timed_out"}
PROMPTS = ["a red bicycle on a bridge", "a lighthouse at dusk", "a bowl of lemons", "snow on a pine forest"]
LORA_SETS = [None, [{"name": "style", "weight": 0.8}], [{"name": "detail", "weight": 0.5}],
             [{"name": "style", "weight": 1.0}, {"name": "detail", "weight": 0.3}], [{"name": "kohya", "weight": 0.7}]]
KINDS = {"generate": 30, "job": 15, "sse": 10, "cancel": 17, "invalid": 12, "drop_generate": 8, "drop_sse": 8}
# Refused by the contract, each for one reason; `expect` is the status the README documents, or None for a
# body that is not JSON at all (broken, or not UTF-8): any 4xx but 429, so long as the spec declares it.
INVALID = [
    ({"prompt": "x", "width": 300}, 422),
    ({"prompt": "x", "num_inference_steps": 0}, 422),
    ({"prompt": ""}, 422),
    ({"prompt": "x", "surprise": 1}, 422),
    ({"prompt": "x", "num_inference_steps": True}, 422),
    ({"prompt": "x", "seed": "12"}, 422),
    ({"prompt": "x", "loras": [{"name": "no-such-lora"}]}, 404),
    ({"prompt": "x", "lora_name": "style", "loras": [{"name": "detail"}]}, 422),
    (b'{"prompt": "x",', None),
    (b'{"prompt": "\xff\xfe"}', None),
]


def params_pool(n: int, rng: random.Random) -> list[dict]:
    """`n` distinct, cheap parameter sets (256x256, 1-3 steps), a third without LoRA."""
    pool = []
    for i in range(n):
        body = {"prompt": rng.choice(PROMPTS), "seed": 1000 + i, "width": 256, "height": 256,
                "num_inference_steps": rng.randint(1, 3), "guidance_scale": rng.choice([0.0, 3.5])}
        loras = LORA_SETS[i % len(LORA_SETS)]
        if loras:
            body["loras"] = loras
        pool.append(body)
    return pool


@dataclasses.dataclass
class Outcome:
    n: int
    kind: str
    params: int | None = None  # index in the pool
    outcome: str = "lost"  # completed, rejected, cancelled, abandoned, lost, failed
    status: int | None = None
    sha: str | None = None  # of the image bytes
    latency_s: float | None = None
    job_id: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)
    note: str = ""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Soak:
    def __init__(self, url: str, pid: int, requests: int = 200, concurrency: int = 8, seed: int = 10,
                 pool_size: int = 20, job_timeout_s: float = 120):
        self.url, self.pid = url, pid
        self.requests, self.concurrency, self.seed = requests, concurrency, seed
        self.rng = random.Random(seed)
        self.pool = params_pool(pool_size, self.rng)
        self.job_timeout_s = job_timeout_s
        self.client = httpx.Client(base_url=url, timeout=job_timeout_s,
                                   limits=httpx.Limits(max_connections=4 * concurrency))
        host, port = url.removeprefix("http://").split(":")
        self.addr = (host, int(port))
        self.done_count = 0
        self.lock = threading.Lock()
        self.rss_after_50: float | None = None
        self.spec: dict | None = None

    # --- one request of each kind ---------------------------------------------------------------
    def _check_result(self, o: Outcome, body: dict, rid: str) -> None:
        """A JSON result (the /generate body): its fields must be this request's."""
        p = self.pool[o.params]
        for k in ("seed", "width", "height", "num_inference_steps", "guidance_scale"):
            if body.get(k) != p[k]:
                o.problems.append(f"result {k}={body.get(k)!r}, asked {p[k]!r}")
        want = [{"name": x["name"], "weight": x["weight"]} for x in p.get("loras") or []]
        if body.get("loras") != want:
            o.problems.append(f"result loras={body.get('loras')!r}, asked {want!r}")
        if rid and body.get("request_id") not in (rid, None) and o.kind == "generate":
            o.problems.append(f"result request_id={body.get('request_id')!r}, sent {rid!r}")
        o.sha = sha(base64.b64decode(body["image"]))

    def _wait_job(self, o: Outcome, job_id: str) -> dict:
        deadline = time.monotonic() + self.job_timeout_s
        while time.monotonic() < deadline:
            r = self.client.get(f"/jobs/{job_id}")
            o.statuses.append(r.status_code)
            if r.status_code != 200:
                o.problems.append(f"GET /jobs/{job_id} -> {r.status_code} {r.text[:200]}")
                return {}
            j = r.json()
            if j["state"] in TERMINAL:
                return j
            time.sleep(0.02)
        o.problems.append(f"job {job_id} did not end in {self.job_timeout_s} s")
        return {}

    def _end_job(self, o: Outcome, j: dict) -> None:
        if not j:
            return
        if j["state"] == "done":
            self._check_result(o, j["result"], "")
            o.outcome = "completed"
        elif j["state"] == "cancelled":
            o.outcome = "cancelled"
        else:
            o.outcome = "failed"
            o.problems.append(f"job ended {j['state']}: {j.get('error')}")

    def _submit(self, o: Outcome, rid: str) -> str | None:
        r = self.client.post("/jobs", json=self.pool[o.params], headers={"X-Request-ID": rid})
        o.statuses.append(r.status_code)
        o.status = r.status_code
        if r.status_code == 429:
            o.outcome = "rejected"
            return None
        if r.status_code != 202:
            o.problems.append(f"POST /jobs -> {r.status_code} {r.text[:200]}")
            return None
        o.job_id = r.json()["id"]
        return o.job_id

    def run_generate(self, o: Outcome, rid: str) -> None:
        raw = self.rng_for(o).random() < 0.2
        headers = {"X-Request-ID": rid, **({"Accept": "image/png"} if raw else {})}
        r = self.client.post("/generate", json=self.pool[o.params], headers=headers)
        o.status = r.status_code
        o.statuses.append(r.status_code)
        if r.status_code == 429:
            o.outcome = "rejected"
        elif r.status_code != 200:
            o.problems.append(f"POST /generate -> {r.status_code} {r.text[:200]}")
            o.outcome = "failed"
        elif raw:
            if r.headers.get("content-type") != "image/png":
                o.problems.append(f"raw answer content-type {r.headers.get('content-type')}")
            if r.headers.get("x-seed") != str(self.pool[o.params]["seed"]):
                o.problems.append(f"raw answer X-Seed {r.headers.get('x-seed')}")
            o.sha, o.outcome = sha(r.content), "completed"
        else:
            self._check_result(o, r.json(), rid)
            o.outcome = "completed"
        if r.headers.get("x-request-id") != rid:
            o.problems.append(f"X-Request-ID {r.headers.get('x-request-id')!r}, sent {rid!r}")

    def run_job(self, o: Outcome, rid: str) -> None:
        if job_id := self._submit(o, rid):
            self._end_job(o, self._wait_job(o, job_id))

    def _events(self, job_id: str, o: Outcome):
        """(event, data) of the job's SSE stream. A caller that stops iterating closes the connection
        (an abandoned stream)."""
        with self.client.stream("GET", f"/jobs/{job_id}/events") as resp:
            o.statuses.append(resp.status_code)
            if resp.status_code != 200:
                o.problems.append(f"events -> {resp.status_code}")
                return
            event = None
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.split(":", 1)[1])
                    yield event, data

    def run_sse(self, o: Outcome, rid: str) -> None:
        if not (job_id := self._submit(o, rid)):
            return
        last = None
        try:
            for event, data in self._events(job_id, o):
                last = (event, data)
        except httpx.HTTPError as e:
            o.problems.append(f"events stream broke: {type(e).__name__}: {e}")
        if last is None:
            o.problems.append("events stream ended without an event")
        elif last[0] == "result":
            self._check_result(o, last[1], "")
            o.outcome = "completed"
        else:
            o.problems.append(f"events stream ended with {last}")
            o.outcome = "failed"
        # the stream and GET /jobs/{id} must agree
        j = self._wait_job(o, job_id)
        if j and o.outcome == "completed" and j["state"] != "done":
            o.problems.append(f"stream gave a result, the job says {j['state']}")

    def run_cancel(self, o: Outcome, rid: str) -> None:
        if not (job_id := self._submit(o, rid)):
            return
        moment = self.rng_for(o).choice(["queued", "first_step", "last_step"])
        o.note = moment
        if moment != "queued":
            target = 1 if moment == "first_step" else self.pool[o.params]["num_inference_steps"]
            try:
                for event, data in self._events(job_id, o):
                    if event == "progress" and data["step"] >= target:
                        break
                    if event in ("result", "error"):
                        break
                    if event == "state" and data.get("step", 0) >= target:
                        break
            except httpx.HTTPError as e:
                o.problems.append(f"events stream broke: {type(e).__name__}: {e}")
        r = self.client.delete(f"/jobs/{job_id}")
        o.statuses.append(r.status_code)
        j = self._wait_job(o, job_id)
        if not j:
            return
        if r.status_code == 200:
            # the cancel was promised: it must happen
            if j["state"] != "cancelled":
                d = r.json()
                o.problems.append(f"DELETE at {moment} answered 200 (state {d.get('state')}, step {d.get('step')}/"
                                  f"{d.get('total_steps')}, cancel_requested {d.get('cancel_requested')}), but the job "
                                  f"ended {j['state']}")
        elif r.status_code == 409:
            if j["state"] == "cancelled":
                o.problems.append("DELETE answered 409 (too late), but the job ended cancelled")
        else:
            o.problems.append(f"DELETE -> {r.status_code} {r.text[:200]}")
        self._end_job(o, j)

    def run_invalid(self, o: Outcome, rid: str) -> None:
        body, expect = INVALID[self.rng_for(o).randrange(len(INVALID))]
        path = self.rng_for(o).choice(["/generate", "/jobs"])
        if isinstance(body, bytes):
            r = self.client.post(path, content=body, headers={"Content-Type": "application/json", "X-Request-ID": rid})
        else:
            r = self.client.post(path, json=body, headers={"X-Request-ID": rid})
        o.status = r.status_code
        o.statuses.append(r.status_code)
        o.note = f"{path} {body!r:.60}"
        declared = self.declared_statuses(path)
        fits = (r.status_code == expect if expect else 400 <= r.status_code < 500 and r.status_code != 429)
        try:
            error_body = r.json()["error"]["code"] == r.status_code
        except (ValueError, KeyError, TypeError):
            error_body = False
        if fits and error_body and r.status_code in declared:
            o.outcome = "rejected"
        else:
            o.outcome = "failed"
            o.problems.append(f"invalid {path} {body!r:.80} -> {r.status_code} (expected {expect or 'a 4xx'} "
                              f"declared in the spec: {sorted(declared)}) {r.text[:120]}")

    def declared_statuses(self, path: str) -> set[int]:
        if self.spec is None:
            self.spec = self.client.get("/openapi.json").json()
        return {int(c) for c in self.spec["paths"][path]["post"]["responses"] if c.isdigit()}

    def run_drop_generate(self, o: Outcome, rid: str) -> None:
        payload = json.dumps(self.pool[o.params]).encode()
        head = (f"POST /generate HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nX-Request-ID: {rid}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        rng = self.rng_for(o)
        mid_body = rng.random() < 0.3
        with socket.create_connection(self.addr, timeout=10) as s:
            s.sendall(head + (payload[: len(payload) // 2] if mid_body else payload))
            time.sleep(rng.uniform(0.0, 0.15))
        o.outcome, o.note = "abandoned", "mid-body" if mid_body else "waiting for the answer"

    def run_drop_sse(self, o: Outcome, rid: str) -> None:
        if not (job_id := self._submit(o, rid)):
            return
        reads = self.rng_for(o).randint(1, 2)
        try:
            for i, _ in enumerate(self._events(job_id, o), 1):
                if i >= reads:
                    break  # the generator's stream closes here: the client is gone
        except httpx.HTTPError as e:
            o.problems.append(f"events stream broke: {type(e).__name__}: {e}")
        # a listener going away must not stop the job
        self._end_job(o, self._wait_job(o, job_id))
        if o.outcome == "cancelled":
            o.problems.append("the job was cancelled when its events listener went away")

    def rng_for(self, o: Outcome) -> random.Random:
        return random.Random(self.seed * 100_003 + o.n)  # per request: independent of thread timing

    # --- the run ----------------------------------------------------------------------------------
    def one(self, o: Outcome) -> Outcome:
        rid = f"soak-{self.seed}-{o.n}"
        t0 = time.perf_counter()
        try:
            getattr(self, f"run_{o.kind}")(o, rid)
        except httpx.HTTPError as e:
            o.problems.append(f"transport error: {type(e).__name__}: {e}")
            o.outcome = "lost" if o.outcome == "lost" else o.outcome
        except Exception as e:  # noqa: BLE001 - a driver bug must show, not stop the soak
            o.problems.append(f"driver error: {type(e).__name__}: {e}")
        o.latency_s = time.perf_counter() - t0
        with self.lock:
            self.done_count += 1
            if self.done_count == 50:
                self.rss_after_50 = rss_mib(self.pid)
        return o

    def plan(self) -> list[Outcome]:
        kinds, weights = zip(*KINDS.items())
        out = []
        for n in range(self.requests):
            kind = self.rng.choices(kinds, weights)[0]
            out.append(Outcome(n=n, kind=kind, params=None if kind == "invalid" else self.rng.randrange(len(self.pool))))
        return out

    def reference(self, indices: set[int]) -> dict[int, str]:
        """Each parameter set, run alone, one after the other: the bytes every concurrent run must give."""
        ref = {}
        for i in sorted(indices):
            r = self.client.post("/generate", json=self.pool[i], headers={"Accept": "image/png"})
            r.raise_for_status()
            ref[i] = sha(r.content)
        return ref

    def run(self) -> dict:
        plan = self.plan()
        rss_start = rss_mib(self.pid)
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as ex:
            outcomes = list(ex.map(self.one, plan))
        wall = time.perf_counter() - t0
        rss_end = rss_mib(self.pid)
        ref = self.reference({o.params for o in outcomes if o.sha})
        rss_after_ref = rss_mib(self.pid)
        by_sha = {}
        for i, h in ref.items():
            by_sha.setdefault(h, set()).add(i)
        contaminated = wrong = 0
        for o in outcomes:
            if o.sha is None:
                continue
            if o.sha != ref[o.params]:
                if o.sha in by_sha:
                    contaminated += 1
                    o.problems.append(f"image of parameter set(s) {sorted(by_sha[o.sha])}, asked {o.params}")
                else:
                    wrong += 1
                    o.problems.append(f"image differs from the sequential run of set {o.params}")
        job_ids = [o.job_id for o in outcomes if o.job_id]
        duplicated = len(job_ids) - len(set(job_ids))
        health = self.client.get("/health").status_code
        count = lambda what: sum(o.outcome == what for o in outcomes)
        lat = sorted(o.latency_s for o in outcomes if o.outcome == "completed")
        five = [o for o in outcomes if any(s >= 500 for s in o.statuses)]
        pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None
        figures = {
            "requests": len(outcomes), "concurrency": self.concurrency, "seed": self.seed,
            "completed": count("completed"), "rejected": count("rejected"), "cancelled": count("cancelled"),
            "abandoned": count("abandoned"), "failed": count("failed"), "lost": count("lost"),
            "duplicated": duplicated, "cross_contaminated": contaminated, "wrong_bytes": wrong,
            "unexpected_5xx": len(five), "with_problems": sum(bool(o.problems) for o in outcomes),
            "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95), "wall_s": round(wall, 1),
            "rss_start_mib": round(rss_start, 1), "rss_after_50_mib": round(self.rss_after_50 or rss_start, 1),
            "rss_end_mib": round(rss_end, 1), "rss_after_reference_mib": round(rss_after_ref, 1),
            "memory_delta_mib": round(max(rss_end, rss_after_ref) - (self.rss_after_50 or rss_start), 1),
            "parameter_sets": len(ref), "health_at_end": health,
            "kinds": {k: sum(o.kind == k for o in outcomes) for k in KINDS},
        }
        self.client.close()
        return {"figures": figures, "problems": [
            {"n": o.n, "kind": o.kind, "note": o.note, "outcome": o.outcome, "statuses": o.statuses,
             "problems": o.problems} for o in outcomes if o.problems]}


def figures_line(f: dict) -> str:
    return (f"soak: {f['requests']} requests at concurrency {f['concurrency']}: {f['completed']} completed, "
            f"{f['rejected']} rejected, {f['cancelled']} cancelled, {f['abandoned']} abandoned, {f['failed']} failed, "
            f"lost {f['lost']}, duplicated {f['duplicated']}, cross-contaminated {f['cross_contaminated']}, "
            f"wrong bytes {f['wrong_bytes']}, unexpected 5xx {f['unexpected_5xx']}; latency p50 {f['latency_p50_s']} s, "
            f"p95 {f['latency_p95_s']} s; memory {f['rss_after_50_mib']} -> "
            f"{max(f['rss_end_mib'], f['rss_after_reference_mib'])} MiB (delta {f['memory_delta_mib']} MiB); "
            f"/health {f['health_at_end']}; {f['wall_s']} s")


SERVICE_ENV = {"PLACEMENT": "replicas", "REPLICAS": "2", "DEFAULT_STEPS": "2", "DEFAULT_WIDTH": "256",
               "DEFAULT_HEIGHT": "256", "QUEUE_SIZE": "16"}


def start_service(service: str, port: int, cache_dir: Path, lora_dir: Path, log_path: Path) -> subprocess.Popen:
    """`python -m flux_api SERVICE --model tiny` as a process of its own (two CPU replicas, small defaults)."""
    prefix = f"FLUX_{service.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUX_BF16_", "FLUX_FP4_"))}
    env.update({prefix + k: v for k, v in SERVICE_ENV.items()})
    env.update({prefix + "CACHE_DIR": str(cache_dir), prefix + "LORA_DIR": str(lora_dir), "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen([sys.executable, "-m", "flux_api", service, "--model", "tiny", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_service(proc: subprocess.Popen) -> None:
    stop_process(proc, 60)


def log_problems(text: str) -> list[str]:
    """Lines of the service log that show an unhandled error."""
    marks = ("Traceback", "exception was never retrieved", "Exception in ASGI", " ERROR ", "ExceptionGroup")
    return [line for line in text.splitlines() if any(m in line for m in marks)]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--service", choices=["bf16", "fp4"], default="bf16")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--out", help="write the figures and problems here (JSON)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from flux_api.engine.tiny import ensure_tiny_model
    from flux_api.service_process import wait_until_ready

    work = Path(tempfile.mkdtemp(prefix="flux-soak-"))
    cache = work / "cache"
    ensure_tiny_model(cache)
    loras = make_loras(ensure_tiny_model(cache), work / "loras")
    port = free_port()
    proc = start_service(args.service, port, cache, loras, work / "service.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            wait_until_ready(c, 120, lambda: None if proc.poll() is None else f"exit {proc.returncode}", 0.2)
        report = Soak(f"http://127.0.0.1:{port}", proc.pid, args.requests, args.concurrency, args.seed).run()
    finally:
        stop_service(proc)
    report["service"] = args.service
    report["log_problems"] = log_problems((work / "service.log").read_text())[:50]
    print(figures_line(report["figures"]))
    for p in report["problems"]:
        print("  problem:", p)
    for line in report["log_problems"]:
        print("  log:", line)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_loras(tiny_dir: Path, out: Path) -> Path:
    """Real LoRAs for the tiny transformer, the ones conftest's lora_dir starts from: style and detail (peft
    adapters with random non-zero A and B, so they change the output) and kohya (BFL module names with
    lora_down/lora_up/alpha, which diffusers converts)."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for name, seed, targets in (("style", 1, ["to_q", "to_k", "to_v", "to_out.0"]), ("detail", 2, ["to_q", "to_v"])):
        tr = FluxTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tr.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
        FluxPipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(tr),
                                       weight_name=f"{name}.safetensors")
    g = torch.Generator().manual_seed(3)
    kohya = {}
    inner = tr.config.num_attention_heads * tr.config.attention_head_dim  # the model's width
    for mod, out_f in (("double_blocks_0_img_attn_qkv", 3 * inner), ("double_blocks_0_img_attn_proj", inner)):
        kohya[f"lora_unet_{mod}.lora_down.weight"] = torch.randn(4, inner, generator=g)
        kohya[f"lora_unet_{mod}.lora_up.weight"] = torch.randn(out_f, 4, generator=g)
        kohya[f"lora_unet_{mod}.alpha"] = torch.tensor(4.0)
    save_file(kohya, out / "kohya.safetensors")
    return out


if __name__ == "__main__":
    sys.exit(main())
