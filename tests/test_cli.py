"""The `flux-api` command-line client (flux_api/cli) against a real service on the tiny model: generate with
its progress bar, several images, LoRAs, errors as one line with their exit status, Ctrl-C cancelling the
job on the service, the API key header, `serve` building the launch scripts' command, and an import that
stays free of torch.

The commands run in process through Typer's CliRunner against a real uvicorn (`Served`), and as real
processes (`python -m flux_api.cli`) where a process matters: Ctrl-C, `serve`, import time. `Receiver` is
a stand-in HTTP server (not the service) for what the service cannot be made to do here: record the
request headers (the API key; the server's side of keys is another branch), answer slowly, answer HTML.
"""

import base64
import http.server
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import BF16_DEFAULTS, Served, build_wheel, free_port, wait_for, wait_state
from PIL import Image
from typer.testing import CliRunner

from flux_api.app import create_app
from flux_api.cli import app
from flux_api.cli.client import parse_sse
from flux_api.cli.generate import output_paths
from flux_api.cli.serve import serve_command
from flux_api.settings import BF16Settings

ROOT = Path(__file__).resolve().parent.parent
EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130


def cli(*args, env: dict | None = None):
    """`flux-api ARGS` in process; the result (exit_code, stdout, stderr). Only an exit, never an exception."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_error_line(result, starts: str) -> str:
    """The command failed with exactly one line on stderr, `error: ...` starting as said; no traceback."""
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"error: {starts}"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[-1]


@pytest.fixture(scope="module")
def served(cache_dir, lora_dir):
    """The BF16 service on the tiny model, under a real uvicorn (the CLI talks HTTP)."""
    settings = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, **BF16_DEFAULTS)
    with Served(create_app(settings)) as s:
        yield s.wait_ready()


def png(path: Path) -> Image.Image:
    img = Image.open(path)
    assert img.format == "PNG"
    return img


# --- generate ---------------------------------------------------------------------------------------------

@pytest.mark.socket
def test_generate_shows_progress_writes_the_png_and_prints_its_seed(served, tmp_path):
    out = tmp_path / "fox.png"
    # TTY_COMPATIBLE: Rich draws its live bar as on a terminal (else it prints only the last frame)
    r = cli("generate", "a red circle on a blue background", "-s", served.url, "-o", out, "--seed", 5,
            "--steps", 4, "--size", "320x256", env={"TTY_COMPATIBLE": "1"})
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == f"seed 5: {out}"
    assert "4/4" in r.stderr and "━" in r.stderr and "steps" in r.stderr  # the bar, at its end
    assert png(out).size == (320, 256)  # width x height, in that order
    # the same seed and parameters give the same bytes as /generate
    same = served.client.post("/generate", json={"prompt": "a red circle on a blue background", "seed": 5,
                                                 "num_inference_steps": 4, "width": 320, "height": 256})
    assert base64.b64decode(same.json()["image"]) == out.read_bytes()


@pytest.mark.socket
def test_several_images_are_numbered_files_with_consecutive_seeds(served, tmp_path):
    r = cli("generate", "a green square", "-s", served.url, "-o", tmp_path / "sq.png", "-n", 2, "--seed", 7,
            "--steps", 2)
    assert r.exit_code == 0, r.stderr
    a, b = tmp_path / "sq-1.png", tmp_path / "sq-2.png"
    assert r.stdout.splitlines() == [f"seed 7: {a}", f"seed 8: {b}"]
    assert png(a).size == png(b).size == (256, 256)  # the service's default size
    assert png(a).tobytes() != png(b).tobytes()
    assert "4/4" in r.stderr  # steps count over both images


@pytest.mark.socket
def test_default_names_come_from_the_job_and_the_format_from_the_extension(served, tmp_path):
    r = cli("generate", "a circle", "-s", served.url, "-o", tmp_path, "--steps", 2, "--seed", 1)
    job_id = r.stderr.split("job ", 1)[1].split()[0]
    assert r.exit_code == 0 and r.stdout.strip() == f"seed 1: {tmp_path / f'flux-{job_id[:8]}.png'}"
    r = cli("generate", "a circle", "-s", served.url, "-o", tmp_path / "c.webp", "--steps", 2)
    assert r.exit_code == 0 and Image.open(tmp_path / "c.webp").format == "WEBP"


@pytest.mark.socket
def test_lora_flags_reach_the_service(served, tmp_path):
    out = tmp_path / "green.png"
    r = cli("generate", "a red circle", "-s", served.url, "-o", out, "--steps", 2, "--seed", 3, "--lora", "green:0.8",
            "--first-block-cache", 0.3)
    assert r.exit_code == 0, r.stderr
    params = json.loads(png(out).info["parameters"])  # the generation parameters the service embedded
    assert params["loras"] == [{"name": "green", "weight": 0.8}] and params["first_block_cache"] == 0.3
    r = cli("generate", "a red circle", "-s", served.url, "--steps", 2, "--lora", "no-such-lora")
    assert r.exit_code == EXIT_SERVER
    one_error_line(r, "404 lora_not_found: ")


@pytest.mark.socket
@pytest.mark.parametrize("args,says", [
    (["--steps", 0], "422 validation_error: num_inference_steps: "),
    (["--size", "100x100"], "422 validation_error: width: "),
    (["--preset", "nonsense"], "422 validation_error: preset: "),
    (["--first-block-cache", 1.5], "422 validation_error: first_block_cache: "),
])
def test_the_services_refusal_is_one_line_and_status_1(served, tmp_path, args, says):
    r = cli("generate", "a cat", "-s", served.url, "-o", tmp_path / "x.png", *args)
    assert r.exit_code == EXIT_SERVER
    one_error_line(r, says)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,says", [
    (["--size", "big"], "--size 'big' is not WIDTHxHEIGHT"),
    (["--lora", "green:heavy"], "--lora 'green:heavy': the weight"),
    (["-o", "x.gif"], "-o x.gif: unknown image extension '.gif'"),
    (["-o", "x.png", "--format", "jpeg"], "-o x.png is a png name but --format is jpeg"),
    (["-s", "ftp://example.org"], "--server 'ftp://example.org' is not an http:// or https:// URL"),
])
def test_usage_errors_are_status_2_before_any_request(args, says):
    # the server's port is closed: a usage error is found before anything is sent
    r = cli("generate", "a cat", "-s", f"http://127.0.0.1:{free_port()}", *args)
    assert r.exit_code == EXIT_USAGE
    one_error_line(r, says)


def test_connection_refused_is_one_line_and_status_3():
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["generate", "a cat"], ["status"], ["loras"], ["jobs", "x"]):
        r = cli(*args, "-s", url)
        assert r.exit_code == EXIT_UNREACHABLE, r.stderr
        one_error_line(r, f"cannot connect to {url}: ")


# --- status, loras, jobs ----------------------------------------------------------------------------------

@pytest.mark.socket
def test_status_loras_and_jobs(served, tmp_path):
    r = cli("status", "-s", served.url)
    assert r.exit_code == 0 and "flux-bf16" in r.stdout and "health     ok" in r.stdout, r.stdout
    as_json = json.loads(cli("status", "-s", served.url, "--json").stdout)
    assert as_json["health"] == {"status": "ok"} and as_json["model_status"]["service"] == "bf16"
    r = cli("loras", "-s", served.url)
    assert r.exit_code == 0 and "green" in r.stdout and "style" in r.stdout
    assert {x["name"] for x in json.loads(cli("loras", "-s", served.url, "--json").stdout)["available"]} >= {"green"}

    r = cli("generate", "a cat", "-s", served.url, "-o", tmp_path / "a.png", "--seed", 9, "--steps", 2)
    job_id = r.stderr.split("job ", 1)[1].split()[0]
    r = cli("jobs", job_id, "-s", served.url, "-o", tmp_path / "again.png")
    assert r.exit_code == 0 and "done" in r.stdout and "seeds  9" in r.stdout, r.stdout
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    body = json.loads(cli("jobs", job_id, "-s", served.url, "--json").stdout)
    assert body["state"] == "done" and "image" not in body["result"] and body["result"]["seeds"] == [9]
    r = cli("jobs", "-s", served.url)  # the list (GET /jobs), newest first
    assert r.exit_code == 0 and job_id in r.stdout and "done" in r.stdout, r.stdout
    listed = json.loads(cli("jobs", "-s", served.url, "--json", "--limit", 1).stdout)["jobs"]
    assert [j["id"] for j in listed] == [job_id] and "result" not in listed[0]
    assert job_id not in {j["id"] for j in served.client.get("/jobs", params={"state": "queued"}).json()["jobs"]}
    assert served.client.get("/jobs", params={"state": ["done", "failed"]}).json()["jobs"][0]["id"] == job_id
    assert cli("jobs", "-s", served.url, "-o", tmp_path / "x.png").exit_code == EXIT_USAGE
    r = cli("jobs", "no-such-job", "-s", served.url)
    assert r.exit_code == EXIT_SERVER
    one_error_line(r, "404 job_not_found: ")
    r = cli("cancel", job_id, "-s", served.url)
    assert r.exit_code == EXIT_SERVER
    one_error_line(r, "409 job_already_ended: ")


# --- Ctrl-C -----------------------------------------------------------------------------------------------

@pytest.mark.socket
def test_ctrl_c_cancels_the_job_on_the_service(served, tmp_path):
    """A real process (the console script's code path), a long job, SIGINT once it runs."""
    proc = subprocess.Popen([sys.executable, "-m", "flux_api.cli", "generate", "a slow blue circle", "-s", served.url,
                             "--steps", "100", "--size", "512x512"],
                            cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
                            # as a terminal starts it: Ctrl-C's signal not ignored (a shell's background job,
                            # which may be running this suite, passes SIGINT on ignored, and Python keeps that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        first = lines.get(timeout=60)
        assert first.startswith("job "), first
        job_id = first.split()[1]
        wait_for(lambda: served.client.get(f"/jobs/{job_id}").json()["step"] >= 1, 60, 0.02, "the job's first step")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == EXIT_INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)  # the reader thread drains what is left
    rest = "".join(iter(lambda: lines.get_nowait() if not lines.empty() else None, None))
    assert f"cancelled job {job_id}" in rest and "Traceback" not in rest
    end = wait_state(served, job_id, {"cancelled", "done", "failed", "timed_out"})
    assert end["state"] == "cancelled" and end["step"] < end["total_steps"]
    assert not list(tmp_path.iterdir())  # no image written


# --- the API key, and answers the service would not give (a stand-in server) -------------------------------

class Receiver:
    """A stand-in HTTP server, NOT the service: answers each path as the test sets it ({path: (status, content
    type, body, delay_s)}) and records every request's headers."""

    def __init__(self, answers: dict):
        self.answers, self.seen = answers, []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                receiver.seen.append(dict(self.headers))
                status, ctype, body, delay = receiver.answers.get(self.path, (404, "text/plain", "no", 0))
                time.sleep(delay)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()  # shutdown() in 10 ms, not 0.5 s
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def api_error(status: int, type_: str, message: str) -> tuple:
    body = {"error": {"type": type_, "message": message, "code": status, "request_id": "r", "details": None}}
    return status, "application/json", json.dumps(body), 0


@pytest.mark.socket
def test_the_api_key_from_the_option_or_the_environment_opens_a_keyed_service(cache_dir, lora_dir, tmp_path):
    """A real service with API keys on: the key reaches every call generate makes (the job, its event
    stream, its result), from --api-key or FLUX_API_KEY; without one, the service's 401 is one line."""
    settings = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, api_keys=["k-one", "k-two"],
                            **BF16_DEFAULTS)
    with Served(create_app(settings)) as keyed:
        keyed.client.headers["Authorization"] = "Bearer k-one"
        keyed.wait_ready()
        r = cli("generate", "a red circle", "-s", keyed.url, "--api-key", "k-one", "--steps", 2, "--seed", 3,
                "-o", tmp_path / "a.png")
        assert r.exit_code == 0 and "seed 3:" in r.stdout, r.stderr
        assert png(tmp_path / "a.png").size == (256, 256)
        assert cli("loras", "-s", keyed.url, env={"FLUX_API_KEY": "k-two"}).exit_code == 0
        r = cli("loras", "-s", keyed.url, env={"FLUX_API_KEY": None})
        assert r.exit_code == EXIT_SERVER
        assert one_error_line(r, "401 unauthorized: missing API key").endswith("or FLUX_API_KEY)")
        r = cli("loras", "-s", keyed.url, "--api-key", "k-wrong")
        assert r.exit_code == EXIT_SERVER and "k-wrong" not in r.stderr
        one_error_line(r, "401 unauthorized: invalid API key")


