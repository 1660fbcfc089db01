"""Checking blobs against their names: on first use, by the background scrub, on demand.

A blob is named by its sha256, so checking it needs nothing but its bytes. Every function does
disk I/O (and hashing): callers on the event loop use a thread.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nightproxy.cache.locks import BlobGoneError, pin_blob, try_exclusive
from nightproxy.cache.store import CacheStore

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
#: A blob checked this recently (in seconds) is not due for the scrub.
RECHECK_AFTER = 7 * 86400.0
#: How long the scrub rests when there is nothing to check, or another process checks.
IDLE_SECONDS = 60.0


def digest_of_fd(fd: int, limit: int | None = None) -> str:
    """The sha256 of a whole open file, read at explicit offsets (the descriptor's own offset
    may be shared)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        data = os.pread(fd, _CHUNK, offset)
        if not data:
            return digest.hexdigest()
        digest.update(data)
        offset += len(data)
        if limit is not None and offset >= limit:
            return digest.hexdigest()


def check_fd(fd: int, sha256: str) -> str | None:
    """None if the file's bytes hash to ``sha256``; otherwise what they hash to (or why they
    cannot be read: a failing disk is as bad as rotten bytes)."""
    try:
        actual = digest_of_fd(fd)
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        return f"unreadable ({exc.strerror})"
    return None if actual == sha256 else actual


def check_path(path: Path, sha256: str) -> str | None:
    """``check_fd`` of a blob pinned for the time of the check; None also when it is gone."""
    try:
        fd = pin_blob(path)
    except BlobGoneError:
        return None
    try:
        return check_fd(fd, sha256)
    finally:
        os.close(fd)


def verify_all(store: CacheStore) -> tuple[int, int, list[tuple[str, str, str]]]:
    """Check every blob now (``nightproxy cache verify``), evicting those that do not match:
    (files checked, bytes, and the filename, digest and actual hash of each evicted one)."""
    blobs, _aliases = store.snapshot()
    checked = size = 0
    bad: list[tuple[str, str, str]] = []
    for blob in blobs:
        sha = blob["sha256"]
        wrong = check_path(store.path_for(sha), sha)
        checked += 1
        size += blob["size"]
        if wrong is None:
            store.mark_verified(sha)
        else:
            store.delete_blobs([sha])
            bad.append((blob["filename"], sha, wrong))
    return checked, size, bad


class Scrub:
    """The background check: every blob again, least recently checked first, one process of
    those sharing the cache at a time, reading at most ``rate`` bytes a second.

    A blob checked less than ``recheck_after`` seconds ago (admitted, served and checked by a
    process, or scrubbed) waits its turn.
    """

    def __init__(
        self,
        store: CacheStore,
        rate: int,
        on_corrupt: Callable[[str, str], Awaitable[None]],
        *,
        recheck_after: float = RECHECK_AFTER,
    ) -> None:
        self.store = store
        self.rate = rate
        self.on_corrupt = on_corrupt
        self.recheck_after = recheck_after
        self.checked = 0

    async def run(self) -> None:
        lock_path = self.store.layout.lock_dir / "scrub.lock"
        while True:
            fd = await asyncio.to_thread(try_exclusive, lock_path)
            if fd is None:  # another process scrubs
                await asyncio.sleep(IDLE_SECONDS)
                continue
            try:
                while await self.step():
                    pass
            except Exception:
                log.exception("the check of cached files failed; trying again later")
            finally:
                os.close(fd)
            await asyncio.sleep(IDLE_SECONDS)

    async def step(self) -> bool:
        """Check the blob most in need of it; False when none is."""
        due = await asyncio.to_thread(self.store.due_for_check, time.time() - self.recheck_after)
        if due is None:
            return False
        sha, size = due
        started = time.monotonic()
        wrong = await asyncio.to_thread(check_path, self.store.path_for(sha), sha)
        if wrong is None:
            await asyncio.to_thread(self.store.mark_verified, sha)
        else:
            await self.on_corrupt(sha, wrong)
        self.checked += 1
        # Bounded rate: a blob of ``size`` bytes buys ``size / rate`` seconds.
        await asyncio.sleep(max(0.0, size / self.rate - (time.monotonic() - started)))
        return True
