"""The web page at /ui and the API docs at /docs and /redoc.

- In process: the page's files, the redirect from /ui, and pages that name no other host.
- In a real browser (`socket`): Debian's chromium, driven by Playwright (never a browser of
  Playwright's own), against a real uvicorn server on the tiny model. The page is used as a person
  would: it types a prompt, generates, sees the progress and the images, cancels a second run, and is
  told which field is wrong. /docs and /redoc list the operations. Chromium's background networking is
  off and every request it makes to another host than 127.0.0.1 is refused and fails the test, as does
  any failed request or error status the test did not cause on purpose: that is the proof that the
  pages work with no network beyond the loopback address.

Without chromium or playwright the browser tests fail under CI (CI=true) and are skipped elsewhere,
saying why. FLUX_API_WRITE_SCREENSHOT=1 writes the README's screenshot (docs/images/ui.png); every run
saves one in the test's tmp folder.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import BF16_DEFAULTS, Served
from flux_api.app import create_app
from flux_api.settings import BF16Settings

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "images" / "ui.png"
# Debian's package: the binary itself, not /usr/bin/chromium's launcher, which adds flags of its own
# (remote extensions among them).
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.access(p, os.X_OK)), None)
# Background networking off. (Playwright passes most of these too, with a --disable-features list of
# its own, OptimizationHints and NetworkTimeServiceQuerying among them; a second --disable-features
# here would replace that list, so there is none.)
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--no-pings", "--metrics-recording-only",
    # Anything the browser itself still sends to another host goes to a closed loopback port (loopback
    # is never proxied): it cannot leave the machine.
    "--proxy-server=http://127.0.0.1:9",
]
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------- in process: the files, no browser

def test_the_page_and_its_files_are_served(bf16):
    c = bf16.client
    first = c.get("/ui")
    assert first.status_code == 307 and first.headers["location"] == "ui/"  # relative: any proxy prefix works
    page = c.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        r = c.get(f"/ui/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], (name, r.headers)
        assert f'"{name}"' in page.text  # the page loads it, by a relative URL
    assert c.head("/ui/app.js").status_code == 200
    assert c.get("/ui/missing.js").status_code == 404
    assert not any(p.startswith(("/ui", "/docs", "/redoc")) for p in c.get("/openapi.json").json()["paths"])


def test_docs_pages_name_no_other_host(bf16):
    c = bf16.client
    for path in ("/docs", "/redoc", "/ui/"):
        html = c.get(path).text
        urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert urls, path
        assert not [u for u in urls if urlsplit(u).netloc], f"{path} loads from another host: {urls}"
        assert "fonts.googleapis" not in html and "cdn." not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        assert c.get(f"/docs/static/{asset}").status_code == 200, asset
    redoc_js = c.get("/docs/static/redoc.standalone.js")
    assert redoc_js.status_code == 200 and "javascript" in redoc_js.headers["content-type"]
    assert "cdn.redoc.ly" not in redoc_js.text and len(redoc_js.content) > 500_000  # the bundle, less its CDN logo
    assert '"validatorUrl": null' in c.get("/docs").text  # Swagger UI's validator badge would call out
    # The OAuth2 redirect page takes the identity provider's query string (no unknown-parameter 422).
    redirect = c.get("/docs/oauth2-redirect?code=abc&state=xyz")
    assert redirect.status_code == 200 and "oauth2" in redirect.text.lower()


# ---------------------------------------------------------------- in a real browser

def _missing(why: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why}: CI must run the browser test (scripts/bootstrap.sh installs chromium as root)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        _missing("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    settings = BF16Settings(model="tiny", cache_dir=tmp_path_factory.mktemp("ui-cache"),
                            lora_dir=tiny_dir / "loras", **BF16_DEFAULTS)  # the trained "green" LoRA
    with Served(create_app(settings)) as s:
        yield s.wait_ready()


class Offline:
    """Every request of a browser context: loopback ones go on; any other is aborted and recorded.
    Also recorded: requests that failed, and answers >= 400."""

    def __init__(self, context):
        self.elsewhere: list[str] = []
        self.failed: list[str] = []
        self.errors: list[tuple[str, str, int]] = []
        context.route("**/*", self._route)
        context.on("requestfailed", lambda r: self.failed.append(f"{r.method} {r.url}: {r.failure}"))
        context.on("response", self._response)

    def _route(self, route):
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname == LOOPBACK:
            route.continue_()
        else:
            self.elsewhere.append(route.request.url)
            route.abort("blockedbyclient")

    def _response(self, resp):
        if resp.status >= 400:
            self.errors.append((resp.request.method, urlsplit(resp.url).path, resp.status))

    def check(self, expected_errors=()):
        assert self.elsewhere == [], f"the browser tried to reach other hosts: {self.elsewhere}"
        failed = [f for f in self.failed if LOOPBACK in f and "blockedbyclient" not in f]
        assert failed == [], f"requests failed: {failed}"
        assert self.errors == list(expected_errors), f"error answers: {self.errors}"


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1000, "height": 900}, service_workers="block")
    ctx.set_default_timeout(30_000)  # generous: CI machines have 2 cores, shared with the server
    from playwright.sync_api import expect
    expect.set_options(timeout=30_000)
    yield ctx
    ctx.close()


def _status_history(page) -> None:
    """Record every text #status shows, so a test can see the progress it went through."""
    page.evaluate("""() => {
        window.statusSeen = [];
        const status = document.getElementById('status');
        new MutationObserver(() => window.statusSeen.push(status.textContent))
            .observe(status, {childList: true, characterData: true, subtree: true});
    }""")


