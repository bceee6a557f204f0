"""The soak (issue 10, item 3): about 200 mixed requests at concurrency 8 against each service as a process
of its own (`python -m flux_api`, a real uvicorn on 127.0.0.1, two CPU replicas, the tiny model), with
per-request LoRAs, cancels at random moments (after the last step too), invalid requests and clients
that go away mid /generate and mid SSE stream. The driver is tests/soak.py (also a command).

Every accepted request must end with the bytes a sequential run of it gives, or have been explicitly
rejected or cancelled: 0 lost, 0 duplicated, 0 cross-contaminated, 0 unexpected 5xx; a promised cancel
happens; the process's resident memory at most 200 MiB above what it was after the first 50 requests;
/health 200 at the end; no unhandled error in the service log.

The figures go to $FLUX_SOAK_FIGURES_DIR/soak-<service>.json (a temporary folder when unset) and to the
test output as one line (`pytest -s` or the captured stdout of a failure).
"""

import json
import os
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from soak import Soak, figures_line, log_problems, start_service, stop_service

from flux_api.service_process import wait_until_ready

pytestmark = [pytest.mark.socket, pytest.mark.slow]

REQUESTS, CONCURRENCY, SEED = 200, 8, 10
MEMORY_GROWTH_MIB = 200


@pytest.mark.parametrize("service", ["bf16", "fp4"])
def test_soak(service, cache_dir, lora_dir, tmp_path):
    port = free_port()
    log = tmp_path / "service.log"
    proc = start_service(service, port, cache_dir, lora_dir, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            wait_until_ready(c, 120, lambda: None if proc.poll() is None else f"exit {proc.returncode}: "
                             f"{log.read_text()[-2000:]}", 0.2)
        report = Soak(f"http://127.0.0.1:{port}", proc.pid, REQUESTS, CONCURRENCY, SEED).run()
    finally:
        stop_service(proc)
    report["service"] = service
    report["log_problems"] = log_problems(log.read_text())
    out = Path(os.environ.get("FLUX_SOAK_FIGURES_DIR") or tmp_path) / f"soak-{service}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    f = report["figures"]
    print(f"{service} {figures_line(f)} (details: {out})")

    # what the soak must have done, or it proves nothing
    assert f["requests"] == REQUESTS and f["concurrency"] == CONCURRENCY
    assert f["completed"] >= REQUESTS // 2 and f["cancelled"] >= 1 and f["abandoned"] >= 10, f
    # what the service must have done
    assert (f["lost"], f["duplicated"], f["cross_contaminated"], f["wrong_bytes"], f["unexpected_5xx"]) == (0,) * 5, f
    assert f["memory_delta_mib"] <= MEMORY_GROWTH_MIB, f
    assert f["health_at_end"] == 200, f
    problems = [f"#{p['n']} {p['kind']} {p['note']}: {'; '.join(p['problems'])}" for p in report["problems"]]
    assert not problems, f"{len(problems)} requests went wrong:\n" + "\n".join(problems)
    assert not report["log_problems"], "the service logged unhandled errors:\n" + "\n".join(report["log_problems"][:20])
