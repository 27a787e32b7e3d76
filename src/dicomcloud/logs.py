"""Logging for every service: plain lines for a terminal, one JSON object per line for collectors.

Secrets never reach a log: a filter on the handler masks credentials in URLs (`scheme://user:pw@`),
`key=value` / `"key": "value"` pairs whose key names a secret, and bearer tokens, in the final message
and in any traceback. Settings are logged only through `Settings.redacted()`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal

from dicomcloud.config import SECRET_FIELDS

LogFormat = Literal["plain", "json"]

_SECRET_KEYS = "|".join(sorted(SECRET_FIELDS | {"passwd", "pwd", "api_key", "apikey", "authorization"}))
_REDACTIONS = (
    (re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?P<tail>@)", re.I), r"\g<head>***\g<tail>"),
    (re.compile(r"(?P<head>\bbearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\g<head>***"),
    (
        re.compile(rf"(?P<head>[\"']?\b(?:{_SECRET_KEYS})\b[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&}}]+", re.I),
        r"\g<head>***",
    ),
)
# Attributes every LogRecord has; anything else was passed with `extra=` and is kept in JSON output.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """Mask anything in `text` that looks like a credential."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Renders the message once, masked, so no formatter can print the raw arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                entry[name] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class RepeatedWarnings:
    """The warnings (and errors) of one unit of work, by message template: the first `keep` of each are
    logged, the others counted, and `summarise` logs one line per template with the count left out. A
    10,000-part STOW with every part refused writes a few lines, not 10,000."""

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._counts: dict[tuple[str, int, str], int] = {}
        self._first: dict[tuple[str, int, str], str] = {}
        self._lock = threading.Lock()

    def admit(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            count = self._counts[key] = self._counts.get(key, 0) + 1
            if count == 1:
                self._first[key] = record.getMessage()
        return count <= self.keep

    def summarise(self, where: str) -> None:
        for (name, level, _), count in self._counts.items():
            if count > self.keep:
                first = self._first[(name, level, _)]
                logging.getLogger(name).log(level, "%d more like this in %s: %s", count - self.keep, where, first)


_repeated_warnings: ContextVar[RepeatedWarnings | None] = ContextVar("repeated_warnings", default=None)


@contextmanager
def repeats_summarised(where: str) -> Iterator[None]:
    """Within this block (and the threads it hands work to, which copy the context), repeated warnings are
    summarised as `RepeatedWarnings` says; `where` names the unit of work in the summary."""
    repeated = RepeatedWarnings()
    token = _repeated_warnings.set(repeated)
    try:
        yield
    finally:
        _repeated_warnings.reset(token)
        repeated.summarise(where)


class RepeatFilter(logging.Filter):
    """Drops a warning or error its unit of work has already logged `keep` times (see `repeats_summarised`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        repeated = _repeated_warnings.get()
        if repeated is None or not logging.WARNING <= record.levelno < logging.CRITICAL:
            return True
        decided: bool | None = getattr(record, "_repeat_admitted", None)
        if decided is None:  # counted once, however many handlers filter it
            decided = repeated.admit(record)
            record._repeat_admitted = decided
        return decided


class ThrottledWarnings:
    """Warnings an attacker could repeat at will (refused connections, associations): the first of a kind
    is logged at once, then at most one line per `interval` seconds saying how many were left out."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._left_out[kind] = self._left_out.get(kind, 0) + 1
                return
            self._last[kind] = now
            left_out = self._left_out.pop(kind, 0)
        if left_out and last is not None:
            self.logger.warning(message + " (and %d more like it in the last %.0f s)", *args, left_out, now - last)
        else:
            self.logger.warning(message, *args)


class WorkerLabel(logging.Filter):
    """Names the process of a service that runs several (http/workers.py) on each of its lines."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.label
        return True


def setup_logging(level: str = "INFO", fmt: LogFormat = "plain", worker: str = "") -> None:
    """Route every logger (ours, uvicorn's, pynetdicom's) to stderr through the redacting filter.

    Warnings and uncaught exceptions (any thread) go through logging too, so in JSON format every line
    on stderr is one JSON object. `worker` names this process among its service's (a `worker` field in
    JSON, `[label]` in plain lines).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatFilter())  # first: it reads the message template the redacting filter replaces
    handler.addFilter(RedactingFilter())
    if worker:
        handler.addFilter(WorkerLabel(worker))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        label = f"[{worker}] " if worker else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s {label}%(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; keep its warnings and errors only.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    logging.getLogger("dicomcloud").critical("uncaught %s", kind.__name__, exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    log = logging.getLogger("dicomcloud")
    log.critical("uncaught %s in thread %s", args.exc_type.__name__, name, exc_info=exc_info)