def _bytes_of(page, url: str) -> bytes:
    b64 = page.evaluate("""async (url) => {
        const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
        let s = ''; for (const b of bytes) s += String.fromCharCode(b);
        return btoa(s);
    }""", url)
    return base64.b64decode(b64)


@pytest.mark.socket
def test_the_page_generates_shows_progress_and_cancels(server, context, tmp_path):
    from playwright.sync_api import expect

    offline = Offline(context)
    page = context.new_page()
    page.goto(f"{server.url}/ui")
    assert page.url == f"{server.url}/ui/"
    # Filled from the service: its configured defaults and limits, its LoRAs, its presets.
    expect(page.locator("#lora_name option[value=green]")).to_have_count(1)
    expect(page.locator("#preset option[value=fast]")).to_have_count(1)
    expect(page.locator("#width")).to_have_value("256")
    expect(page.locator("#num_inference_steps")).to_have_value(str(BF16_DEFAULTS["default_steps"]))
    assert page.locator("#width").get_attribute("step") == "16"
    expect(page.locator("#service-state")).to_contain_text("ready")

    # 1. Two images, seeds 42 and 43: progress over all 16 steps, then both images with seeds and timings.
    _status_history(page)
    prompt = "a large red circle in the top left on a blue background"
    page.fill("#prompt", prompt)
    page.fill("#num_inference_steps", "8")
    page.fill("#seed", "42")
    page.fill("#num_images", "2")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done: 2 images")
    seen = page.evaluate("window.statusSeen")
    assert any(re.match(r"Step \d+ of 16 \(image [12] of 2\)", s) for s in seen), seen
    assert page.locator("#progress").evaluate("p => p.value") == 1
    figures = page.locator("#images figure")
    expect(figures).to_have_count(2)
    for i, seed in enumerate((42, 43)):
        fig = figures.nth(i)
        expect(fig.locator(".seed")).to_have_text(f"seed {seed}")
        expect(fig.locator(".timings")).to_contain_text("inference")
        assert fig.locator("img").evaluate("img => img.complete && img.naturalWidth") == 256
        link = fig.locator("a.download")
        assert link.get_attribute("download") == f"flux-{seed}.png"
    # What the page shows is the service's image, byte for byte (same request, same seed).
    same = server.client.post("/generate", json={"prompt": prompt, "num_inference_steps": 8, "seed": 42, "num_images": 2})
    shown = _bytes_of(page, figures.nth(1).locator("a.download").get_attribute("href"))
    assert shown == base64.b64decode(same.json()["images"][1])

    # 2. With the LoRA picked from the list: the service applied it (the history says so).
    page.select_option("#lora_name", "green")
    page.fill("#prompt", "a large red circle in the center on a white background")
    page.fill("#num_images", "1")
    page.fill("#seed", "7")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done: 1 image")
    expect(page.locator("#history li")).to_have_count(3)
    expect(page.locator("#history li").first).to_contain_text("LoRA green@1")
    shot = page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
    if os.environ.get("FLUX_API_WRITE_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "ui.png", SCREENSHOT)
    assert len(shot) > 10_000

    # 3. A long run, cancelled once it is running: the job ends cancelled (the API says so too).
    page.select_option("#lora_name", "")
    page.fill("#seed", "")
    page.fill("#num_inference_steps", "100")
    page.click("#generate")
    page.wait_for_function("() => /Step [1-9]\\d* of 100/.test(document.getElementById('status').textContent)")
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("Cancelled.")
    job = server.client.get(f"/jobs/{page.locator('#status').get_attribute('data-job-id')}").json()
    assert job["state"] == "cancelled" and job["step"] < 100, job
    expect(page.locator("#history li")).to_have_count(3)  # nothing added
    expect(page.locator("#generate")).to_be_enabled()

    # 4. An invalid field: the message names it and the field is marked.
    page.fill("#num_inference_steps", "4")
    page.fill("#width", "128")
    page.click("#generate")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("(422): width: Input should be greater than or equal to 256")
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")

    offline.check(expected_errors=[("POST", "/jobs", 422)])


@pytest.mark.socket
def test_docs_and_redoc_list_the_operations_offline(server, context):
    offline = Offline(context)
    page = context.new_page()
    spec = server.client.get("/openapi.json").json()
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}

    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock-summary-path")
    rendered = page.eval_on_selector_all(
        ".opblock", "els => els.map(e => [e.querySelector('.opblock-summary-method').textContent, "
                    "e.querySelector('.opblock-summary-path').getAttribute('data-path')])")
    assert {(m, p) for m, p in rendered} == operations

    page.goto(f"{server.url}/redoc")
    page.wait_for_selector("[role=menuitem], .menu-content", state="attached")
    summaries = {op["summary"] for ops in spec["paths"].values() for op in ops.values()}
    page.wait_for_function("s => document.body.textContent.includes(s)", arg="Queue a generation")
    text = page.evaluate("document.body.textContent")
    assert [s for s in summaries if s not in text] == []

    offline.check()


