"""Downloading a file into the cache: the process that holds the key's lock.

The owner writes ``tmp/<key>.fill`` (resuming the file of an owner that died, whose bytes it
compares rather than trusts), records the download in the shared registry for the processes
following it, reserves the budget once the size is known, and on success admits the file and
records it as verified before it lets go of the lock. If the disk fills up, the owner goes on
for its own clients with the bytes in memory, and hands the lock over to whichever follower
wants to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from nightproxy.cache import registry
from nightproxy.cache.fill import Fill, HashMismatchError, SizeMismatchError
from nightproxy.cache.locks import KeyLock
from nightproxy.cache.spool import Spooler
from nightproxy.cache.store import CacheStore
from nightproxy.upstreams.base import Download

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Source:
    """What to download, and what it must turn out to be."""

    opener: Callable[[], AbstractAsyncContextManager[Download]]
    expected_sha256: str | None
    filename: str
    upstream: str


async def transfer(
    fill: Fill,
    source: Source,
    download: Download,
    spooler: Spooler,
    after_put: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """Every chunk of ``download`` through ``spooler``; the digest, once sizes and hash match."""
    announced, received = download.size, 0
    try:
        async for chunk in download.chunks():
            received += len(chunk)
            if announced is not None and received > announced:
                # Checked here for every kind of upstream: not every one enforces its own
                # length (a local file can grow while it is read).
                raise SizeMismatchError(
                    f"{source.filename} from {source.upstream!r}: more than the {announced} "
                    "bytes announced"
                )
            await spooler.put(chunk)
            if after_put is not None:
                await after_put()
    finally:
        # Also on failure or cancellation: the descriptor is closed afterwards, and a write
        # still running in its thread must not outlive it.
        await spooler.close()
    if announced is not None and received != announced:
        raise SizeMismatchError(
            f"{source.filename} from {source.upstream!r}: {received} bytes of the {announced} "
            "announced"
        )
    fill.received = received
    return spooler.digest.hexdigest()


def check_digest(source: Source, sha: str) -> None:
    if source.expected_sha256 is not None and sha != source.expected_sha256:
        raise HashMismatchError(
            f"{source.filename} from {source.upstream!r}: sha256 {sha} does not match the "
            f"index's {source.expected_sha256}"
        )


class Owner:
    def __init__(
        self,
        store: CacheStore,
        fill: Fill,
        source: Source,
        lock: KeyLock,
        *,
        count: Callable[[int], None],
        on_disk_full: Callable[[Fill], None],
    ) -> None:
        self.store = store
        self.fill = fill
        self.source = source
        self.lock = lock
        self._count = count
        self._on_disk_full = on_disk_full
        self.token = ""
        self.reserved = 0
        self.owns_tmp = False
        self.owns_row = False
        self._handover = False
        self._resumed_size: int | None = None

    async def run(self) -> None:
        fill, store, source = self.fill, self.store, self.source
        sha = await asyncio.to_thread(store.lookup, fill.key)
        if sha is not None and fill.written == 0:
            # Another process cached it meanwhile: only this name is new.
            size = store.size_of(sha) or 0
            await asyncio.to_thread(
                store.admitted, sha, size, 0, source.filename, upstream="", key=fill.key
            )
            fill.hit = sha
            return
        present = await asyncio.to_thread(self._prepare)
        digest = hashlib.sha256()
        async with source.opener() as download:
            if self._resumed_size is not None and download.size != self._resumed_size:
                raise SizeMismatchError(
                    f"{source.filename} from {source.upstream!r}: {download.size} bytes now, "
                    f"{self._resumed_size} when the interrupted download began"
                )
            fill.size = download.size
            if download.size is not None:
                await self._reserve(download.size)
            await asyncio.to_thread(
                registry.answered, store.db, fill.key, self.token, download.size
            )
            fill.headers_ready.set()
            spooler = Spooler(
                fill,
                fill._fd,
                digest,
                self._count,
                verify_below=present,
                on_disk_full=self._disk_full,
            )
            sha = await transfer(fill, source, download, spooler, self._after_put)
        await self._after_put()
        check_digest(source, sha)
        fill.sha256 = sha
        if fill.caching and not self.reserved:
            await self._reserve(fill.received)  # the upstream announced no size
        if fill.caching and self.reserved:
            await asyncio.to_thread(self._admit, sha)
        elif fill.spilled_at is None:
            log.info(
                "%s is larger than the cache budget: streamed without caching", source.filename
            )

    def _prepare(self) -> int:
        """Disk I/O. Open the download's file: the one a dead owner left (its bytes so far),
        or a new one. Records this process as the owner."""
        store, fill = self.store, self.fill
        path = store.layout.fill_path(fill.key)
        row = registry.read(store.db, fill.key)
        fd: int | None = None
        if row is not None and row.state == registry.RUNNING:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            if fd is not None and os.fstat(fd).st_ino != row.ino:
                os.close(fd)
                fd = None
        if fd is not None and row is not None:
            self.token, self._resumed_size = row.token, row.size
            present = os.fstat(fd).st_size
            if row.size is not None and present > row.size:
                present = 0  # nothing sane to resume
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            self.token = secrets.token_hex(8)
            present = 0
        self.owns_tmp = True
        fill._close_fd()
        fill._fd = fd
        fill.tmp_path = path
        registry.begin(
            store.db,
            fill.key,
            self.token,
            owner=store.owner,
            ino=os.fstat(fd).st_ino,
            size=self._resumed_size,
        )
        self.owns_row = True
        return present

    async def _reserve(self, size: int) -> None:
        victims = await asyncio.to_thread(self.store.reserve, size)
        if victims is None:
            self.fill.stop_caching()
        else:
            self.reserved = size

    def _admit(self, sha: str) -> None:
        """Disk I/O. Move the verified file into the store and record it under its key."""
        fill, source = self.fill, self.source
        self.store.admit_file(
            fill.tmp_path, sha, fill.received, filename=source.filename, upstream=source.upstream
        )
        self.owns_tmp = False
        self.store.admitted(
            sha,
            fill.received,
            self.reserved,
            source.filename,
            upstream=source.upstream,
            key=fill.key,
        )
        self.reserved = 0
        fill.cached = True

    def _disk_full(self, exc: OSError) -> None:
        self.store.note_write_error()
        log.warning(
            "cache disk full while filling %s (%s): its clients get it uncached",
            self.source.filename,
            exc,
        )
        self._handover = True
        self._on_disk_full(self.fill)

    async def _after_put(self) -> None:
        if self._handover:
            self._handover = False
            # Another process may resume the file; this one keeps streaming from memory.
            await asyncio.to_thread(self._let_go, False)

    def _let_go(self, finished: bool, error: BaseException | None = None) -> None:
        """Disk I/O. Give back the reservation and the lock; with ``finished``, record how the
        download ended (``error``) and delete what was not admitted."""
        fill = self.fill
        try:
            if self.reserved:
                self.store.release(self.reserved)
                self.reserved = 0
            if finished and self.owns_row:
                registry.finish(
                    self.store.db,
                    fill.key,
                    self.token,
                    sha256=fill.sha256 or "",
                    cached=fill.cached,
                    error="" if error is None else str(error) or type(error).__name__,
                )
        except sqlite3.Error as exc:
            log.warning("cannot record the end of %s: %s", self.source.filename, exc)
        finally:
            if finished and self.owns_tmp:
                with contextlib.suppress(OSError):
                    fill.tmp_path.unlink()
            self.owns_tmp = self.owns_row = False
            self.lock.release(remove=finished)

    async def finish(self, error: BaseException | None, *, interrupted: bool) -> None:
        """Let go of everything. An interrupted download (shutdown) leaves its file and record
        for a follower in another process to resume."""
        await asyncio.to_thread(self._let_go, not interrupted, error)
