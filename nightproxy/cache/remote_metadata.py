"""Wheel metadata read by byte ranges: held in memory, read once per wheel at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cachetools import TTLCache

from nightproxy.cache.metadata import read_remote_metadata
from nightproxy.upstreams.base import RangeBody, RangeFetch
from nightproxy.upstreams.http import UpstreamError

log = logging.getLogger(__name__)

#: METADATA files are a few KiB: this holds thousands.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Held no longer than this: what was read is the upstream's word, not verified bytes.
HOLD_SECONDS = 600.0
#: Reads at once. Each may hold a central directory of a few MiB and a thread.
MAX_CONCURRENT_READS = 8
#: A read (its wait for a slot included) that takes longer gives way to the download: an
#: upstream trickling bytes must not hold slots that other wheels' reads need.
READ_DEADLINE = 30.0


class RemoteMetadata:
    """METADATA of wheels not in the cache, read from their upstream by byte ranges.

    Kept in memory only: what a range read returns is checked against its zip CRC but not
    against the wheel's sha256, so it never enters the content-addressed store and its hash
    is never published on a page. Once the wheel itself is downloaded and verified, the
    metadata is extracted from it and stored as usual.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        slots: int = MAX_CONCURRENT_READS,
        deadline: float = READ_DEADLINE,
    ) -> None:
        self._held: TTLCache[str, bytes] = TTLCache(
            maxsize=max_bytes, ttl=HOLD_SECONDS, getsizeof=len
        )
        self._running: dict[str, asyncio.Task[bytes | None]] = {}
        self._slots = asyncio.Semaphore(slots)
        self._deadline = deadline
        #: What the byte-range reads did, for metrics: METADATA read, reads that gave way to
        #: a download, and the bytes they fetched from upstreams.
        self.reads = 0
        self.fallbacks = 0
        self.range_bytes = 0

    def held(self, key: str) -> bytes | None:
        return self._held.get(key)

    async def read(self, key: str, fetch: RangeFetch, filename: str) -> bytes | None:
        """The METADATA of ``filename``, or None when the wheel must be downloaded instead.

        Concurrent callers for one key share one read, which runs on even if they go away.
        """
        data = self._held.get(key)
        if data is not None:
            return data
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(
                self._read(key, fetch, filename), name=f"range metadata {filename}"
            )
            self._running[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(task)

    async def _read(self, key: str, fetch: RangeFetch, filename: str) -> bytes | None:
        async def counted(start: int | None, length: int) -> RangeBody | None:
            body = await fetch(start, length)
            if body is not None:
                self.range_bytes += len(body.data)
            return body

        data: bytes | None = None
        try:
            async with asyncio.timeout(self._deadline), self._slots:
                data = await read_remote_metadata(counted, filename)
        except TimeoutError:
            self.fallbacks += 1
            log.info("metadata of %s: byte ranges too slow; downloading the wheel", filename)
            return None
        except UpstreamError:
            self.fallbacks += 1  # the handler downloads the wheel instead
            raise
        if data is None:
            self.fallbacks += 1
            log.info("metadata of %s: no usable byte ranges; downloading the wheel", filename)
            return None
        self.reads += 1
        if len(data) <= self._held.maxsize // 4:
            self._held[key] = data
        return data

    def _settle(self, key: str, task: asyncio.Task[bytes | None]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            # Retrieved here so that a read every client gave up on is not reported as lost.
            task.exception()

    def forget(self, key: str) -> None:
        """Drop what is held for ``key`` (its wheel is now stored, verified)."""
        self._held.pop(key, None)

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
