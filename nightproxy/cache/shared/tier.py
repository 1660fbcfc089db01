"""The shared tier of one replica: its store client, leases, fills in flight and background work.

The local cache stays the bounded hot tier; this sits behind it. ``open_file`` is what a local
fill reads instead of the upstream (``fleetfill``); ``filled`` is told how the local fill ended,
and the replica that downloaded from upstream then uploads the verified copy and releases its
fill lease. The background tasks renew reader records, flush last-use times, probe a failing
store so recovery needs no restart, and enforce the tier's budget under a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from nightproxy.cache.shared.blobs import SharedBlobs, StoreDownload, UploadMismatchError
from nightproxy.cache.shared.fleetfill import FleetDownload, Opener
from nightproxy.cache.shared.peer import peer_token
from nightproxy.cache.shared.readers import ReadRegistry
from nightproxy.cache.shared.settings import SharedSettings
from nightproxy.objectstore import ObjectStore, StoreError
from nightproxy.objectstore.health import StoreHealth
from nightproxy.objectstore.lease import LeaseKeeper, Leases
from nightproxy.upstreams.base import Download

log = logging.getLogger(__name__)

#: Seconds between two probes of a store marked degraded.
PROBE_INTERVAL = 1.0
#: Seconds without any store request after which a healthy store is probed too.
HEARTBEAT_IDLE = 5.0
PROBE_KEY = "health/probe"


class SharedTier:
    def __init__(self, session: aiohttp.ClientSession, settings: SharedSettings) -> None:
        self.session = session
        self.settings = settings
        self.health = StoreHealth()
        self.store = ObjectStore(session, settings.store, on_result=self.health.record)
        self.blobs = SharedBlobs(self.store)
        # The worker processes of one replica (server.workers) share its name and peer URL but
        # hold leases and announce reads each in their own name.
        self.holder = f"{settings.replica_id}.{os.getpid()}"
        self.leases = Leases(self.store, holder=self.holder, url=settings.peer_url)
        self.readers = ReadRegistry(self.store, self.holder, settings.announce_within)
        self.peer_token = peer_token(settings.peer_secret)
        self.stats: Counter[str] = Counter()
        self._held: dict[str, LeaseKeeper] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def replica_id(self) -> str:
        return self.settings.replica_id

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.spawn(self._probe(), "shared store probe")
        self.spawn(self.readers.run(), "shared readers")
        if self.settings.max_size or self.settings.max_age:
            from nightproxy.cache.shared.prune import prune_loop

            self.spawn(prune_loop(self), "shared prune")

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for key in list(self._held):
            await self.unhold(key)
        with contextlib.suppress(StoreError):
            await self.readers.flush_usage()

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if self.health.due_probe(HEARTBEAT_IDLE):
                with contextlib.suppress(StoreError):
                    await self.store.head(PROBE_KEY)

    # -- files ------------------------------------------------------------------------------

    @asynccontextmanager
    async def open_file(
        self, key: str, expected_sha256: str | None, upstream: Opener
    ) -> AsyncIterator[Download]:
        """What a local fill of ``key`` reads: store, peer or upstream (see ``fleetfill``)."""
        download = FleetDownload(self, key, expected_sha256, upstream)
        try:
            await download.start()
            yield download
        finally:
            await download.close()

    @asynccontextmanager
    async def reading(self, sha256: str, offset: int = 0) -> AsyncIterator[StoreDownload]:
        """A blob from the store, announced to the pruner for as long as it is read.

        The GET and the pruner's mark check start together, and the first byte waits for
        both; the announcement starts once the GET found the blob (a miss, common while a fill
        runs, writes nothing) and lands beside the body (the protocol in ``readers``).
        """
        async with (
            self.readers.reading(sha256) as read,
            self.blobs.open(sha256, start=offset) as download,
        ):
            read.announce()
            await read.cleared()
            download.check = read.usable
            yield download

    def hold(self, key: str, keeper: LeaseKeeper) -> None:
        self._held[key] = keeper

    async def unhold(self, key: str) -> None:
        keeper = self._held.pop(key, None)
        if keeper is None:
            return
        await keeper.__aexit__(None, None, None)
        with contextlib.suppress(StoreError):
            await self.leases.release(keeper.lease)

    def filled(
        self,
        key: str,
        sha256: str | None,
        local: AbstractAsyncContextManager[Path | None] | None,
    ) -> None:
        """How a local fill of ``key`` ended: if this replica filled it from upstream, share
        the verified copy (``local`` yields its path, pinned while read) and let go of the
        lease; a failed fill just lets go."""
        if sha256 is not None:
            self.readers.note_use(sha256)
        if key not in self._held:
            return
        self.spawn(self._share(key, sha256, local), f"share {key}")

    async def _share(
        self,
        key: str,
        sha256: str | None,
        local: AbstractAsyncContextManager[Path | None] | None,
    ) -> None:
        try:
            if sha256 is not None and local is not None:
                async with local as path:
                    if path is not None:
                        if await self.blobs.upload_file(path, sha256):
                            self.stats["uploads"] += 1
                        await self.blobs.put_alias(key, sha256)
        except (StoreError, OSError, UploadMismatchError) as exc:
            self.stats["upload_failures"] += 1
            log.warning("could not share %s with the fleet: %s", key, exc)
        finally:
            await self.unhold(key)

    def describe(self) -> dict[str, object]:
        """For the status page, /readyz and metrics (no credentials)."""
        store = self.settings.store
        return {
            "replica": self.replica_id,
            "store": f"s3://{store.bucket}/{store.prefix}",
            "health": self.health.describe(),
            "fills_led": len(self._held),
            "stats": dict(self.stats),
        }
