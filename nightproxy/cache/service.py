"""The cache service: the whole life of an entry, for the HTTP layer and the index.

* ``open_cached`` / ``open_blob``: a cached blob, pinned against eviction by any process while
  it is served, and verified against its digest the first time this process serves it.
* ``filling``: join the one download of a file (across processes), or start it; a client
  facing a full disk or a stalled download gets a download of its own instead.
* ``fetch``: the same, waiting for the whole file; ``admit`` / ``admit_bytes``: reserve room,
  evict, move into place and record, under a key, in one step.
* ``subscribe``: ``Verified`` events, for whatever depends on what the cache verified (the
  index publishes hashes and sizes it verified), whichever process admitted the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from nightproxy.cache import recovery, registry, verify
from nightproxy.cache.fill import Fill, FillError
from nightproxy.cache.fills import FillManager
from nightproxy.cache.locks import BlobGoneError, KeyLock, pin_blob
from nightproxy.cache.owner import Source
from nightproxy.cache.store import CacheStore
from nightproxy.upstreams.base import Download

log = logging.getLogger(__name__)

#: Ended downloads are forgotten by the shared registry after this long.
REGISTRY_SECONDS = 3600.0
#: Leftovers in ``tmp/`` untouched for this long, and owned by no live process, are deleted.
STALE_TMP_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Verified:
    """A file is in the cache, verified, under ``key`` (admitted by this or another process)."""

    key: str
    sha256: str
    filename: str


class CacheUnavailableError(Exception):
    """A cached blob could not be opened for a reason that says nothing about the blob (out
    of descriptors): answer "try again later", and forget nothing."""


class NoRoomError(Exception):
    """The cache cannot make room: what would have to go is in use."""


class ServedBlob:
    """A cached blob pinned for one response: ``release`` it once sent (or it is released when
    dropped)."""

    def __init__(self, store: CacheStore, sha256: str, fd: int) -> None:
        self.sha256 = sha256
        self.fd = fd
        self.path = store.path_for(sha256)
        self.size = os.fstat(fd).st_size
        self.upstream = store.upstream_of(sha256)
        store.pin(sha256)
        self._release = weakref.finalize(self, _unpin, store, sha256, fd)

    def release(self) -> None:
        self._release()


@contextlib.asynccontextmanager
async def _no_download() -> AsyncIterator[Download]:
    raise FillError("the worker process downloading it is gone")
    yield  # an async generator, for asynccontextmanager


def _unpin(store: CacheStore, sha256: str, fd: int) -> None:
    store.unpin(sha256)
    os.close(fd)


class CacheService:
    def __init__(self, store: CacheStore, fills: FillManager) -> None:
        self.store = store
        self.fills = fills
        self._listeners: list[Callable[[Verified], None]] = []
        #: Blobs this process has verified (admitted, or hashed on first use).
        self._verified: set[str] = set()
        self._verifying: dict[str, asyncio.Task[bool]] = {}
        self.corrupt_blobs = 0
        fills.on_cached = self._cached

    # -- events -------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Verified], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: Verified) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a cache event listener failed")

    def _cached(self, fill: Fill) -> None:
        assert fill.sha256 is not None
        self._verified.add(fill.sha256)
        self._emit(Verified(fill.key, fill.sha256, fill.filename))

    async def sync(self) -> None:
        """Take in what other processes admitted or evicted, and tell the listeners."""
        changes = await asyncio.to_thread(self.store.sync)
        for change in changes:
            if (
                change.kind in {"admit", "alias"}
                and change.key
                and change.owner != self.store.owner
            ):
                self._emit(Verified(change.key, change.sha256, change.filename))

    # -- cached blobs -------------------------------------------------------------------------

    async def open_cached(self, key: str, filename: str) -> ServedBlob | None:
        """The blob serving ``key`` under ``filename``, pinned; None when not (or no longer)
        cached."""
        sha = self.store.resolve(key, filename)
        if sha is None:
            sha = await asyncio.to_thread(self.store.lookup, key, filename)
        if sha is None:
            return None
        return await self.open_blob(sha)

    async def open_blob(self, sha256: str) -> ServedBlob | None:
        store = self.store
        # Pinned in memory at once, so that this process's own evictions skip it while the
        # shared pin is being taken.
        with store.pinned(sha256):
            try:
                fd = await asyncio.to_thread(pin_blob, store.path_for(sha256))
            except BlobGoneError:
                await asyncio.to_thread(store.drop_missing, sha256)
                return None
            except OSError as exc:
                if exc.errno in {errno.EMFILE, errno.ENFILE, errno.ENOMEM}:
                    raise CacheUnavailableError(str(exc)) from exc
                raise
            try:
                blob = ServedBlob(store, sha256, fd)
            except BaseException:
                os.close(fd)
                raise
        if sha256 not in self._verified and not await self._check(sha256, blob, fd):
            blob.release()
            return None
        store.touch(sha256)
        return blob

    async def _check(self, sha256: str, blob: ServedBlob, fd: int) -> bool:
        """Whether the blob's bytes hash to its name (once per process, shared by callers)."""
        task = self._verifying.get(sha256)
        if task is None:
            task = asyncio.create_task(self._verify_blob(sha256, os.dup(fd)))
            self._verifying[sha256] = task
            task.add_done_callback(lambda _t: self._verifying.pop(sha256, None))
        return await asyncio.shield(task)

    async def _verify_blob(self, sha256: str, fd: int) -> bool:
        try:
            wrong = await asyncio.to_thread(verify.check_fd, fd, sha256)
        finally:
            os.close(fd)
        if wrong is None:
            self._verified.add(sha256)
            await asyncio.to_thread(self.store.mark_verified, sha256)
            return True
        await self.corrupt(sha256, wrong)
        return False

    async def corrupt(self, sha256: str, actual: str) -> None:
        """A blob's bytes do not hash to its name: evict it (the next request downloads it
        again), and count it."""
        self.corrupt_blobs += 1
        self._verified.discard(sha256)
        log.error(
            "cached %s has sha256 %s (bit rot?): evicted, to be downloaded again", sha256, actual
        )
        await asyncio.to_thread(self.store.delete_blobs, [sha256])

    # -- downloads ----------------------------------------------------------------------------

    def get_or_fill(self, key: str, source: Source) -> Fill:
        """The download of ``key`` a new client joins: the running one, a new one, or (disk
        full, or the running one stalled) a download of its own."""
        if self.store.write_failing():
            return self.fills.passthrough(key, source)
        running = self.fills.get(key)
        if running is not None and not self.fills.joinable(running):
            return self.fills.passthrough(key, source)
        return self.fills.start(
            key,
            source.opener,
            expected_sha256=source.expected_sha256,
            filename=source.filename,
            upstream=source.upstream,
        )

    async def running_fill(self, key: str) -> Fill | None:
        """The download of ``key`` this process or another worker process of the server runs
        (joined as a follower), or None. It never starts a download: a peer replica asking
        must not make this one fetch the file.

        Were the other process to die mid-download, this follower cannot take over (it does
        not know the upstream): its clients get an error and ask elsewhere.
        """
        running = self.fills.get(key)
        if running is not None:
            return running
        lock = KeyLock(self.store.layout.lock_path(key))
        if await asyncio.to_thread(lock.try_acquire):
            await asyncio.to_thread(lock.release, remove=True)
            return None
        return self.fills.start(
            key, _no_download, expected_sha256=None, filename=key, upstream="another worker"
        )

    @contextlib.asynccontextmanager
    async def filling(self, key: str, source: Source) -> AsyncIterator[Fill]:
        """``get_or_fill``, as one client of it for the duration."""
        fill = self.get_or_fill(key, source)
        fill.join()
        try:
            yield fill
        finally:
            fill.leave()

    async def fetch(self, key: str, source: Source) -> str | None:
        """The digest of ``key``'s blob once downloaded and cached; None if it could not be
        (the download failed, or the file does not fit the budget)."""
        async with self.filling(key, source) as fill:
            await fill.finished.wait()
        if fill.hit is not None:
            return fill.hit
        sha = self.store.resolve(key)
        if sha is None:
            sha = await asyncio.to_thread(self.store.lookup, key)
        return sha

    # -- admission ----------------------------------------------------------------------------

    async def admit(
        self, tmp: Path, sha256: str, key: str, *, filename: str, upstream: str
    ) -> None:
        """Put a verified file (``tmp``, whose bytes hash to ``sha256``) in the cache under
        ``key``: room made, moved into place, recorded, announced. Raises ``NoRoomError``."""
        await asyncio.to_thread(self._admit, tmp, sha256, key, filename, upstream)
        self._verified.add(sha256)
        self._emit(Verified(key, sha256, filename))

    def _admit(self, tmp: Path, sha256: str, key: str, filename: str, upstream: str) -> None:
        size = tmp.stat().st_size
        if self.store.reserve(size) is None:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise NoRoomError(f"no room in the cache for {filename}")
        try:
            self.store.admit_file(tmp, sha256, size, filename=filename, upstream=upstream)
            self.store.admitted(sha256, size, size, filename, upstream=upstream, key=key)
        except BaseException:
            self.store.release(size)
            raise

    async def admit_bytes(self, data: bytes, *, key: str, filename: str, upstream: str) -> str:
        """``admit`` for small derived bytes (extracted metadata); their digest."""
        sha = hashlib.sha256(data).hexdigest()
        tmp = self.store.staged_path(key)
        await asyncio.to_thread(tmp.write_bytes, data)
        await self.admit(tmp, sha, key, filename=filename, upstream=upstream)
        return sha

    def scrub(self, rate: int) -> verify.Scrub:
        """The background check of every blob, reading at most ``rate`` bytes a second."""
        return verify.Scrub(self.store, rate, self.corrupt)

    # -- upkeep -------------------------------------------------------------------------------

    async def maintain(self) -> list[str]:
        """Age sweep, recency to disk, old records trimmed; the digests evicted for age."""
        store = self.store
        victims = await asyncio.to_thread(store.expired)
        await asyncio.to_thread(store.flush)
        await asyncio.to_thread(store.trim_changes)
        await asyncio.to_thread(registry.purge, store.db, REGISTRY_SECONDS)
        await asyncio.to_thread(recovery.clean_tmp, store.layout, idle_for=STALE_TMP_SECONDS)
        return victims