@pytest.mark.socket
def test_answers_that_are_not_the_api_are_one_line_too():
    with Receiver({"/health": api_error(401, "unauthorized", "a valid API key is required"),
                   "/loras": (502, "text/html", "<html><body>\n<h1>502 Bad Gateway</h1>\n</body></html>", 0),
                   "/jobs/slow": (200, "application/json", "{}", 3),
                   "/jobs/html": (200, "text/html", "<html>hello</html>", 0)}) as recv:
        r = cli("status", "-s", recv.url)
        assert r.exit_code == EXIT_SERVER
        assert one_error_line(r, "401 unauthorized: a valid API key is required").endswith("or FLUX_API_KEY)")
        r = cli("loras", "-s", recv.url)
        assert r.exit_code == EXIT_SERVER
        one_error_line(r, "502 Bad Gateway: <html><body> <h1>502 Bad Gateway</h1> </body></html>")
        r = cli("jobs", "slow", "-s", recv.url, "--timeout", "0.3")
        assert r.exit_code == EXIT_UNREACHABLE
        one_error_line(r, f"no answer from {recv.url} within 0.3 s")
        r = cli("jobs", "html", "-s", recv.url)
        assert r.exit_code == EXIT_UNREACHABLE
        one_error_line(r, f"{recv.url} answered 200 with something that is not the API's JSON (text/html)")


