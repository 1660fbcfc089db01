"""Logging set-up: plain text or one JSON object per line.

One access line per request is many small writes: records are formatted as they come but
written in batches (when a batch fills, on any warning, and by a periodic ``flush_logs`` that
the server runs), so logging costs a fraction of a request rather than a syscall each.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import TextIO

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


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._since = time.monotonic()

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

    def write_line(self, line: str) -> None:
        self._lines.append(line + self.terminator)
        if len(self._lines) >= BATCH_LINES or time.monotonic() - self._since > BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            self.acquire()
            try:
                lines, self._lines = self._lines, []
                self.stream.write("".join(lines))
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

    def _asctime(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def write(self, message: str, fields: dict[str, object] | None) -> None:
        now = time.time()
        if self.json:
            doc: dict[str, object] = {
                "time": datetime.fromtimestamp(now, UTC).isoformat(),
                "level": "INFO",
                "logger": "nightproxy.access",
                "message": message,
            }
            doc.update(fields or {})
            line = json.dumps(doc, default=str)
        else:
            line = f"{self._asctime(now)} INFO nightproxy.access: {message}"
        self.handler.write_line(line)


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
