"""The CLI's HTTP side: one httpx client per command, every failure turned into one readable line.

A `CLIError` carries the line and the exit status. Nothing here imports the engine or torch: the CLI is
a client of the HTTP API, and `flux-api --help` stays fast.
"""

from __future__ import annotations

import json
from typing import Iterator

import httpx

from .. import __version__

# Exit statuses: a shell script can tell "the server said no" from "no server" from "you typed it wrong".
SERVER_ERROR = 1  # the server answered with an error (any 4xx/5xx), or the job failed or was cancelled
USAGE_ERROR = 2  # a bad option or argument (Click's own status for usage errors)
UNREACHABLE = 3  # no usable answer: connection refused, a timeout, or an answer that is not the API's
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

DEFAULT_URL = "http://127.0.0.1:8000"


class CLIError(Exception):
    """A failure shown as `error: <message>` on stderr, with `exit_code`."""

    def __init__(self, message: str, exit_code: int = SERVER_ERROR):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(resp: httpx.Response) -> str:
    """`422 validation_error: width: ...` from the API's error body, `{"error": {"type", "message", ...}}`;
    whatever else answered (a proxy's HTML page) is shown as its status and its first words."""
    try:
        err = resp.json()["error"]
        kind, message = err.get("type") or err.get("code"), err["message"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return one_line(f"{resp.status_code} {resp.reason_phrase}: {resp.text or '(empty body)'}")
    line = f"{resp.status_code} {kind}: {message}"
    if resp.status_code == 401:
        line += " (give the key with --api-key or FLUX_API_KEY)"
    elif "retry-after" in resp.headers:
        line += f" (retry after {resp.headers['retry-after']} s)"
    return one_line(line)


class Api:
    """The service at `url`. `api_key`, when given, is sent as `Authorization: Bearer <key>`."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0):
        self.url, self.timeout = url.rstrip("/"), timeout
        headers = {"User-Agent": f"flux-api-cli/{__version__}", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        try:
            self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10)))
        except (httpx.InvalidURL, TypeError) as e:
            raise CLIError(f"--server {url!r} is not a URL: {e}", USAGE_ERROR) from None
        if self.http.base_url.scheme not in ("http", "https") or not self.http.base_url.host:
            raise CLIError(f"--server {url!r} is not an http:// or https:// URL", USAGE_ERROR)

    def __enter__(self) -> "Api":
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def _transport_error(self, e: httpx.TransportError) -> CLIError:
        if isinstance(e, httpx.ConnectError):
            why = str(e).split("] ", 1)[-1] or type(e).__name__  # "[Errno 111] Connection refused" -> the words
            return CLIError(f"cannot connect to {self.url}: {one_line(why)} (is the service running? "
                            "`flux-api serve` starts one)", UNREACHABLE)
        if isinstance(e, httpx.TimeoutException):
            return CLIError(f"no answer from {self.url} within {self.timeout:g} s", UNREACHABLE)
        return CLIError(f"the connection to {self.url} failed: {one_line(str(e) or type(e).__name__)}", UNREACHABLE)

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs) -> httpx.Response:
        """The response when its status is in `ok`; else a CLIError with the server's error line."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._transport_error(e) from None
        if resp.status_code not in ok:
            raise CLIError(describe_error(resp), SERVER_ERROR if resp.status_code >= 400 else UNREACHABLE)
        return resp

    def json(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs) -> dict:
        return body_of(self.request(method, path, ok, **kwargs), self.url)

    def events(self, path: str) -> Iterator[tuple[str, dict]]:
        """A Server-Sent Events stream as (event name, data) pairs. Waits as long as the stream does: the
        service's own request timeout bounds a job, so no read timeout is set here."""
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            with self.http.stream("GET", path, timeout=timeout, headers={"Accept": "text/event-stream"}) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise CLIError(describe_error(resp))
                yield from parse_sse(resp.iter_lines())
        except httpx.TransportError as e:
            raise self._transport_error(e) from None


def body_of(resp: httpx.Response, url: str) -> dict:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        kind = resp.headers.get("content-type", "no content type")
        raise CLIError(one_line(f"{url} answered {resp.status_code} with something that is not the API's JSON "
                                f"({kind}): {resp.text[:120]}"), UNREACHABLE)
    return body


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """Server-Sent Events (the WHATWG format): `event:` and `data:` lines, an empty line ends an event;
    comments (`:` lines, keep-alive pings) and `id:` are skipped. Every data here is JSON."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                try:
                    yield name, json.loads("\n".join(data))
                except ValueError:
                    raise CLIError(one_line(f"the event stream sent data that is not JSON: {data[0][:80]}"),
                                   UNREACHABLE) from None
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
