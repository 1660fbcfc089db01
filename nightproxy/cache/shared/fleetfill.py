"""Where a replica's cold file comes from: the shared store, the replica filling it, or upstream.

The local fill machinery reads one ``Download``; ``FleetDownload`` decides which source it is:

1. the blob is in the store (by sha256, or through the key's alias): read it from there;
2. else take the fill lease (``fills/<key>``): the winner downloads from upstream, and after
   its local fill is verified uploads the blob and releases the lease;
3. else another replica holds the lease: stream the bytes from it as they arrive (the lease
   names its peer URL), so this replica's clients get their first byte right after the
   filler's, never after the whole fill;
4. if that replica does not answer, wait for its lease to expire (a killed filler) and go
   round again: someone, maybe this replica, takes the lease over.

If a source fails mid-body (the filler was killed, the store went away), the download goes on
from the next source, skipping the bytes already passed on: the reader sees one stream, and the
local fill's sha256 check covers every byte whatever the sources. When the store itself fails,
the replica goes to the upstream alone, uncoordinated: serving beats deduplicating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING, TypeVar

from nightproxy.cache.shared.peer import PeerLacksFileError, PeerUnavailableError, open_peer
from nightproxy.cache.store import is_sha256
from nightproxy.objectstore import ObjectNotFoundError, StoreDownError, StoreError
from nightproxy.objectstore.lease import Holder, LeaseKeeper
from nightproxy.upstreams.base import Download

if TYPE_CHECKING:
    from nightproxy.cache.shared.tier import SharedTier

log = logging.getLogger(__name__)

Opener = Callable[[], AbstractAsyncContextManager[Download]]
#: Between two looks at a lease held by a replica that does not answer.
_POLL = 0.25
#: Seconds one store request of choosing a source may take: a slower store is skipped (the
#: client's first byte must not wait for it) and marked degraded.
SOURCE_WAIT = 3.0
#: Reads of the store's copy that may fail in a row without passing a byte before the fill
#: goes on from the other sources.
STORE_TRIES = 3
_T = TypeVar("_T")


class SourceChangedError(Exception):
    """The next source has another size than the first: not the same file."""


def fill_lease(key: str) -> str:
    return f"fills/{key}"


class FleetDownload(Download):
    def __init__(
        self, tier: SharedTier, key: str, expected_sha256: str | None, upstream: Opener
    ) -> None:
        self.tier = tier
        self.key = key
        self.expected_sha256 = expected_sha256
        self.upstream = upstream
        #: "store", "peer", "upstream" (under our lease) or "direct" (store failing).
        self.source = ""
        self._inner: Download | None = None
        self._stack = AsyncExitStack()
        self._dead_peers: set[tuple[str | None, str]] = set()
        #: The store's copy is passed over: its reads kept failing without passing a byte.
        self._skip_store = False

    async def start(self) -> None:
        self._inner = await self._open(0)
        self.size = self._inner.size
        self.etag = self._inner.etag
        self.last_modified = self._inner.last_modified

    async def close(self) -> None:
        await self._stack.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        passed = 0
        # Sources that failed in a row without passing a byte: a store that answers but never
        # lets a read finish (its announcements never land in time) is not tried for ever.
        barren, resumed_at = 0, -1
        while True:
            assert self._inner is not None
            skip = self._skip
            try:
                async for chunk in self._inner.chunks():
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]  # noqa: PLW2901
                        skip = 0
                    passed += len(chunk)
                    yield chunk
                return
            except Exception as exc:
                if self.source in {"upstream", "direct"}:
                    raise
                log.warning(
                    "%s from the %s failed after %d bytes (%s): going on from the next source",
                    self.key,
                    self.source,
                    passed,
                    exc,
                )
                self.tier.stats["resumed"] += 1
            barren = barren + 1 if passed == resumed_at else 0
            resumed_at = passed
            if self.source == "store" and barren >= STORE_TRIES:
                self._skip_store = True
            await self._stack.aclose()
            self._stack = AsyncExitStack()
            self._inner = await self._open(passed)
            if self._inner.size != self.size:
                raise SourceChangedError(
                    f"{self.key}: the next source has {self._inner.size} bytes, not {self.size}"
                )

    # -- choosing a source ------------------------------------------------------------------

    _skip = 0

    async def _open(self, offset: int) -> Download:
        """The next source, positioned (or to be skipped) to ``offset``."""
        tier = self.tier
        self._skip = 0
        patience = time.monotonic() + 4 * tier.settings.fill_lease_ttl + 5.0
        while True:
            if tier.health.skip() or time.monotonic() > patience:
                return await self._direct(offset)
            try:
                opened = await self._try_sources(offset)
            except StoreError as exc:
                log.warning("shared store failing (%s): %s from upstream alone", exc, self.key)
                return await self._direct(offset)
            if opened is not None:
                return opened
            await asyncio.sleep(_POLL)

    async def _try_sources(self, offset: int) -> Download | None:
        tier = self.tier
        expected = self.expected_sha256
        known = expected if expected is not None and is_sha256(expected) else None
        download = None if self._skip_store else await self._from_store(known, offset)
        if download is not None:
            return download
        claim = await self._in_time(
            tier.leases.acquire(
                fill_lease(self.key), tier.settings.fill_lease_ttl, info={"key": self.key}
            )
        )
        if not isinstance(claim, Holder):
            # The last filler shares the blob, then lets go of the lease: between our look at
            # the store above and our taking the lease, it may have done both. Look again
            # under the lease, or the file is downloaded a second time.
            shared = None if self._skip_store else await self._from_store(known, offset)
            if shared is not None:
                with contextlib.suppress(StoreError):
                    await tier.leases.release(claim)
                return shared
            keeper = LeaseKeeper(tier.leases, claim, release=False)
            await keeper.__aenter__()
            tier.hold(self.key, keeper)
            try:
                download = await self._stack.enter_async_context(self.upstream())
            except BaseException:
                await tier.unhold(self.key)
                raise
            self.source = "upstream"
            self._skip = offset
            tier.stats["upstream_fills"] += 1
            return download
        url = claim.url
        # A peer that did not answer is not asked again under the same lease; a new holder
        # (a new token), even at the same URL, is.
        dead = (url, claim.record.token if claim.record is not None else "")
        if url is None or dead in self._dead_peers or url == tier.settings.peer_url:
            return None
        try:
            download = await self._stack.enter_async_context(
                open_peer(
                    tier.session,
                    url,
                    self.key,
                    token=tier.peer_token,
                    connect_timeout=2.0,
                    read_timeout=tier.settings.fill_lease_ttl * 2,
                )
            )
        except PeerLacksFileError as exc:
            log.debug("%s: %s; asking again", self.key, exc)
            return None
        except PeerUnavailableError as exc:
            log.info("%s: %s; waiting for its lease", self.key, exc)
            self._dead_peers.add(dead)
            return None
        self.source = "peer"
        self._skip = offset
        tier.stats["peer_streams"] += 1
        return download

    async def _from_store(self, known: str | None, offset: int) -> Download | None:
        """The blob from the store (found by ``known`` or the key's alias), or None."""
        tier = self.tier
        sha = known if known is not None else await self._in_time(tier.blobs.resolve(self.key))
        if sha is None:
            return None
        try:
            download = await self._in_time(
                self._stack.enter_async_context(tier.reading(sha, offset))
            )
        except ObjectNotFoundError:
            return None
        self.source = "store"
        tier.stats["store_hits"] += 1
        return download

    async def _in_time(self, step: Awaitable[_T]) -> _T:
        """A store step of choosing the source, bounded: a slow store counts as failing."""
        try:
            async with asyncio.timeout(SOURCE_WAIT):
                return await step
        except TimeoutError:
            error = StoreDownError(f"{self.key}: the store did not answer in {SOURCE_WAIT:.0f} s")
            self.tier.health.record(error)
            raise error from None

    async def _direct(self, offset: int) -> Download:
        self.source = "direct"
        self._skip = offset
        self.tier.stats["direct_fills"] += 1
        return await self._stack.enter_async_context(self.upstream())
