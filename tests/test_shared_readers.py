"""Reads of the shared tier against the pruner, when the read's announcement is slow.

A read announces itself (a PUT of its replica's ``readers/`` object) beside its first bytes,
not before them. These tests slow that PUT down through a proxy in front of real SeaweedFS and
check both halves of the protocol in ``nightproxy.cache.shared.readers``: the pruner waits long
enough to see a late announcement, and a read whose announcement is later still stops using
the store's bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nightproxy.cache.shared import readers
from nightproxy.cache.shared.prune import prune_once
from nightproxy.cache.shared.settings import SharedSettings
from nightproxy.cache.shared.tier import SharedTier
from nightproxy.objectstore import ObjectNotFoundError, StoreDownError
from nightproxy.upstreams.base import Download, HttpDownload
from tests.fakes.faulty_store import FaultyStoreProxy
from tests.seaweed import SeaweedServer

MIB = 1024 * 1024
#: How long a read may take to announce itself, here (the default is 5 s).
WITHIN = 0.5


@pytest.fixture
async def proxy(seaweed: SeaweedServer, start_fake: Any) -> FaultyStoreProxy:
    return await start_fake(FaultyStoreProxy(seaweed.endpoint))


@pytest.fixture
async def tiers(
    seaweed: SeaweedServer, s3_prefix: str, proxy: FaultyStoreProxy
) -> AsyncIterator[tuple[SharedTier, SharedTier]]:
    """A pruner talking to the store directly, and a reader going through the proxy."""
    direct = seaweed.store_settings(s3_prefix)
    async with aiohttp.ClientSession() as session:
        made = [
            SharedTier(
                session,
                SharedSettings(
                    store=store,
                    replica_id=name,
                    peer_url=None,
                    max_size=MIB,
                    announce_within=WITHIN,
                ),
            )
            for name, store in (
                ("pruner", direct),
                ("reader", dataclasses.replace(direct, endpoint=proxy.base_url)),
            )
        ]
        yield made[0], made[1]
        for tier in made:
            await tier.close()


async def _upload(tier: SharedTier, tmp_path: Path, name: str) -> tuple[str, bytes]:
    data = os.urandom(MIB)
    path = tmp_path / name
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert await tier.blobs.upload_file(path, sha)
    return sha, data


async def read_into(tier: SharedTier, sha: str, sizes: list[int]) -> None:
    """Read the blob from the store through ``tier``, noting each chunk's size."""
    async with tier.reading(sha) as download:
        async for chunk in download.chunks():
            sizes.append(len(chunk))


async def test_a_late_announcement_is_still_seen_by_the_pruner(
    tiers: tuple[SharedTier, SharedTier], proxy: FaultyStoreProxy, tmp_path: Path
) -> None:
    """A read whose announcement lands after the pruner marked the blob (but within the
    bound) is seen by the pruner, which waits for it: the blob is spared and read whole."""
    pruner, reader = tiers
    sha, data = await _upload(pruner, tmp_path, "a")
    kept, _ = await _upload(pruner, tmp_path, "b")
    # Over budget, and ``kept`` used lately: ``sha`` is the victim.
    pruner.readers.used = {kept: time.time() + 60}
    await pruner.readers.flush_usage()
    proxy.slow[("PUT", "/readers/")] = WITHIN / 2
    async with reader.reading(sha) as download:
        chunks = download.chunks()
        received = [await anext(chunks)]
        # The mark lands now, before the reader's announcement does.
        report = await prune_once(pruner)
        received += [chunk async for chunk in chunks]
    assert b"".join(received) == data
    assert report is not None
    assert (report.spared, report.deleted) == ([sha], [])
    assert await pruner.blobs.exists(sha)


