"""Which shared blobs are being read, fleet-wide, so the pruner never deletes one mid-read.

Each replica keeps ``readers/<replica>``: the sha256s it is reading from the store right now,
rewritten when a read starts and renewed while any is running. The pruner and the readers
order their writes and reads the same way round (Dekker's handshake, on a store with
read-after-write consistency):

- the pruner marks a victim (``doomed/<sha>``), *then* reads every live ``readers/`` object,
  and deletes only victims nobody lists;
- a reader lists the blob in its ``readers/`` object, *then* checks for the mark, and treats a
  marked blob as missing (it may have started its GET already: it passes on no byte before
  the check).

Whichever writes first, one of them sees the other: a blob is never deleted under a reader.
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

from nightproxy.objectstore import ObjectNotFoundError, ObjectStore, StoreError

log = logging.getLogger(__name__)

READERS = "readers/"
DOOMED = "doomed/"
USAGE = "usage/"
#: Seconds a readers object counts after its last write (the store's clock).
READERS_TTL = 30.0


class ReadRegistry:
    def __init__(self, store: ObjectStore, replica_id: str) -> None:
        self.store = store
        self.replica_id = replica_id
        self._reading: Counter[str] = Counter()
        self._published: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        #: sha256 -> wall-clock time of its last use by this replica, not yet flushed.
        self.used: dict[str, float] = {}
        self._flushed_use: dict[str, float] = {}

    def note_use(self, sha256: str) -> None:
        self.used[sha256] = time.time()

    async def _publish(self, *, force: bool = False) -> None:
        async with self._lock:
            current = frozenset(sha for sha, n in self._reading.items() if n > 0)
            if current == self._published and not force:
                return
            body = json.dumps({"replica": self.replica_id, "reading": sorted(current)})
            await self.store.put(
                READERS + self.replica_id, body.encode(), content_type="application/json"
            )
            self._published = current

    @asynccontextmanager
    async def reading(self, sha256: str) -> AsyncIterator[None]:
        """Announce a read of the blob for as long as it lasts; ``ObjectNotFoundError`` when
        the pruner has marked it for deletion."""
        self._reading[sha256] += 1
        try:
            await self._publish()
            try:
                await self.store.head(DOOMED + sha256)
            except ObjectNotFoundError:
                pass
            else:
                raise ObjectNotFoundError(f"{sha256}: being removed from the shared tier")
            self.note_use(sha256)
            yield
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
                if self._reading or self._published:
                    await self._publish(force=bool(self._reading))
                if ticks % flush_every == 0:
                    await self.flush_usage()

    async def flush_usage(self) -> None:
        if not self.used:
            return
        merged = {**self._flushed_use, **self.used}
        body = json.dumps({"replica": self.replica_id, "used": merged})
        await self.store.put(
            USAGE + self.replica_id, body.encode(), content_type="application/json"
        )
        self._flushed_use = merged
        self.used = {}
