"""Logging with the request id on every line, in the HTTP handler and in the GPU worker thread alike.

A client controls some of what is logged (paths, LoRA names, its request id): control characters are
escaped, so no request can start a forged log line; a traceback's lines are indented under its record.
"""

from __future__ import annotations

import contextvars
import logging
import re

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`text` with every control character (newlines included) written as an escape: one line."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class OneLineFormatter(logging.Formatter):
    """Each record's message on one line; its traceback, if any, indented beneath it."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return "\n".join("    " + escape_controls(line) for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("    " + escape_controls(line) for line in stack_info.splitlines())


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Every library's lines in the same format, with the request id: transformers and diffusers log
    # through handlers of their own, and Python warnings (peft's) go to stderr, unless told otherwise.
    import diffusers.utils.logging
    import transformers.utils.logging

    for lib in (transformers.utils.logging, diffusers.utils.logging):
        lib.disable_default_handler()
        lib.enable_propagation()
    logging.captureWarnings(True)
