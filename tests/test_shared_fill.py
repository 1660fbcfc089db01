"""Choosing where a replica's cold file comes from, against a real S3 store (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from nightproxy.cache.shared.fleetfill import fill_lease
from nightproxy.cache.shared.settings import SharedSettings
from nightproxy.cache.shared.tier import SharedTier
from nightproxy.objectstore import ObjectNotFoundError
from nightproxy.upstreams.base import Download
from tests.seaweed import SeaweedServer

MIB = 1024 * 1024


async def test_a_file_shared_just_before_the_lease_is_taken_is_read_from_the_store(
    seaweed: SeaweedServer, s3_prefix: str, tmp_path: Path
) -> None:
    """The last filler shares the file and lets go of its lease between another replica's
    look at the store and that replica taking the lease: the replica reads the store's copy
    and never asks the upstream (a second download for the fleet), then lets the lease go."""
    data = os.urandom(MIB)
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(data)
    key = "main-demo-1.0-py3-none-any.whl"
    store = seaweed.store_settings(s3_prefix)
    async with aiohttp.ClientSession() as session:
        filler = SharedTier(session, SharedSettings(store=store, replica_id="a", peer_url=None))
        late = SharedTier(session, SharedSettings(store=store, replica_id="b", peer_url=None))
        acquire = late.leases.acquire

        async def shared_meanwhile(*args: Any, **kwargs: Any) -> Any:
            assert await filler.blobs.upload_file(path, sha)
            await filler.blobs.put_alias(key, sha)
            return await acquire(*args, **kwargs)

        late.leases.acquire = shared_meanwhile  # type: ignore[method-assign]
        asked: list[str] = []

        @asynccontextmanager
        async def upstream() -> AsyncIterator[Download]:
            asked.append(key)
            raise AssertionError("the upstream was asked for a file the store holds")
            yield  # an async generator, for asynccontextmanager

        try:
            async with late.open_file(key, None, upstream) as download:
                body = b"".join([chunk async for chunk in download.chunks()])
            assert hashlib.sha256(body).hexdigest() == sha
            assert asked == []
            assert late.stats["store_hits"] == 1
            try:
                await late.store.head(late.leases.prefix + fill_lease(key))
            except ObjectNotFoundError:
                pass
            else:
                raise AssertionError("the lease was kept")
        finally:
            await filler.close()
            await late.close()
