"""Result links: images kept for a while and served by the service itself, for `response_format=url`.

A link is an unguessable token (secrets.token_urlsafe, 256 bits), kept as long as finished jobs are
(`jobs_keep_s`, at most `jobs_keep` x 4 images), then gone (404). Its URL starts with the
`public_base_url` setting when the service sits behind a proxy, else with the URL the request came in on.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict


LINK_PREFIX = "/v1/images/files/"  # the route that serves them (routes/v1.py), open without a key (access.py)


def public_base(request, settings) -> str:
    """Where links start: the `public_base_url` setting behind a proxy, else the URL the request came in on."""
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


class ResultLinks:
    def __init__(self, keep_seconds: float, keep_count: int):
        self.keep_seconds, self.keep_count = keep_seconds, keep_count
        self._items: OrderedDict[str, tuple[float, bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, data: bytes, media_type: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._items[token] = (time.monotonic() + self.keep_seconds, data, media_type)
            self._prune()
        return token

    def url(self, data: bytes, media_type: str, base: str) -> str:
        """Keep `data` and return its link's full URL (`base` from public_base)."""
        return f"{base}{LINK_PREFIX}{self.put(data, media_type)}"

    def get(self, token: str) -> tuple[bytes, str] | None:
        with self._lock:
            self._prune()
            item = self._items.get(token)
        return None if item is None else (item[1], item[2])

    def _prune(self) -> None:
        now = time.monotonic()
        while self._items and (len(self._items) > self.keep_count or next(iter(self._items.values()))[0] < now):
            self._items.popitem(last=False)
