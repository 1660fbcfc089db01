"""The shared tier's budget against a real S3 store: enforced once, never under a reader."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nightproxy.cache.shared.prune import choose_victims, prune_once
from nightproxy.cache.shared.settings import SharedSettings
from nightproxy.cache.shared.tier import SharedTier
from tests.seaweed import SeaweedServer

MIB = 1024 * 1024


@pytest.fixture
async def tiers(
    seaweed: SeaweedServer, s3_prefix: str
) -> AsyncIterator[tuple[SharedTier, SharedTier]]:
    store = seaweed.store_settings(s3_prefix)
    async with aiohttp.ClientSession() as session:
        made = tuple(
            SharedTier(
                session,
                SharedSettings(
                    store=store,
                    replica_id=name,
                    peer_url=None,
                    max_size=2 * MIB + 1,
                    announce_within=0.5,
                ),
            )
            for name in ("p1", "p2")
        )
        yield made[0], made[1]
        for tier in made:
            await tier.close()


async def test_budget_enforced_once_without_cutting_a_read(
    tiers: tuple[SharedTier, SharedTier], tmp_path: Path
) -> None:
    """Two replicas prune at once: one does it, removes the least recently used blob, and
    spares the one another replica is reading, whose read completes whole."""
    t1, t2 = tiers
    shas = []
    for i in range(4):
        data = os.urandom(MIB)
        path = tmp_path / f"blob{i}"
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        assert await t1.blobs.upload_file(path, sha)
        shas.append(sha)
    # Recently used by some replica: the last two stay; the first two are the victims.
    t1.readers.used = {shas[2]: time.time() + 60, shas[3]: time.time() + 60}
    await t1.readers.flush_usage()
    reading, idle = sorted(shas[:2])[0], sorted(shas[:2])[1]
    digest = hashlib.sha256()
    async with t2.reading(reading) as download:
        chunks = download.chunks()
        digest.update(await anext(chunks))
        reports = await asyncio.gather(prune_once(t1), prune_once(t2))
        async for chunk in chunks:
            digest.update(chunk)
    assert digest.hexdigest() == reading
    done = [r for r in reports if r is not None]
    assert len(done) == 1
    report = done[0]
    assert report.deleted == [idle]
    assert report.spared == [reading]
    assert not await t1.blobs.exists(idle)
    assert all([await t1.blobs.exists(s) for s in (reading, shas[2], shas[3])])
    # No doomed marks are left behind: the spared blob stays readable.
    async with t1.reading(reading) as again:
        assert again.size == MIB


@given(
    st.dictionaries(
        st.text("abcdef", min_size=1, max_size=4),
        st.tuples(st.integers(0, 1000), st.floats(0, 1000)),
        max_size=30,
    ),
    st.integers(0, 20_000),
    st.floats(0, 2000),
)
def test_victims_leave_the_newest_within_budget(
    blobs: dict[str, tuple[int, float]], max_size: int, max_age: float
) -> None:
    """What stays fits max_size and is younger than max_age; no kept blob is older than a
    victim taken for size."""
    now = 1000.0
    victims = choose_victims(blobs, max_size=max_size, max_age=max_age, now=now)
    kept = {sha: v for sha, v in blobs.items() if sha not in victims}
    assert sum(size for size, _ in kept.values()) <= max_size or not max_size
    if max_age:
        assert all(now - used <= max_age for _, used in kept.values())
    assert len(set(victims)) == len(victims)
