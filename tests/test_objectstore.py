"""The object-store client against a real S3 server (SeaweedFS), faults injected by a real proxy."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from nightproxy.objectstore import (
    ObjectNotFoundError,
    ObjectStore,
    PreconditionFailedError,
    StoreDeniedError,
    StoreDownError,
    StoreError,
    StoreSettings,
    StoreThrottledError,
)
from nightproxy.objectstore.writer import MIN_PART_SIZE, ObjectWriter
from tests.fakes.faulty_store import FaultyStoreProxy
from tests.seaweed import SeaweedServer
from tests.support import free_port


def settings_for(seaweed: SeaweedServer, prefix: str, **options: Any) -> StoreSettings:
    return StoreSettings(
        bucket=seaweed.bucket,
        prefix=prefix,
        endpoint=options.pop("endpoint", seaweed.endpoint),
        region=seaweed.region,
        access_key_id=options.pop("access_key_id", seaweed.access_key_id),
        secret_access_key=seaweed.secret_access_key,
        **{"backoff": 0.01, "max_backoff": 0.05, **options},
    )


@pytest.fixture
async def store(seaweed: SeaweedServer, s3_prefix: str) -> AsyncIterator[ObjectStore]:
    async with aiohttp.ClientSession() as session:
        yield ObjectStore(session, settings_for(seaweed, s3_prefix))


async def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.list_objects(prefix)]


async def test_put_get_head_delete_round_trip(store: ObjectStore) -> None:
    """An object written is read back byte for byte with its size and ETag, then deleted."""
    key = "blobs/odd name+plus%ü.whl"
    etag = await store.put(key, b"wheel bytes")
    body, info = await store.get(key)
    assert body == b"wheel bytes"
    assert (info.size, info.etag) == (11, etag)
    head = await store.head(key)
    assert (head.size, head.etag, head.key) == (11, etag, key)
    assert await keys(store, "blobs/") == [key]
    await store.delete(key)
    with pytest.raises(ObjectNotFoundError):
        await store.head(key)
    await store.delete(key)  # deleting what is gone is fine


async def test_conditional_writes(store: ObjectStore) -> None:
    """If-None-Match: * refuses an existing key; If-Match succeeds only on the current ETag."""
    first = await store.put("lease", b"a", if_none_match=True)
    with pytest.raises(PreconditionFailedError):
        await store.put("lease", b"b", if_none_match=True)
    second = await store.put("lease", b"c", if_match=first)
    with pytest.raises(PreconditionFailedError):
        await store.put("lease", b"d", if_match=first)
    body, info = await store.get("lease")
    assert (body, info.etag) == (b"c", second)


async def test_range_reads_stream_the_asked_bytes(store: ObjectStore) -> None:
    """A range GET answers 206 with exactly those bytes and the whole object's size."""
    data = os.urandom(100_000)
    await store.put("blob", data)
    async with store.open("blob", start=10, end=19) as reader:
        assert reader.status == 206
        assert await reader.read() == data[10:20]
        assert reader.info.size == len(data)
    async with store.open("blob", start=99_000) as reader:
        assert b"".join([c async for c in reader.chunks(4096)]) == data[99_000:]


async def test_listing_follows_continuation_tokens(store: ObjectStore) -> None:
    """Every key under a prefix is listed, in order, across several pages."""
    names = [f"pages/p{i:02d}" for i in range(7)]
    for name in names:
        await store.put(name, name.encode())
    await store.put("other/x", b"x")
    listed = [info.key async for info in store.list_objects("pages/", page_size=3)]
    assert listed == names
    after = [info.key async for info in store.list_objects("pages/", start_after="pages/p04")]
    assert after == names[5:]


async def test_multipart_object_appears_only_when_committed(store: ObjectStore) -> None:
    """Parts uploaded so far are invisible; commit makes the whole object appear at once."""
    data = os.urandom(2 * MIN_PART_SIZE + 12345)
    async with ObjectWriter(store, "big.whl", part_size=MIN_PART_SIZE) as writer:
        for offset in range(0, len(data), 1 << 20):
            await writer.write(data[offset : offset + (1 << 20)])
        assert await keys(store) == []
        with pytest.raises(ObjectNotFoundError):
            await store.head("big.whl")
        await writer.commit(if_none_match=True)
    body, info = await store.get("big.whl", limit=len(data))
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert info.size == len(data)
    assert [u async for u in store.list_uploads()] == []


async def test_abandoned_writer_leaves_nothing(store: ObjectStore) -> None:
    """A writer left without commit (an error mid-fill) aborts: no object, no open upload."""

    async def failing_fill() -> None:
        async with ObjectWriter(store, "torn.whl", part_size=MIN_PART_SIZE) as writer:
            await writer.write(os.urandom(MIN_PART_SIZE + 1))
            raise RuntimeError("fill failed")

    with pytest.raises(RuntimeError, match="fill failed"):
        await failing_fill()
    assert await keys(store) == []
    assert [u async for u in store.list_uploads()] == []


