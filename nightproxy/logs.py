"""Logging set-up: plain text or one JSON object per line.

One access line per request is many small writes: lines are written in batches (when a batch
fills, on any warning, and by a periodic ``flush_logs`` that the server runs), so logging costs
a fraction of a request rather than a syscall each. Access lines are kept as tuples and
formatted when their batch is written, one tight loop instead of a formatting call per request.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import TextIO, TypeAlias

#: Lines buffered before a write; a warning or error is written at once with what precedes it.
BATCH_LINES = 256
#: Never hold a line longer than this, even if nothing else is logged (checked on each record).
BATCH_SECONDS = 0.5


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


#: (time, method, path, status, body bytes, seconds, cache result, remote address or None)
AccessEntry: TypeAlias = tuple[float, str, str, int, int | None, float, str, str | None]


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._lines: list[str | AccessEntry] = []
        self._since = time.monotonic()
        self.access_format: AccessSink | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line + self.terminator)
        if (
            len(self._lines) >= BATCH_LINES
            or record.levelno >= logging.WARNING
            or time.monotonic() - self._since > BATCH_SECONDS
        ):
            self.flush()

    def write_entry(self, entry: AccessEntry) -> None:
        self._lines.append(entry)
        if len(self._lines) >= BATCH_LINES or time.monotonic() - self._since > BATCH_SECONDS:
            self.flush()

    def _text(self, lines: list[str | AccessEntry]) -> str:
        sink, end = self.access_format, self.terminator
        if sink is None:
            return "".join(line for line in lines if isinstance(line, str))
        return "".join(line if isinstance(line, str) else sink.format(line) + end for line in lines)

    def flush(self) -> None:
        if self._lines:
            self.acquire()
            try:
                lines, self._lines = self._lines, []
                self.stream.write(self._text(lines))
            finally:
                self.release()
        self._since = time.monotonic()
        super().flush()


class AccessSink:
    """The fast path for access lines when the server set up logging itself.

    A LogRecord, its formatter and the time formatting cost more than the rest of a cached
    page request; access lines are a fixed shape, so they are written pre-formatted into the
    same batched stream, in the same text or JSON layout as every other line.
    """

    def __init__(self, handler: BatchingStreamHandler, fmt: str) -> None:
        self.handler = handler
        self.json = fmt == "json"
        self._second = -1
        self._stamp = ""
        handler.access_format = self

    def _asctime(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def record(
        self,
        method: str,
        path: str,
        status: int,
        *,
        size: int | None,
        seconds: float,
        cache: str,
        remote: str | None,
    ) -> None:
        self.handler.write_entry((time.time(), method, path, status, size, seconds, cache, remote))

    def format(self, entry: AccessEntry) -> str:
        now, method, path, status, size, seconds, cache, remote = entry
        message = access_message(method, path, status, size=size, seconds=seconds, cache=cache)
        if not self.json:
            return f"{self._asctime(now)} INFO nightproxy.access: {message}"
        return json.dumps(
            {
                "time": datetime.fromtimestamp(now, UTC).isoformat(),
                "level": "INFO",
                "logger": "nightproxy.access",
                "message": message,
                **access_fields(
                    method, path, status, size=size, seconds=seconds, cache=cache, remote=remote
                ),
            }
        )


def access_message(
    method: str, path: str, status: int, *, size: int | None, seconds: float, cache: str
) -> str:
    """An access line's text, whichever way it is written."""
    return f"{method} {path} {status} {size} {seconds * 1000:.1f}ms {cache}"


def access_fields(
    method: str,
    path: str,
    status: int,
    *,
    size: int | None,
    seconds: float,
    cache: str,
    remote: str | None,
) -> dict[str, object]:
    """An access line's JSON fields, whichever way it is written."""
    return {
        "method": method,
        "path": path,
        "status": status,
        "bytes": size,
        "duration_ms": round(seconds * 1000, 2),
        "cache": cache,
        "remote": remote,
    }


#: Set by ``setup_logging`` in the ``serve`` process; None elsewhere (tests, embedding).
access_sink: AccessSink | None = None


def setup_logging(fmt: str, level: str) -> None:
    global access_sink  # noqa: PLW0603 - the process-wide logging set-up is process state
    handler = BatchingStreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    access = logging.getLogger("nightproxy.access")
    access_sink = AccessSink(handler, fmt) if access.isEnabledFor(logging.INFO) else None


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
