"""One download's state, as its readers see it: which bytes may be sent, and how it ended.

Bytes live in the download's temporary file, which readers follow as it grows (each through
its own duplicate of the descriptor, so the rename into the store does not disturb them), and,
once the disk stopped taking them (a full disk) or for a download that is never cached, in a
bounded tail in memory. The last byte of a file (of the size the upstream announced, where it
did) is held back from every reader until the digest and the size are verified: a client can
never see a complete body of unverified bytes, and a mismatch leaves it with a short read,
which pip and uv report as an error.

The writer side is ``spool.py`` (this process downloads) or ``follow.py`` (another process
does, and this one follows its file).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from nightproxy.upstreams.base import CHUNK_SIZE

#: Bytes held in memory for readers of a download the disk no longer takes; beyond this the
#: download waits for the slowest reader.
TAIL_LIMIT = 16 * CHUNK_SIZE


class FillError(Exception):
    """The fill failed; readers that already sent bytes must abort their response."""


class HashMismatchError(FillError):
    pass


class SizeMismatchError(FillError):
    """The upstream sent more or fewer bytes than it announced."""


class FillRestartedError(FillError):
    """The download this reader followed was given up and started again elsewhere: a reader
    that has sent nothing yet may join the new one."""


class StalledError(FillError):
    """The upstream sent too little for too long."""


#: What a reader is handed: a span of the temporary file ``(offset, length)``, or bytes.
Part = tuple[int, int] | bytes


class Fill:
    def __init__(self, key: str, tmp_path: Path, expected_sha256: str | None) -> None:
        self.key = key
        #: The name the file is fetched as (for logs and events).
        self.filename = tmp_path.name
        self.tmp_path = tmp_path
        self.expected_sha256 = expected_sha256
        self.size: int | None = None
        #: Bytes received so far, on disk (and in the memory tail after a spill).
        self.written = 0
        #: Bytes the upstream sent, once the download ended.
        self.received = 0
        #: Where the disk stopped taking bytes; beyond it they are in the memory tail.
        self.spilled_at: int | None = None
        #: Every byte is written, the digest matched (or there was none to match) and the fill
        #: ended without error.
        self.verified = False
        self.done = False
        self.error: BaseException | None = None
        self.sha256: str | None = None
        self.cached = False
        #: Another process had the file cached by the time this one looked: serve that blob.
        self.hit: str | None = None
        #: Whether the bytes are going to be admitted (False: too big, a full disk, or a
        #: download for one client only).
        self.caching = True
        #: Clients that joined and have not finished.
        self.clients = 0
        #: Called when the last client leaves a fill that is not caching (stop it).
        self.on_abandoned: Callable[[], None] | None = None
        self.started = time.monotonic()
        self._history: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self.headers_ready = asyncio.Event()
        self.finished = asyncio.Event()
        self._progress = asyncio.Event()
        self._fd: int | None = None
        self._tail: collections.deque[tuple[int, bytes]] = collections.deque()
        self._tail_bytes = 0
        self._positions: dict[int, int] = {}
        self._room = asyncio.Event()
        self._room.set()

    # -- writer side --------------------------------------------------------------------------

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def grew(self, written: int) -> None:
        """The file (or tail) now holds ``written`` bytes."""
        if written != self.written:
            self.written = written
            now = time.monotonic()
            if not self._history or now - self._history[-1][0] >= 0.25:
                self._history.append((now, written))
        self._notify()

    def spill(self) -> None:
        """The disk takes no more bytes: what follows is kept in memory for the readers."""
        if self.spilled_at is None:
            self.spilled_at = self.written
        self.stop_caching()

    def stop_caching(self) -> None:
        """Nothing is going to be admitted: the download goes on only while clients read."""
        self.caching = False
        if self.clients <= 0 and not self.done and self.on_abandoned is not None:
            self.on_abandoned()

    def add_memory(self, chunk: bytes) -> None:
        """Bytes past ``spilled_at``, for the readers only."""
        self._tail.append((self.written, chunk))
        self._tail_bytes += len(chunk)
        if self._tail_bytes > TAIL_LIMIT:
            self._room.clear()
        self.grew(self.written + len(chunk))

    async def wait_for_room(self) -> None:
        """Until the readers took enough of the memory tail (or none is left)."""
        while not self._room.is_set() and self.clients:
            await self._room.wait()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def stalled(self, window: float, min_rate: float) -> bool:
        """Whether fewer than ``min_rate`` bytes a second arrived over the last ``window``
        seconds (never before the download is that old)."""
        now = time.monotonic()
        if self.done or now - self.started < window:
            return False
        since = now - window
        before = self._history[0][1] if self._history else 0
        for at, written in self._history:
            if at > since:
                break
            before = written
        return self.written - before < min_rate * window

    # -- clients ------------------------------------------------------------------------------

    def join(self) -> None:
        self.clients += 1

    def leave(self) -> None:
        self.clients -= 1
        self._trim()
        if self.clients <= 0:
            self._room.set()
            if not self.caching and not self.done and self.on_abandoned is not None:
                self.on_abandoned()

    # -- reader side --------------------------------------------------------------------------

    async def wait_started(self) -> None:
        """Until the upstream answered (size known) or the fill failed."""
        await self.headers_ready.wait()
        if self.error is not None and self.written == 0:
            raise _failure(self.error)

    async def open_reader(self) -> BinaryIO | None:
        """A file object on the bytes being filled, for ``parts`` (close it); None when the
        download keeps nothing on disk.

        A duplicate descriptor, so the rename into the store and the writer closing its own do
        not disturb the reader. It shares the file offset with the writer and every other
        reader: read it only at explicit positions (``os.sendfile`` with an offset, ``pread``),
        never by seeking.
        """
        await self.wait_started()
        if self._fd is None:
            if self.spilled_at == 0:
                return None
            raise FillError("fill has no data")
        return os.fdopen(os.dup(self._fd), "rb", buffering=0)

    def _releasable(self) -> int:
        if self.verified:
            return self.written
        if self.size is None:
            return self.written - 1
        # The response announced ``size`` bytes: reaching it is what makes a body look
        # complete, so byte ``size - 1`` (and anything an upstream sends beyond the size it
        # announced) waits for verification, however much has been written.
        return min(self.written, self.size - 1)

    async def spans(self, start: int = 0, end: int | None = None) -> AsyncGenerator[Part]:
        """What may be sent of ``[start, end)``, as it arrives: spans of the file, or bytes
        from memory.

        Raises ``FillError`` if the fill fails before the last byte was released.
        """
        offset = start
        me = id(object())
        self._positions[me] = offset
        try:
            while True:
                progress = self._progress
                verified = self.verified
                limit = self._releasable()
                if end is not None:
                    limit = min(limit, end)
                if offset < limit:
                    disk_end = self.written if self.spilled_at is None else self.spilled_at
                    if offset < disk_end:
                        stop = min(limit, disk_end)
                        yield offset, stop - offset
                        offset = stop
                    else:
                        data = self._from_tail(offset, limit)
                        yield data
                        offset += len(data)
                    self._positions[me] = offset
                    self._trim()
                    continue
                if verified or (end is not None and offset >= end):
                    return
                if self.done:
                    raise _failure(self.error or FillError("download ended unverified"))
                await progress.wait()
        finally:
            del self._positions[me]
            self._trim()

    def _from_tail(self, offset: int, limit: int) -> bytes:
        for at, chunk in self._tail:
            if at <= offset < at + len(chunk):
                return chunk[offset - at : min(len(chunk), limit - at)]
        raise FillError("bytes no longer held for this reader")

    def _trim(self) -> None:
        # Clients that joined but read nothing yet start at the beginning: keep everything.
        if not self._tail or len(self._positions) < self.clients:
            return
        low = min(self._positions.values(), default=self.written)
        while self._tail and self._tail[0][0] + len(self._tail[0][1]) <= low:
            self._tail_bytes -= len(self._tail.popleft()[1])
        if self._tail_bytes <= TAIL_LIMIT:
            self._room.set()


def _failure(error: BaseException) -> FillError:
    kind = type(error) if isinstance(error, FillError) else FillError
    failure = kind(str(error))
    failure.__cause__ = error
    return failure


async def read_span(
    reader: BinaryIO, offset: int, length: int, chunk_size: int = CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """``length`` bytes from ``offset`` of a filling file, in chunks read in a thread."""
    fd, end = reader.fileno(), offset + length
    while offset < end:
        data = await asyncio.to_thread(os.pread, fd, min(end - offset, chunk_size), offset)
        if not data:
            raise FillError("cache file shrank under a reader")
        offset += len(data)
        yield data
