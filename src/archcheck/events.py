"""What a run does, as it happens: structured events for logs (``--log-format json|text``).

Events go through the standard ``logging`` module under the ``archcheck`` logger, so an
embedding program can route them as it likes; the CLI attaches one handler. The drill, the
archive and a segment's correlation id are bound with context variables, which follow the
work into asyncio tasks and ``asyncio.to_thread``: the code that emits an event does not pass
them along. Nothing secret is put in an event, and every value is escaped by the formatter
(JSON, or logfmt quoting), so an untrusted member name cannot forge a line or reach a
terminal as an escape sequence.
"""
from __future__ import annotations

import contextvars
import enum
import json
import logging
import re
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, TextIO

LOGGER = logging.getLogger("archcheck")
LOGGER.propagate = False  # the CLI's handler, or the embedder's, decides where events go
LOGGER.addHandler(logging.NullHandler())


class Event(str, enum.Enum):
    """Every event name archcheck emits (documented in docs/outputs.md). Append-only."""

    DRILL_STARTED = "drill.started"
    DRILL_FINISHED = "drill.finished"
    DRILL_SEALED = "drill.sealed"
    NOTICE = "notice"
    ARCHIVE_STARTED = "archive.started"
    ARCHIVE_FINISHED = "archive.finished"
    SEGMENT_VERIFIED = "segment.verified"
    SEGMENT_RETRY = "segment.retry"
    SEGMENT_FAILED = "segment.failed"
    STREAM_STARTED = "stream.started"
    STREAM_RETRY = "stream.retry"
    STREAM_FINISHED = "stream.finished"
    RUN_HALTED = "run.halted"
    FINDING = "finding"
    GATE_JUDGED = "gate.judged"
    COMMAND_FAILED = "command.failed"


class LogFormat(str, enum.Enum):
    JSON = "json"
    TEXT = "text"


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

_drill: contextvars.ContextVar[str | None] = contextvars.ContextVar("archcheck_drill", default=None)
_archive: contextvars.ContextVar[str | None] = contextvars.ContextVar("archcheck_archive", default=None)
_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar("archcheck_correlation", default=None)


@contextmanager
def bound(*, drill: str | None = None, archive: str | None = None, correlation_id: str | None = None) -> Iterator[None]:
    """Events emitted inside carry these (those not given stay as they were)."""
    tokens = [(var, var.set(value)) for var, value in
              ((_drill, drill), (_archive, archive), (_correlation, correlation_id)) if value is not None]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def new_correlation_id() -> str:
    return uuid.uuid4().hex[:16]


def emit(event: Event, level: int = logging.INFO, *, status: str | None = None, **fields: Any) -> None:
    """One event; ``fields`` are JSON values (None is left out)."""
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, event.value, extra={"archcheck": _Payload(
            event, status, _drill.get(), _archive.get(), _correlation.get(),
            {k: v for k, v in fields.items() if v is not None})})


@dataclass(frozen=True)
class _Payload:
    event: Event
    status: str | None
    drill: str | None
    archive: str | None
    correlation_id: str | None
    fields: dict[str, Any]

    def ordered(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line's keys, the fixed ones first."""
        head = {"time": _rfc3339(record.created), "level": record.levelname.lower(), "event": self.event.value,
                "drill": self.drill, "archive": self.archive, "correlation_id": self.correlation_id,
                "status": self.status}
        return {**{k: v for k, v in head.items() if v is not None}, **self.fields}


def _rfc3339(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _payload(record: logging.LogRecord) -> dict[str, Any]:
    payload = getattr(record, "archcheck", None)
    if isinstance(payload, _Payload):
        return payload.ordered(record)
    return {"time": _rfc3339(record.created), "level": record.levelname.lower(), "event": "log",
            "message": record.getMessage()}  # a record from elsewhere, passed through


class JsonFormatter(logging.Formatter):
    """JSON Lines: one object per line, ASCII only (control and bidi characters escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_payload(record), ensure_ascii=True, separators=(",", ":"), default=str)


_BARE = re.compile(r"[A-Za-z0-9_./:@+%-]+")


class TextFormatter(logging.Formatter):
    """logfmt: ``time level event key=value ...``; a value that is not a bare token is quoted
    and escaped as a JSON string."""

    def format(self, record: logging.LogRecord) -> str:
        payload = _payload(record)
        head = [payload.pop("time"), payload.pop("level"), payload.pop("event")]
        return " ".join(head + [f"{key}={_logfmt(value)}" for key, value in payload.items()])


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=True, separators=(",", ":"),
                                                           default=str)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=True)


class LogSink:
    """The CLI's handler, attached for one command and closed after it."""

    def __init__(self, fmt: LogFormat, level: int, path: Path | None = None, stream: TextIO | None = None):
        self.fmt, self.path = fmt, path
        self.handler: logging.Handler = (logging.FileHandler(path, encoding="utf-8") if path is not None
                                         else logging.StreamHandler(stream or sys.stderr))
        self.handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else TextFormatter())
        self.handler.setLevel(level)
        self.saved_level = LOGGER.level
        LOGGER.addHandler(self.handler)
        LOGGER.setLevel(min(level, LOGGER.level or level))

    @property
    def on_stderr(self) -> bool:
        return self.path is None

    def close(self) -> None:
        LOGGER.removeHandler(self.handler)
        LOGGER.setLevel(self.saved_level)
        self.handler.close()