@pytest.mark.socket
def test_status_of_a_loading_service_is_shown_and_exits_1():
    loading = {"status": "loading", "phase": "loading_weights", "replicas": {"alive": 0, "dead": []}}
    with Receiver({"/health": (503, "application/json", json.dumps(loading), 0),
                   "/model-status": (200, "application/json", json.dumps({"service": "fp4", "state": "loading_weights"}), 0)}) as recv:
        r = cli("status", "-s", recv.url)
    assert r.exit_code == EXIT_SERVER and not r.stderr
    assert "health     loading (phase loading_weights)" in r.stdout and "flux-fp4" in r.stdout


# --- serve --------------------------------------------------------------------------------------------------

RECORDING_PYTHON = """#!/bin/sh
# a stand-in for the venv's python: records how launch.sh called it, starts nothing
printf '%s\\n' "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}" "$@" > "$0.called"
"""


def launch_sh_command(tmp_path: Path, script: str, *args) -> tuple[list[str], str]:
    """What start_api.sh / start_bf16_api.sh exec for these arguments: the python arguments and
    CUDA_VISIBLE_DEVICES, recorded by a stand-in python in a stand-in venv (already bootstrapped)."""
    import hashlib

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    python.write_text(RECORDING_PYTHON)
    python.chmod(0o755)
    # bootstrap.sh's stamp for this pyproject.toml: it then has nothing to install
    (venv / f".flux_api-{hashlib.sha1((ROOT / 'pyproject.toml').read_bytes()).hexdigest()[:12]}").touch()
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    p = subprocess.run([str(ROOT / script), *args], env={**env, "FLUX_API_VENV": str(venv)}, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    visible, *argv = (venv / "bin" / "python.called").read_text().splitlines()
    return argv, visible.split("=", 1)[1]


@pytest.mark.socket  # runs the launch scripts as processes
@pytest.mark.parametrize("service,args", [
    ("fp4", []),
    ("bf16", ["-g", "0,1", "-p", "9001", "--model", "tiny"]),
    ("fp4", ["-g", "1", "--model", "/models/flux", "-p", "9000", "--backend", "bnb-nf4", "--host", "0.0.0.0"]),
])
def test_serve_builds_the_launch_scripts_command(tmp_path, service, args):
    script = {"fp4": "start_api.sh", "bf16": "start_bf16_api.sh"}[service]
    argv, visible = launch_sh_command(tmp_path, script, *args)
    r = cli("serve", service, *args, "--dry-run", env={"CUDA_VISIBLE_DEVICES": None})
    assert r.exit_code == 0, r.stderr
    words = r.stdout.split()
    cli_visible = words.pop(0).split("=", 1)[1] if words[0].startswith("CUDA_VISIBLE_DEVICES=") else "<unset>"
    assert cli_visible == visible
    assert words[0] == sys.executable  # this Python, where the CLI is installed; launch.sh: the venv's
    # the same flags with the same values (launch.sh keeps the order they were typed in)
    assert words[1:4] == argv[:3] == ["-m", "flux_api", service]
    assert dict(zip(words[4::2], words[5::2])) == dict(zip(argv[3::2], argv[4::2]))


@pytest.mark.parametrize("gpus,says", [("abc", "not a comma-separated list"), ("0,,1", "not a comma-separated list"),
                                       ("1,1", "names a GPU twice"), ("-1", "not a comma-separated list")])
def test_serve_refuses_the_gpu_lists_launch_sh_refuses(gpus, says):
    r = cli("serve", "bf16", "-g", gpus, "--dry-run")
    assert r.exit_code == EXIT_USAGE
    assert says in one_error_line(r, "-g")
    with pytest.raises(ValueError, match="does not exist"):
        serve_command("bf16", gpus="2", gpu_count=2)
    with pytest.raises(ValueError, match="--backend is for the fp4 service"):
        serve_command("bf16", backend="bnb-fp4")


@pytest.mark.socket
def test_serve_becomes_the_service(cache_dir):
    """A real start on the tiny model: the CLI's process turns into the service (exec), so SIGTERM reaches
    uvicorn itself and nothing is left serving after it."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}, "FLUX_BF16_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "flux_api.cli", "serve", "bf16", "--model", "tiny", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def live():
            assert proc.poll() is None, proc.stderr.read()
            try:
                return httpx.get(f"{url}/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(live, 120, 0.1, "the service started by flux-api serve")
        r = cli("status", "-s", url)
        assert r.exit_code == 0 and f"flux-bf16 at {url}" in r.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == -signal.SIGTERM  # uvicorn re-raises the signal it handled: the service got it
    assert "starting the bf16 service (CUDA_VISIBLE_DEVICES=" in proc.stderr.read()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health/live", timeout=5)


# --- the package: the console script, and an import without torch --------------------------------------------

@pytest.mark.socket
def test_the_installed_console_script_talks_to_the_service(served, tmp_path):
    """The package built and installed (as pip does: a wheel, its entry point made into bin/flux-api), then
    that script run against the service."""
    wheel = build_wheel(tmp_path)
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "install", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    p = subprocess.run([str(target / "bin" / "flux-api"), "status", "-s", served.url], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(target)})  # the installed copy
    assert p.returncode == 0 and f"flux-bf16 at {served.url}" in p.stdout, p.stderr


def test_help_imports_neither_torch_nor_the_engine():
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "flux_api.cli", "--help"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "generate" in p.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "typer" in imported and "httpx" in imported  # the list is real
    for heavy in ("torch", "diffusers", "transformers", "fastapi", "flux_api.engine", "flux_api.settings"):
        assert heavy not in imported, heavy


# --- pure helpers -------------------------------------------------------------------------------------------

def test_output_paths():
    assert output_paths(Path("o/out.png"), 1, "abcdef0123", "png") == [Path("o/out.png")]
    assert output_paths(Path("out.v2.png"), 2, "abcdef0123", "png") == [Path("out.v2-1.png"), Path("out.v2-2.png")]
    assert output_paths(Path("out"), 1, "abcdef0123", "jpeg") == [Path("out.jpg")]
    assert output_paths(None, 2, "abcdef0123", "webp") == [Path("flux-abcdef01-1.webp"), Path("flux-abcdef01-2.webp")]


def test_parse_sse():
    lines = [": ping", "event: state", 'data: {"a": 1}', "", "event: progress", "id: 3", 'data: {"step": 3}', "",
             'data: {"x":', "data: 2}", ""]
    assert list(parse_sse(iter(lines))) == [("state", {"a": 1}), ("progress", {"step": 3}), ("message", {"x": 2})]