KEY = "ui-test-key-0123456789abcdef"


def _key_recorder(context) -> list[tuple[str, str, str | None]]:
    """(method, path, Authorization header) of every request the page makes with fetch()."""
    calls: list[tuple[str, str, str | None]] = []
    context.on("request", lambda r: r.resource_type == "fetch" and calls.append(
        (r.method, urlsplit(r.url).path, r.headers.get("authorization"))))
    return calls


@pytest.mark.socket
def test_the_page_sends_the_key_on_every_call(server, context):
    """Whatever the service asks: a key entered once is stored and sent on every call, the event stream
    included (which is why the page reads it with fetch, not EventSource), and after a reload."""
    from playwright.sync_api import expect

    offline = Offline(context)
    calls = _key_recorder(context)
    page = context.new_page()
    page.goto(f"{server.url}/ui/")
    expect(page.locator("#lora_name option[value=green]")).to_have_count(1)
    assert calls and all(auth is None for _, _, auth in calls)  # no key yet: none sent
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    assert page.evaluate("localStorage.getItem('flux_api.api_key')") == KEY
    calls.clear()
    page.fill("#prompt", "a small green triangle")
    page.fill("#num_inference_steps", "2")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done: 1 image")
    page.reload()
    expect(page.locator("#api-key")).to_have_value(KEY)
    expect(page.locator("#lora_name option[value=green]")).to_have_count(1)
    # A preset fills the fields it sets and leaves them to the service (a field given would win).
    page.select_option("#preset", "fast")
    expect(page.locator("#num_inference_steps")).to_have_value("12")
    page.fill("#prompt", "a small green triangle")
    with page.expect_request(lambda r: r.method == "POST" and urlsplit(r.url).path == "/jobs") as sent:
        page.click("#generate")
    body = json.loads(sent.value.post_data)
    assert body["preset"] == "fast" and "num_inference_steps" not in body, body
    expect(page.locator("#images figcaption")).to_contain_text("12 steps")
    paths = {(m, re.sub(r"/jobs/[0-9a-f]+", "/jobs/{id}", p)) for m, p, _ in calls}
    assert {("POST", "/jobs"), ("GET", "/jobs/{id}/events"), ("GET", "/loras"), ("GET", "/openapi.json")} <= paths
    assert [c for c in calls if c[2] != f"Bearer {KEY}"] == []
    offline.check()


@pytest.mark.socket
def test_with_api_keys_on_the_page_asks_for_the_key(tmp_path_factory, tiny_dir, context):
    """With keys on: the page's own files load without one, the first refused call asks for it, and
    with it the page works."""
    from playwright.sync_api import expect

    settings = BF16Settings(model="tiny", cache_dir=tmp_path_factory.mktemp("ui-keys-cache"), lora_dir=tiny_dir / "loras",
                            api_keys=[KEY], **BF16_DEFAULTS)
    with Served(create_app(settings)) as s:
        s.client.headers["Authorization"] = f"Bearer {KEY}"
        s.wait_ready()
        offline = Offline(context)
        calls = _key_recorder(context)
        page = context.new_page()
        page.goto(f"{s.url}/ui")
        expect(page.locator("#service-state")).not_to_have_text("connecting...")
        page.fill("#prompt", "a small green triangle")
        page.fill("#num_inference_steps", "2")
        page.click("#generate")
        expect(page.locator("#key-needed")).to_be_visible()
        expect(page.locator("#error")).to_contain_text("needs an API key")
        page.fill("#api-key", KEY)
        page.click("#key-form button")
        expect(page.locator("#key-needed")).to_be_hidden()
        expect(page.locator("#lora_name option[value=green]")).to_have_count(1)  # listed now, with the key
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("Done: 1 image")
        expect(page.locator("#images img")).to_have_count(1)
        page.goto(f"{s.url}/docs")
        page.wait_for_selector(".opblock-summary-path")
    # Only API calls made before the key was given were refused; the page, its files and the docs never.
    refused = offline.errors
    assert refused and all(status == 401 for _, _, status in refused), refused
    assert ("POST", "/jobs", 401) in refused
    assert not [p for _, p, _ in refused if p.startswith(("/ui", "/docs", "/redoc", "/openapi.json"))]
    offline.errors = []
    offline.check()
    keyed = [c for c in calls if c[2] == f"Bearer {KEY}"]
    assert any(m == "POST" and p == "/jobs" for m, p, _ in keyed)
    assert any(p.endswith("/events") for _, p, _ in keyed)