async def test_commit_if_none_match_loses_to_an_existing_object(store: ObjectStore) -> None:
    """A multipart commit with If-None-Match on a taken key fails and leaves the first object."""
    await store.put("taken.whl", b"first")
    async with ObjectWriter(store, "taken.whl", part_size=MIN_PART_SIZE) as writer:
        await writer.write(os.urandom(MIN_PART_SIZE + 10))
        with pytest.raises(PreconditionFailedError):
            await writer.commit(if_none_match=True)
    assert [u async for u in store.list_uploads()] == []
    assert (await store.get("taken.whl"))[0] == b"first"


async def test_commit_if_match_only_replaces_that_version(store: ObjectStore) -> None:
    """A multipart commit with If-Match replaces the object only while it is still that ETag;
    after another write it fails and leaves the other write's bytes (hosted overwrites rely
    on it)."""
    first = await store.put("named.whl", b"first")
    data = os.urandom(MIN_PART_SIZE + 10)
    async with ObjectWriter(store, "named.whl", part_size=MIN_PART_SIZE) as writer:
        await writer.write(data)
        replaced = await writer.commit(if_match=first)
    assert (await store.head("named.whl")).etag == replaced
    async with ObjectWriter(store, "named.whl", part_size=MIN_PART_SIZE) as writer:
        await writer.write(os.urandom(MIN_PART_SIZE + 10))
        with pytest.raises(PreconditionFailedError):
            await writer.commit(if_match=first)
    body, info = await store.get("named.whl", limit=len(data))
    assert (hashlib.sha256(body).digest(), info.etag) == (hashlib.sha256(data).digest(), replaced)
    assert [u async for u in store.list_uploads()] == []


async def test_missing_key_and_wrong_credentials_are_classified(
    seaweed: SeaweedServer, s3_prefix: str
) -> None:
    """A missing key is ObjectNotFoundError; a wrong key pair is StoreDeniedError, not retried."""
    results: list[StoreError | None] = []
    async with aiohttp.ClientSession() as session:
        good = ObjectStore(session, settings_for(seaweed, s3_prefix))
        with pytest.raises(ObjectNotFoundError):
            await good.get("nothing")
        bad = ObjectStore(
            session,
            settings_for(seaweed, s3_prefix, access_key_id="someone-else"),
            on_result=results.append,
        )
        with pytest.raises(StoreDeniedError):
            await bad.put("x", b"x")
    assert len(results) == 1
    assert isinstance(results[0], StoreDeniedError)


async def test_a_store_that_is_down_is_reported_down(s3_prefix: str) -> None:
    """Nothing listening: StoreDownError after the retries, and the health hook hears of it."""
    results: list[StoreError | None] = []
    settings = StoreSettings(
        bucket="b", endpoint=f"http://127.0.0.1:{free_port()}", attempts=3, backoff=0.01
    )
    async with aiohttp.ClientSession() as session:
        store = ObjectStore(session, settings, on_result=results.append)
        with pytest.raises(StoreDownError):
            await store.head("x")
    assert [type(r) for r in results] == [StoreDownError]


@pytest.fixture
async def faulty(seaweed: SeaweedServer, start_fake: Any) -> FaultyStoreProxy:
    return await start_fake(FaultyStoreProxy(seaweed.endpoint))


async def test_slowdown_and_5xx_are_retried(
    seaweed: SeaweedServer, s3_prefix: str, faulty: FaultyStoreProxy
) -> None:
    """SlowDown and a 500 are retried with backoff; the write lands once the store recovers."""
    settings = settings_for(seaweed, s3_prefix, endpoint=faulty.base_url, attempts=4)
    async with aiohttp.ClientSession() as session:
        store = ObjectStore(session, settings)
        faulty.fail_next(2)
        await store.put("k", b"v")
        faulty.fail_next(1, status=500, code="InternalError")
        assert (await store.get("k"))[0] == b"v"
        assert faulty.failed == 3
        faulty.fail_always()
        with pytest.raises(StoreThrottledError):
            await store.put("k", b"w")
        faulty.heal()
        assert (await store.get("k"))[0] == b"v"


async def test_a_body_cut_short_is_store_down(
    seaweed: SeaweedServer, s3_prefix: str, faulty: FaultyStoreProxy
) -> None:
    """A GET whose body stops before its length is StoreDownError, never a short success."""
    settings = settings_for(seaweed, s3_prefix, endpoint=faulty.base_url)
    async with aiohttp.ClientSession() as session:
        store = ObjectStore(session, settings)
        await store.put("blob", os.urandom(1 << 20))
        faulty.cut_bodies = True
        with pytest.raises(StoreDownError):
            await store.get("blob")


async def test_user_metadata_written_with_an_object_is_read_back(store: ObjectStore) -> None:
    """Metadata given to a PUT and to a multipart upload comes back on HEAD, by lower-case
    name, with the object's age by the store's clock."""
    await store.put("small", b"x", metadata={"sha256": "abc"})
    async with ObjectWriter(store, "big", metadata={"Sha256": "def"}) as writer:
        await writer.write(os.urandom(MIN_PART_SIZE + 1))
        await writer.commit()
    small, big = await store.head("small"), await store.head("big")
    assert (small.metadata, big.metadata) == ({"sha256": "abc"}, {"sha256": "def"})
    assert small.age is not None
    assert 0 <= small.age < 3600
