"""Which shared blobs are being read, fleet-wide, so the pruner never deletes one mid-read.

Each replica keeps ``readers/<replica>``: the sha256s it is reading from the store right now,
rewritten when a read starts and renewed while any is running. The pruner and the readers
meet through the store (read-after-write consistent) and a bound on time, so that the reader's
write (a PUT, the slowest request of a read's start) runs beside its first bytes instead of
before them:

- the pruner marks its victims (``doomed/<sha>``), waits ``2 * announce_within``, *then* reads
  every live ``readers/`` object, and deletes only victims nobody lists;
- a reader checks for the mark as it starts its GET, and treats a marked blob as missing; it
  lists the blob in its ``readers/`` object at the same moment, and uses no byte received
  after ``announce_within`` unless that write has landed (it goes on from another source).

A mark written after the reader's check (which it therefore missed) is followed by the
pruner's look at least ``2 * announce_within`` later, by which time the reader's entry has
landed or the reader has stopped using the blob: a blob is never deleted under a read. Both
bounds are durations on each party's own monotonic clock, so the clocks need not agree.
A replica that dies stops renewing its object, and the pruner ignores it after ``READERS_TTL``.
It also records when it last used each blob (``usage/<replica>``), which the pruner merges to
order blobs by last use across the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nightproxy.objectstore import ObjectNotFoundError, ObjectStore, StoreDownError, StoreError

log = logging.getLogger(__name__)

READERS = "readers/"
DOOMED = "doomed/"
USAGE = "usage/"
#: Seconds a readers object counts after its last write (the store's clock).
READERS_TTL = 30.0
#: Last-use times one replica keeps in ``usage/<replica>``, the most recent (about 80 bytes
#: each).
USAGE_ENTRIES = 100_000


class Read:
    """One read of a blob from the store: its mark check, started with it, and its
    announcement, started once the GET found the blob (a miss writes nothing)."""

    def __init__(self, registry: ReadRegistry, sha256: str, within: float) -> None:
        self.sha256 = sha256
        self._registry = registry
        # From before the check is sent: the bound the pruner's wait relies on.
        self.deadline = time.monotonic() + within
        self._check = asyncio.ensure_future(registry.check_unmarked(sha256))
        self._announce: asyncio.Future[None] | None = None
        #: When the announcement landed (monotonic), once it has.
        self._landed: float | None = None

    def announce(self) -> None:
        """Start the announcement (the GET found the blob): the read counts as a use."""
        if self._announce is None:
            self._registry.note_use(self.sha256)
            self._announce = asyncio.ensure_future(self._announced())
            # Retrieved here, so that a failed announcement is not reported as never retrieved.
            self._announce.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _announced(self) -> None:
        await self._registry.publish()
        # Before the task is done: whoever sees it done sees this too.
        self._landed = time.monotonic()

    async def cleared(self) -> None:
        """Until the mark check answered; ``ObjectNotFoundError`` when the blob is marked."""
        await self._check

    def usable(self) -> None:
        """Raise ``StoreDownError`` if bytes received now must not be used: the announcement
        failed, or has not landed by the deadline (a pruner may no longer see this read)."""
        announce = self._announce
        if announce is None:
            raise StoreDownError(f"{self.sha256}: the read was not announced")
        if announce.done() and self._landed is None:
            raise StoreDownError(f"{self.sha256}: the read could not be announced")
        # Landing late is as bad as not landing: a pruner may have looked in between, so no
        # byte received after the deadline is used unless the announcement beat it.
        if (self._landed is None or self._landed > self.deadline) and (
            time.monotonic() > self.deadline
        ):
            raise StoreDownError(f"{self.sha256}: the read was not announced in time")

    async def close(self) -> None:
        if not self._check.done():
            self._check.cancel()
        # Retrieved, so that a failure nobody awaited is not reported as never retrieved.
        await asyncio.gather(self._check, return_exceptions=True)
        # The announcement is left to finish: cancelled mid-PUT, it could land unrecorded
        # (``publish``), and the lock it holds would be let go while the PUT is in flight.


class ReadRegistry:
    def __init__(self, store: ObjectStore, replica_id: str, announce_within: float) -> None:
        self.store = store
        self.replica_id = replica_id
        self.announce_within = announce_within
        self._reading: Counter[str] = Counter()
        #: What ``readers/<replica>`` lists, as far as this replica knows (None: unknown).
        self._published: frozenset[str] | None = frozenset()
        self._lock = asyncio.Lock()
        #: sha256 -> wall-clock time of its last use by this replica, not yet flushed.
        self.used: dict[str, float] = {}
        self._flushed_use: dict[str, float] = {}

    def note_use(self, sha256: str) -> None:
        self.used[sha256] = time.time()

    async def publish(self, *, force: bool = False) -> None:
        """Write ``readers/<replica>`` if the set of blobs read changed (or ``force``).

        The write runs to its end even if the caller is cancelled, holding the lock: a PUT
        that landed must be what ``_published`` says, and no older body may land after a
        newer one.
        """
        async with self._lock:
            current = frozenset(sha for sha, n in self._reading.items() if n > 0)
            if current == self._published and not force:
                return
            body = json.dumps({"replica": self.replica_id, "reading": sorted(current)})
            # Unknown until the PUT answers: it may land even if it fails here.
            self._published = None
            write = asyncio.ensure_future(
                self.store.put(
                    READERS + self.replica_id, body.encode(), content_type="application/json"
                )
            )
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await asyncio.gather(write, return_exceptions=True)
                raise
            self._published = current

    async def check_unmarked(self, sha256: str) -> None:
        try:
            await self.store.head(DOOMED + sha256)
        except ObjectNotFoundError:
            return
        raise ObjectNotFoundError(f"{sha256}: being removed from the shared tier")

    @asynccontextmanager
    async def reading(self, sha256: str) -> AsyncIterator[Read]:
        """Announce a read of the blob for as long as it lasts (see the module's protocol)."""
        self._reading[sha256] += 1
        read = Read(self, sha256, self.announce_within)
        try:
            yield read
        finally:
            try:
                await read.close()
            finally:
                self._reading[sha256] -= 1
                if self._reading[sha256] <= 0:
                    del self._reading[sha256]
            # The entry stays listed until the next write: a stale entry only spares a blob.

    async def run(self, interval: float = READERS_TTL / 3) -> None:
        """Renew the readers object while reads run, and flush last-use times."""
        flush_every = max(1, int(60 / interval))
        ticks = 0
        while True:
            await asyncio.sleep(interval)
            ticks += 1
            with contextlib.suppress(StoreError):
                if self._reading or self._published is None or self._published:
                    await self.publish(force=bool(self._reading))
                if ticks % flush_every == 0:
                    await self.flush_usage()

    async def flush_usage(self) -> None:
        if not self.used:
            return
        merged = {**self._flushed_use, **self.used}
        if len(merged) > USAGE_ENTRIES:
            # Bounded, so that the object stays well within what the pruner reads (16 MiB):
            # a blob whose entry goes counts as last used when it was uploaded, or when
            # another replica last used it.
            kept = sorted(merged, key=merged.__getitem__)[-USAGE_ENTRIES:]
            merged = {sha: merged[sha] for sha in kept}
        body = json.dumps({"replica": self.replica_id, "used": merged})
        await self.store.put(
            USAGE + self.replica_id, body.encode(), content_type="application/json"
        )
        self._flushed_use = merged
        self.used = {}
