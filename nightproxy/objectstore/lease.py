"""Leases in the object store, by conditional writes alone (no coordinator of our own).

A lease is a small JSON object ``<prefix><name>`` naming its holder (a replica id and the URL
where peers can read what it is doing, such as an in-progress fill), a random token for this
acquisition, and a time to live.

- **Take**: PUT with ``If-None-Match: *``. The store lets exactly one writer create the key.
- **Renew**: PUT with ``If-Match: <the ETag we wrote>``; a 412 means someone took it over.
- **Take over** an expired lease: PUT with ``If-Match: <the expired version's ETag>``; of all
  the replicas that saw it expire, exactly one wins.
- **Release**: DELETE with ``If-Match``, so a lease taken over meanwhile is left alone.

Expiry is judged with the store's clock, never a replica's: a lease's age is the ``Date`` of
the answer that read it minus the object's ``Last-Modified`` (both written by the store), so
replicas whose clocks disagree still agree on who holds what. Both have one-second resolution,
hence ``CLOCK_GRACE``. A write whose answer was lost and that the client retried comes back
412; the token tells our own write from another holder's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from types import TracebackType

from nightproxy.objectstore.client import ObjectStore
from nightproxy.objectstore.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    StoreError,
)
from nightproxy.objectstore.wire import store_age

log = logging.getLogger(__name__)

#: Seconds added to a lease's ttl before others may take it: Date and Last-Modified are
#: whole seconds.
CLOCK_GRACE = 1.0
#: A lease object that cannot be read as one is treated as held this long after its write.
UNREADABLE_TTL = 60.0
_MAX_LEASE_BYTES = 64 * 1024
_TRIES = 4


class LeaseLostError(StoreError):
    """The lease was taken over (it expired in the store's eyes) or removed."""

    kind = "lease_lost"
    degrades = False


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a lease object holds."""

    holder: str
    token: str
    ttl: float
    #: Where peers reach the holder (for a fill: the URL that streams its bytes), or None.
    url: str | None = None
    #: Free-form facts for peers (a fill's expected size, its filename).
    info: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        data = {"holder": self.holder, "token": self.token, "ttl": self.ttl, "url": self.url}
        data["info"] = self.info
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> LeaseRecord | None:
        try:
            data = json.loads(body)
            info = data.get("info") or {}
            record = cls(
                holder=str(data["holder"]),
                token=str(data["token"]),
                ttl=float(data["ttl"]),
                url=None if data.get("url") is None else str(data["url"]),
                info={str(k): str(v) for k, v in info.items()},
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return record if record.ttl > 0 else None


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease we hold: renew and release it with its current ``etag``."""

    name: str
    record: LeaseRecord
    etag: str


@dataclass(frozen=True, slots=True)
class Holder:
    """Someone else holds the lease: who, where, and for how much longer at most."""

    name: str
    record: LeaseRecord | None
    etag: str
    #: Seconds since the holder last wrote it, by the store's clock.
    age: float

    @property
    def ttl(self) -> float:
        return self.record.ttl if self.record is not None else UNREADABLE_TTL

    @property
    def expired(self) -> bool:
        return self.age > self.ttl + CLOCK_GRACE

    @property
    def url(self) -> str | None:
        return self.record.url if self.record is not None else None


class Leases:
    """Leases under ``prefix`` of one store, taken in the name of one holder."""

    def __init__(
        self, store: ObjectStore, *, holder: str, url: str | None = None, prefix: str = "leases/"
    ) -> None:
        self.store = store
        self.holder = holder
        self.url = url
        self.prefix = prefix

    def _key(self, name: str) -> str:
        return self.prefix + name

    async def inspect(self, name: str) -> Holder | None:
        """The lease as it stands (expired or not), or None when nobody holds it."""
        try:
            async with self.store.open(self._key(name)) as reader:
                body = await reader.read(_MAX_LEASE_BYTES)
                headers = reader.response.headers
                etag = reader.info.etag
        except ObjectNotFoundError:
            return None
        record = LeaseRecord.from_bytes(body)
        # Without the store's dates (a store that sends none), the lease counts as fresh.
        return Holder(name, record, etag, store_age(headers, 0.0))

    async def live_holder(self, name: str) -> Holder | None:
        """Who holds the lease now, or None when it is free or expired."""
        current = await self.inspect(name)
        return current if current is not None and not current.expired else None

    async def acquire(
        self, name: str, ttl: float, *, info: dict[str, str] | None = None
    ) -> Lease | Holder:
        """Take the lease (free or expired) or learn who holds it."""
        record = LeaseRecord(self.holder, secrets.token_hex(16), ttl, self.url, dict(info or {}))
        key = self._key(name)
        current: Holder | None = None
        for _try in range(_TRIES):
            try:
                etag = await self.store.put(
                    key, record.to_bytes(), if_none_match=True, content_type="application/json"
                )
                return Lease(name, record, etag)
            except PreconditionFailedError:
                pass
            current = await self.inspect(name)
            if current is None:
                continue  # released between our write and our read: try again
            if current.record is not None and current.record.token == record.token:
                return Lease(name, record, current.etag)  # our write; its answer was lost
            if not current.expired:
                return current
            try:
                etag = await self.store.put(
                    key, record.to_bytes(), if_match=current.etag, content_type="application/json"
                )
                return Lease(name, record, etag)
            except PreconditionFailedError:
                continue  # another replica took it over first, or the holder renewed
        if current is not None:
            return current
        raise PreconditionFailedError(f"lease {name}: still contended after {_TRIES} tries")

    async def renew(self, lease: Lease) -> Lease:
        """Write the lease again (its age starts over); ``LeaseLostError`` if it is not ours."""
        key = self._key(lease.name)
        try:
            etag = await self.store.put(
                key, lease.record.to_bytes(), if_match=lease.etag, content_type="application/json"
            )
            return replace(lease, etag=etag)
        except PreconditionFailedError:
            current = await self.inspect(lease.name)
            if current is not None and current.record == lease.record:
                return replace(lease, etag=current.etag)  # our retried write had landed
            raise LeaseLostError(f"lease {lease.name}: taken over or removed") from None

    async def release(self, lease: Lease) -> None:
        """Remove the lease if it is still ours; leave a new holder's alone."""
        key = self._key(lease.name)
        etag = lease.etag
        for _try in range(2):
            try:
                await self.store.delete(key, if_match=etag)
                return
            except PreconditionFailedError:
                current = await self.inspect(lease.name)
                if current is None or current.record != lease.record:
                    return
                etag = current.etag


def renew_interval(ttl: float) -> float:
    """How often a holder renews: three times per ttl, so two lost renewals are survivable."""
    return max(ttl / 3.0, 0.05)


class LeaseKeeper:
    """Renews a lease in the background while its holder works, and releases it after.

    ``lost`` is set when the lease was taken over, or could not be renewed for a whole ttl (the
    store was unreachable, so others may have taken it): work that must happen under the lease
    (deleting objects) stops when it is set.
    """

    def __init__(self, leases: Leases, lease: Lease, *, release: bool = True) -> None:
        self.leases = leases
        self.lease = lease
        self.release = release
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LeaseKeeper:
        self._task = asyncio.create_task(self._run(), name=f"lease {self.lease.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.release and not self.lost.is_set():
            with contextlib.suppress(StoreError):
                await asyncio.shield(self.leases.release(self.lease))

    async def _run(self) -> None:
        ttl = self.lease.record.ttl
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(renew_interval(ttl))
            try:
                self.lease = await self.leases.renew(self.lease)
                renewed = time.monotonic()
            except LeaseLostError:
                self.lost.set()
                return
            except StoreError as exc:
                if time.monotonic() - renewed > ttl:
                    log.warning(
                        "lease %s lost: not renewed for %.0fs (%s)", self.lease.name, ttl, exc
                    )
                    self.lost.set()
                    return
