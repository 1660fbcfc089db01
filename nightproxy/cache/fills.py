"""Every download this process runs or follows: at most one per file key, across processes.

A fill is a task the application owns. It first tries the key's lock: the holder downloads
(``owner.py``), every other process follows the holder's file (``follow.py``) and takes over
if the holder dies. A watchdog abandons a download whose upstream sends less than
``min_rate`` bytes a second for ``stall_timeout`` seconds, and a download that caches nothing
stops as soon as its last client has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from nightproxy.cache.fill import Fill, FillError, HashMismatchError, StalledError
from nightproxy.cache.follow import Follower, Outcome
from nightproxy.cache.locks import KeyLock
from nightproxy.cache.owner import Owner, Source, check_digest, transfer
from nightproxy.cache.spool import Spooler
from nightproxy.cache.store import CacheStore
from nightproxy.upstreams.base import Download

log = logging.getLogger(__name__)

#: Defaults of ``cache.fill_min_rate`` (bytes a second) and ``cache.fill_stall_timeout``.
MIN_RATE = 1024.0
STALL_TIMEOUT = 60.0
#: A new client does not join a download slower than the floor over this long (or half the
#: stall timeout, if shorter): it gets a download of its own.
JOIN_WINDOW = 10.0


class _ShutdownError(FillError):
    """The fill was cancelled because the server stops."""


class FillManager:
    def __init__(
        self,
        store: CacheStore,
        *,
        min_rate: float | None = MIN_RATE,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.store = store
        self.min_rate = min_rate
        self.stall_timeout = stall_timeout
        self._fills: dict[str, Fill] = {}
        self._tasks: dict[Fill, asyncio.Task[None]] = {}
        self._reasons: dict[Fill, FillError] = {}
        self.upstream_bytes = 0
        self.hash_mismatches = 0
        self.stalls = 0
        #: Called with every fill this process admitted into the cache.
        self.on_cached: Callable[[Fill], None] | None = None
        #: Called with every fill once it ended, however it did.
        self.on_settled: list[Callable[[Fill], None]] = []

    @property
    def in_flight(self) -> int:
        """Downloads running for this process's clients (its own, followed, or one-off)."""
        return len(self._tasks)

    def get(self, key: str) -> Fill | None:
        return self._fills.get(key)

    def joinable(self, fill: Fill) -> bool:
        """Whether a new client may join ``fill`` rather than get a download of its own."""
        if self.min_rate is None or not fill.headers_ready.is_set():
            return True
        return not fill.stalled(min(self.stall_timeout / 2, JOIN_WINDOW), self.min_rate)

    def start(
        self,
        key: str,
        opener: Callable[[], AbstractAsyncContextManager[Download]],
        *,
        expected_sha256: str | None,
        filename: str,
        upstream: str,
        on_done: Callable[[Fill], None] | None = None,
    ) -> Fill:
        """Join the running fill for ``key`` or start one."""
        fill = self._fills.get(key)
        if fill is not None:
            return fill
        source = Source(opener, expected_sha256, filename, upstream)
        fill = Fill(key, self.store.layout.fill_path(key), expected_sha256)
        fill.filename = filename
        self._fills[key] = fill
        self._spawn(fill, self._run(fill, source, on_done), f"fill {filename}")
        return fill

    def passthrough(self, key: str, source: Source) -> Fill:
        """A download for one client, kept nowhere but in memory (a full disk, a stalled
        shared download)."""
        fill = Fill(key, Path(os.devnull), source.expected_sha256)
        fill.filename = source.filename
        fill.caching = False
        self._spawn(fill, self._passthrough(fill, source), f"pass-through {source.filename}")
        return fill

    def _spawn(self, fill: Fill, coro: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks[fill] = task
        fill.on_abandoned = lambda: self._stop(fill, FillError("no client left"))
        task.add_done_callback(lambda _t: self._tasks.pop(fill, None))

    def _stop(self, fill: Fill, reason: FillError) -> None:
        task = self._tasks.get(fill)
        if task is not None and not task.done() and fill not in self._reasons:
            self._reasons[fill] = reason
            task.cancel()

    async def _watch(self, fill: Fill) -> None:
        min_rate = self.min_rate
        if min_rate is None:
            return
        interval = min(1.0, self.stall_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            if fill.headers_ready.is_set() and fill.stalled(self.stall_timeout, min_rate):
                self.stalls += 1
                log.warning(
                    "abandoned a download of %s: under %d bytes/s for %gs",
                    fill.filename,
                    min_rate,
                    self.stall_timeout,
                )
                self._stop(fill, StalledError("the upstream sent too little for too long"))
                return

    async def _run(
        self, fill: Fill, source: Source, on_done: Callable[[Fill], None] | None
    ) -> None:
        lock = KeyLock(self.store.layout.lock_path(fill.key))
        owner: Owner | None = None
        watch: asyncio.Task[None] | None = None
        error: BaseException | None = None
        try:
            if not await asyncio.to_thread(lock.try_acquire):
                fill.caching = False  # following: nothing to do once no client is left
                if await Follower(self.store, fill, lock).run() is Outcome.DONE:
                    return
                fill.caching = True
            owner = Owner(
                self.store, fill, source, lock, count=self._count, on_disk_full=self._spilled
            )
            watch = asyncio.create_task(self._watch(fill))
            await owner.run()
        except asyncio.CancelledError:
            error = self._reason(fill)
            if error is None:
                error = _ShutdownError("fill cancelled at shutdown")
                raise
        except Exception as exc:
            error = self._failed(source, exc)
        finally:
            if watch is not None:
                watch.cancel()
            # Settle the fill before any await: a request arriving meanwhile must start a new
            # fill (or find the cached file), never join this finished one.
            if self._fills.get(fill.key) is fill:
                del self._fills[fill.key]
            try:
                if owner is not None:
                    await owner.finish(error, interrupted=isinstance(error, _ShutdownError))
                else:
                    await asyncio.to_thread(lock.release)
            finally:
                # Only now: a client told of the failure must not find its leftovers.
                fill.error = error or fill.error
                self._settle(fill, on_done)

    async def _passthrough(self, fill: Fill, source: Source) -> None:
        watch = asyncio.create_task(self._watch(fill))
        error: BaseException | None = None
        try:
            async with source.opener() as download:
                fill.size = download.size
                fill.headers_ready.set()
                spooler = Spooler(fill, None, hashlib.sha256(), self._count)
                sha = await transfer(fill, source, download, spooler)
            check_digest(source, sha)
            fill.sha256 = sha
        except asyncio.CancelledError:
            error = self._reason(fill)
            if error is None:
                error = _ShutdownError("download cancelled at shutdown")
                raise
        except Exception as exc:
            error = self._failed(source, exc)
        finally:
            watch.cancel()
            fill.error = error
            self._settle(fill, None)

    def _reason(self, fill: Fill) -> FillError | None:
        """Why this process cancelled a fill (None: it is shutting down)."""
        reason = self._reasons.pop(fill, None)
        current = asyncio.current_task()
        if reason is not None and current is not None:
            current.uncancel()
        return reason

    def _failed(self, source: Source, exc: Exception) -> Exception:
        if isinstance(exc, HashMismatchError):
            self.hash_mismatches += 1
            log.error("%s", exc)
        else:
            log.warning("download of %s from %r failed: %s", source.filename, source.upstream, exc)
        return exc

    def _settle(self, fill: Fill, on_done: Callable[[Fill], None] | None) -> None:
        # The last byte goes out once the file is in the store as well, so that a client that
        # saw a complete body finds it cached on its next request.
        fill.verified = fill.error is None and fill.hit is None
        fill.done = True
        fill.headers_ready.set()
        fill.finished.set()
        fill._notify()
        fill._close_fd()
        if fill.cached and self.on_cached is not None:
            self.on_cached(fill)
        for listener in self.on_settled:
            listener(fill)
        if on_done is not None:
            on_done(fill)

    def _spilled(self, fill: Fill) -> None:
        # New clients must not join a download whose bytes are no longer all held.
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]

    def _count(self, size: int) -> None:
        self.upstream_bytes += size

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self, timeout: float) -> None:
        """Let running fills finish (graceful shutdown), then cancel what is left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)
        await self.close()
