"""Following a download another process runs: its temporary file read as it grows.

The follower polls (in a thread) the download's row in the shared registry, the size of the
file, and the download's lock. Bytes reach this process's clients as the file grows, with the
same rule as for a local download: the last byte waits until the owner recorded the download
as verified. If the owner dies, the kernel drops its lock: the follower takes it and resumes
the download itself (``Outcome.TAKEOVER``), and its clients never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from dataclasses import dataclass

from nightproxy.cache import registry
from nightproxy.cache.fill import Fill, FillError, FillRestartedError
from nightproxy.cache.locks import KeyLock
from nightproxy.cache.store import CacheStore

#: Poll intervals: short while the file grows, backing off to the longest while it does not.
FAST_POLL = 0.005
SLOW_POLL = 0.05


class Outcome(enum.Enum):
    #: The download ended (``fill`` says how), or the file was already cached (``fill.hit``).
    DONE = "done"
    #: This process holds the lock now: it downloads (resuming the file it followed, if any).
    TAKEOVER = "takeover"


@dataclass(slots=True)
class _Peek:
    kind: str
    written: int = 0
    row: registry.FillRow | None = None
    sha: str | None = None


class Follower:
    def __init__(self, store: CacheStore, fill: Fill, lock: KeyLock) -> None:
        self.store = store
        self.fill = fill
        self.lock = lock
        self.token: str | None = None
        #: Whether the cached blob was verified against the key by another process.
        self.remote_cached = False

    async def run(self) -> Outcome:
        fill = self.fill
        delay = FAST_POLL
        while True:
            peek = await asyncio.to_thread(self._peek)
            if peek.kind == "own":
                fill.grew(max(peek.written, fill.written))
                return Outcome.TAKEOVER
            if peek.kind == "hit":
                fill.hit = peek.sha
                return Outcome.DONE
            if peek.kind == "restarted":
                fill.error = FillRestartedError("the download was started again")
                return Outcome.DONE
            row = peek.row
            if row is None:  # waiting for the owner to begin
                await asyncio.sleep(delay)
                delay = min(delay * 2, SLOW_POLL)
                continue
            if row.ready and not fill.headers_ready.is_set():
                fill.size = row.size
                fill.headers_ready.set()
            grown = peek.written > fill.written
            fill.grew(max(peek.written, fill.written))
            if peek.kind == "verified":
                self._verified(row, peek.written)
                return Outcome.DONE
            if peek.kind == "failed":
                fill.error = FillError(row.error or "download failed in another process")
                return Outcome.DONE
            delay = FAST_POLL if grown else min(delay * 2, SLOW_POLL)
            await asyncio.sleep(delay)

    def _verified(self, row: registry.FillRow, written: int) -> None:
        fill = self.fill
        if fill.size is not None and written != fill.size:
            fill.error = FillError(f"{written} bytes of the {fill.size} announced")
            return
        fill.sha256 = row.sha256
        self.remote_cached = row.cached

    def _peek(self) -> _Peek:
        """Disk I/O: one look at the row, the file and the lock."""
        store, fill = self.store, self.fill
        row = registry.read(store.db, fill.key)
        if self.token is None:
            if row is not None and row.state == registry.RUNNING and self._attach(row):
                return _Peek("progress", os.fstat(self._fd).st_size, row)
            sha = store.lookup(fill.key)
            if sha is not None:
                return _Peek("hit", sha=sha)
            if self.lock.try_acquire():
                return _Peek("own")
            return _Peek("waiting")  # the owner has not recorded its download yet
        written = os.fstat(self._fd).st_size
        if row is None or row.token != self.token:
            return _Peek("restarted", written)
        if row.state == registry.VERIFIED:
            if row.cached:
                store.lookup(fill.key)
            return _Peek("verified", written, row)
        if row.state == registry.FAILED:
            return _Peek("failed", written, row)
        if self.lock.try_acquire():
            return _Peek("own", written, row)
        return _Peek("progress", written, row)

    @property
    def _fd(self) -> int:
        assert self.fill._fd is not None
        return self.fill._fd

    def _attach(self, row: registry.FillRow) -> bool:
        try:
            fd = os.open(self.store.layout.fill_path(self.fill.key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        if os.fstat(fd).st_ino != row.ino:
            os.close(fd)
            return False
        with contextlib.suppress(Exception):
            self.fill._close_fd()
        self.fill._fd = fd
        self.fill.tmp_path = self.store.layout.fill_path(self.fill.key)
        self.token = row.token
        return True
