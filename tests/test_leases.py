"""Leases by conditional writes, against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from nightproxy.objectstore import ObjectStore
from nightproxy.objectstore.lease import (
    Holder,
    Lease,
    LeaseKeeper,
    LeaseLostError,
    Leases,
)
from tests.seaweed import SeaweedServer
from tests.support import WAIT
from tests.test_objectstore import settings_for


@pytest.fixture
async def store(seaweed: SeaweedServer, s3_prefix: str) -> AsyncIterator[ObjectStore]:
    async with aiohttp.ClientSession() as session:
        yield ObjectStore(session, settings_for(seaweed, s3_prefix))


def replica(store: ObjectStore, name: str) -> Leases:
    return Leases(store, holder=name, url=f"http://{name}.internal:8080/_peer/")


async def wait_expired(leases: Leases, name: str) -> None:
    """Poll (bounded) until the store's clock says the lease has expired."""
    async with asyncio.timeout(WAIT):
        while await leases.live_holder(name) is not None:
            await asyncio.sleep(0.2)


async def test_exactly_one_of_many_takes_a_free_lease(store: ObjectStore) -> None:
    """Eight replicas race for one lease: one holds it, the rest learn its holder and URL."""
    replicas = [replica(store, f"r{i}") for i in range(8)]
    results = await asyncio.gather(*(r.acquire("fill/abc", ttl=30) for r in replicas))
    held = [r for r in results if isinstance(r, Lease)]
    assert len(held) == 1
    winner = held[0].record.holder
    for result in results:
        if isinstance(result, Holder):
            assert result.record is not None
            assert result.record.holder == winner
            assert result.url == f"http://{winner}.internal:8080/_peer/"
            assert not result.expired


async def test_renewal_keeps_the_lease_past_its_ttl(store: ObjectStore) -> None:
    """A holder that renews keeps its lease for several ttls; others are told it is held."""
    a, b = replica(store, "a"), replica(store, "b")
    lease = await a.acquire("prune", ttl=1.0)
    assert isinstance(lease, Lease)
    async with LeaseKeeper(a, lease) as keeper:
        for _ in range(4):
            await asyncio.sleep(1.0)
            other = await b.acquire("prune", ttl=1.0)
            assert isinstance(other, Holder), "taken over while renewed"
        assert not keeper.lost.is_set()
    # Released on exit: free at once.
    assert isinstance(await b.acquire("prune", ttl=1.0), Lease)


async def test_a_holder_that_stops_renewing_loses_its_lease(store: ObjectStore) -> None:
    """After its ttl, another replica takes the lease over; the old holder can neither renew
    nor release it."""
    a, b = replica(store, "a"), replica(store, "b")
    stale = await a.acquire("fill/x", ttl=1.0)
    assert isinstance(stale, Lease)
    assert isinstance(await b.acquire("fill/x", ttl=1.0), Holder)
    await wait_expired(b, "fill/x")
    taken = await b.acquire("fill/x", ttl=30.0)
    assert isinstance(taken, Lease)
    with pytest.raises(LeaseLostError):
        await a.renew(stale)
    await a.release(stale)
    holder = await a.live_holder("fill/x")
    assert holder is not None
    assert holder.record == taken.record


async def test_concurrent_takeover_of_an_expired_lease_has_one_winner(store: ObjectStore) -> None:
    """Six replicas see the same expired lease: exactly one takes it over."""
    dead = replica(store, "dead")
    assert isinstance(await dead.acquire("retention", ttl=1.0), Lease)
    replicas = [replica(store, f"r{i}") for i in range(6)]
    await wait_expired(replicas[0], "retention")
    results = await asyncio.gather(*(r.acquire("retention", ttl=30) for r in replicas))
    assert sum(isinstance(r, Lease) for r in results) == 1


async def test_renewal_survives_its_own_lost_answer(store: ObjectStore) -> None:
    """A renewal whose If-Match fails because our own earlier write landed is still ours."""
    a = replica(store, "a")
    lease = await a.acquire("k", ttl=30)
    assert isinstance(lease, Lease)
    renewed = await a.renew(lease)
    # Renewing with the old ETag looks like a lost answer: the record is still ours.
    again = await a.renew(lease)
    assert again.record == renewed.record
    await a.release(again)
    assert await a.inspect("k") is None


async def test_keeper_reports_a_takeover(store: ObjectStore) -> None:
    """When the lease is taken over under a keeper, ``lost`` is set and exit leaves it alone."""
    a, b = replica(store, "a"), replica(store, "b")
    lease = await a.acquire("prune", ttl=1.0)
    assert isinstance(lease, Lease)
    async with LeaseKeeper(a, lease) as keeper:
        # Someone removes it behind the holder's back (an operator, a broken replica).
        await store.delete("leases/prune")
        taken = await b.acquire("prune", ttl=30)
        assert isinstance(taken, Lease)
        async with asyncio.timeout(WAIT):
            await keeper.lost.wait()
    holder = await b.live_holder("prune")
    assert holder is not None
    assert holder.record == taken.record


async def test_an_unreadable_lease_object_counts_as_held(store: ObjectStore) -> None:
    """A lease object that is not a lease record is not taken over before UNREADABLE_TTL."""
    await store.put("leases/odd", b"not json")
    result = await replica(store, "a").acquire("odd", ttl=5)
    assert isinstance(result, Holder)
    assert result.record is None
    assert not result.expired