async def test_a_read_not_announced_in_time_stops_using_the_stores_bytes(
    tiers: tuple[SharedTier, SharedTier], proxy: FaultyStoreProxy, tmp_path: Path
) -> None:
    """Past the bound without its announcement having landed, a read refuses the store's next
    bytes (a pruner may no longer see it), so its fill goes on from another source."""
    _, reader = tiers
    sha, _ = await _upload(reader, tmp_path, "a")
    proxy.slow[("PUT", "/readers/")] = 30.0
    proxy.pace = WITHIN / 4  # 16 pieces of 64 KiB: the body outlasts the bound
    received: list[int] = []
    with pytest.raises(StoreDownError, match="not announced in time"):
        await read_into(reader, sha, received)
    assert 0 < sum(received) < MIB


async def test_an_announcement_landing_after_the_bound_does_not_make_the_read_usable_again(
    tiers: tuple[SharedTier, SharedTier], proxy: FaultyStoreProxy, tmp_path: Path
) -> None:
    """An announcement that lands only after the bound comes too late (a pruner may have
    looked in between): bytes arriving after it are refused all the same, though none
    arrived between the bound and the landing."""
    _, reader = tiers
    sha, _ = await _upload(reader, tmp_path, "a")
    proxy.slow[("PUT", "/readers/")] = 2 * WITHIN
    # Two pieces at once, then nothing until well after the announcement landed.
    proxy.stall = (2, 4 * WITHIN)
    received: list[int] = []
    with pytest.raises(StoreDownError, match="not announced in time"):
        await read_into(reader, sha, received)
    assert 0 < sum(received) < MIB


async def test_a_marked_blob_is_not_read(
    tiers: tuple[SharedTier, SharedTier], tmp_path: Path
) -> None:
    """A read that starts after the pruner marked the blob treats it as missing."""
    pruner, reader = tiers
    sha, _ = await _upload(pruner, tmp_path, "a")
    await pruner.store.put(f"doomed/{sha}", b"", content_type="text/plain")
    with pytest.raises(ObjectNotFoundError, match="being removed"):
        async with reader.reading(sha):
            pass


async def test_a_fill_whose_store_read_goes_unannounced_still_gets_the_whole_file(
    tiers: tuple[SharedTier, SharedTier],
    proxy: FaultyStoreProxy,
    tmp_path: Path,
    aiohttp_server: Any,
) -> None:
    """A replica's fill from the store whose reads cannot announce themselves (the store
    takes 30 s per PUT) drops each read at the bound and goes on from the next source at the
    same offset: the file arrives whole and exact."""
    _, reader = tiers
    sha, data = await _upload(reader, tmp_path, "a")
    upstream_app = web.Application()

    async def whole(_request: web.Request) -> web.Response:
        return web.Response(body=data)

    upstream_app.router.add_get("/file", whole)
    server = await aiohttp_server(upstream_app)

    @asynccontextmanager
    async def upstream() -> AsyncIterator[Download]:
        async with reader.session.get(server.make_url("/file")) as response:
            yield HttpDownload(response, "upstream")

    proxy.slow[("PUT", "/readers/")] = 30.0
    proxy.pace = WITHIN / 4
    async with reader.open_file("main-demo-1.0-py3-none-any.whl", sha, upstream) as download:
        body = b"".join([chunk async for chunk in download.chunks()])
    assert hashlib.sha256(body).hexdigest() == sha
    assert reader.stats["resumed"] >= 1


async def test_a_replicas_usage_record_keeps_only_its_most_recent_uses(
    tiers: tuple[SharedTier, SharedTier], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last-use times a replica shares are bounded: past the limit, the oldest go."""
    monkeypatch.setattr(readers, "USAGE_ENTRIES", 3)
    _, reader = tiers
    reader.readers.used = {f"{n:064x}": 1000.0 + n for n in range(5)}
    await reader.readers.flush_usage()
    body, _ = await reader.store.get(f"usage/{reader.holder}")
    assert sorted(json.loads(body)["used"]) == [f"{n:064x}" for n in (2, 3, 4)]
