"""A bucket-stored feed after a write whose outcome its server never learnt, against SeaweedFS.

Each file's bytes are stored with their sha256 as object metadata. With it the feed tells its
own write from another upload's when a conditional write's answer is lost, takes over a name
whose upload died between bytes and record, and serves a listed file whose named object such
an upload overwrote. A restore writes a name on a condition too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from packaging.utils import canonicalize_name

from nightproxy.hosted import bucket
from nightproxy.hosted.auth import FeedAuth
from nightproxy.hosted.bucket import BucketStorage
from nightproxy.hosted.feed import FeedSettings, HostedFeed
from nightproxy.hosted.prune import PruneRules
from nightproxy.hosted.storage import REASON_MANUAL, Outcome, RestoreConflictError
from nightproxy.objectstore import ObjectStore
from tests.fakes.faulty_store import FaultyStoreProxy
from tests.hosted_support import NUMPY_TOKEN, publish, sha256_line
from tests.seaweed import SeaweedServer
from tests.wheels import build_wheel

NUMPY = canonicalize_name("numpy")
VERSION = "2.0.dev0"
NAME = f"numpy-{VERSION}-py3-none-any.whl"


@pytest.fixture
async def proxy(seaweed: SeaweedServer, start_fake: Any) -> FaultyStoreProxy:
    return await start_fake(FaultyStoreProxy(seaweed.endpoint))


@pytest.fixture
async def feed(
    seaweed: SeaweedServer, s3_prefix: str, proxy: FaultyStoreProxy, tmp_path: Path
) -> AsyncIterator[HostedFeed]:
    """A feed with overwrites, whose store is reached through the proxy."""
    settings = FeedSettings(
        name="community",
        rules=lambda _project: PruneRules(dev_max_age=None, keep_latest=5),
        overwrite=True,
        recheck=0,
    )
    store_settings = dataclasses.replace(
        seaweed.store_settings(s3_prefix, addressing="path", backoff=0.01, max_backoff=0.05),
        endpoint=proxy.base_url,
    )
    async with aiohttp.ClientSession() as session:
        storage = BucketStorage(ObjectStore(session, store_settings), tmp_path / "staging")
        made = HostedFeed(settings, storage, FeedAuth({NUMPY: [sha256_line(NUMPY_TOKEN)]}))
        await made.open()
        yield made
        await made.close()


def _store(feed: HostedFeed) -> ObjectStore:
    storage = feed.storage
    assert isinstance(storage, BucketStorage)
    return storage.store


async def served(feed: HostedFeed) -> tuple[str, bytes]:
    """The one file the feed lists under NAME: its listed sha256, and its bytes as served."""
    [record] = [r for r in (await feed.snapshot(fresh=True)).files() if r.filename == NAME]
    async with feed.storage.open_bytes(record) as chunks:
        return record.sha256, b"".join([chunk async for chunk in chunks])


async def test_a_write_whose_answer_was_lost_is_recorded(
    feed: HostedFeed, proxy: FaultyStoreProxy, tmp_path: Path
) -> None:
    """The store wrote a new file's bytes but its answer was lost, and the retried write then
    lost its own condition to that write: the upload knows the bytes for its own, lists the
    file, and serves exactly them."""
    wheel = build_wheel(tmp_path / "w", "numpy", VERSION, payload_size=1000)
    proxy.lose_answers[("PUT", f"/numpy/{NAME}")] = 1
    assert await publish(feed, wheel) is Outcome.CREATED
    assert proxy.failed == 1
    sha256, data = await served(feed)
    assert (sha256, data) == (hashlib.sha256(wheel.read_bytes()).hexdigest(), wheel.read_bytes())


async def test_a_name_an_upload_died_holding_is_taken_over(
    feed: HostedFeed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes written under a name by an upload that died before its record block the name
    only for a while: once older than STRAY_AGE, the next upload writes over them, keeping
    them in the trash (should their record come after all, its reads find them there)."""
    monkeypatch.setattr(bucket, "WINNER_WAIT", 0.5)
    monkeypatch.setattr(bucket, "STRAY_AGE", -1.0)
    stray = b"bytes of an upload that died"
    stray_sha = hashlib.sha256(stray).hexdigest()
    store = _store(feed)
    await store.put(f"numpy/{NAME}", stray, metadata={"sha256": stray_sha})
    wheel = build_wheel(tmp_path / "w", "numpy", VERSION, payload_size=1000)
    assert await publish(feed, wheel) is Outcome.CREATED
    sha256, data = await served(feed)
    assert (sha256, data) == (hashlib.sha256(wheel.read_bytes()).hexdigest(), wheel.read_bytes())
    assert (await store.get(f".nightproxy/trash/{stray_sha}"))[0] == stray


async def test_a_listed_file_overwritten_without_a_record_is_served_from_the_trash(
    feed: HostedFeed, tmp_path: Path
) -> None:
    """A replacement that died between writing its bytes and its record (its first step put
    the listed bytes in the trash) leaves the listed file downloadable: its own bytes, never
    the unrecorded ones."""
    first = build_wheel(tmp_path / "a", "numpy", VERSION, payload_size=1000, seed=1)
    assert await publish(feed, first) is Outcome.CREATED
    sha256 = hashlib.sha256(first.read_bytes()).hexdigest()
    store = _store(feed)
    await store.copy(f"numpy/{NAME}", f".nightproxy/trash/{sha256}")
    await store.put(f"numpy/{NAME}", b"bytes of a replacement that died")
    assert await served(feed) == (sha256, first.read_bytes())


async def test_a_restore_never_writes_over_an_upload_of_the_name_in_flight(
    feed: HostedFeed, tmp_path: Path
) -> None:
    """A deleted file is not restored over bytes another upload just wrote under its name
    (their record not yet written): the restore is refused and those bytes stay."""
    wheel = build_wheel(tmp_path / "w", "numpy", VERSION, payload_size=1000)
    assert await publish(feed, wheel) is Outcome.CREATED
    storage = feed.storage
    [listed] = await storage.live()
    await storage.trash([listed], REASON_MANUAL, "by the test", datetime.now(UTC))
    store = _store(feed)
    await store.put(f"numpy/{NAME}", b"bytes of an upload in flight")
    with pytest.raises(RestoreConflictError, match="being uploaded"):
        await storage.restore(await storage.trashed(), datetime.now(UTC))
    assert (await store.get(f"numpy/{NAME}"))[0] == b"bytes of an upload in flight"
    assert await storage.live() == []


async def test_a_file_deleted_and_uploaded_again_keeps_its_bytes_when_settled(
    feed: HostedFeed, tmp_path: Path
) -> None:
    """A file deleted, then uploaded again with the same bytes (the same ETag), is not
    removed by the clean-up of the deleted record's named object."""
    wheel = build_wheel(tmp_path / "w", "numpy", VERSION, payload_size=1000)
    assert await publish(feed, wheel) is Outcome.CREATED
    storage = feed.storage
    [listed] = await storage.live()
    await storage.trash([listed], REASON_MANUAL, "by the test", datetime.now(UTC))
    assert await publish(feed, wheel) is Outcome.CREATED
    await storage.settle()
    assert await served(feed) == (listed.sha256, wheel.read_bytes())


async def test_a_restore_that_failed_after_its_copy_can_be_done_again(
    feed: HostedFeed, tmp_path: Path
) -> None:
    """A restore that copied the bytes back but never wrote its record leaves them under the
    name: restoring again takes them as the file's own, not as an upload in flight."""
    wheel = build_wheel(tmp_path / "w", "numpy", VERSION, payload_size=1000)
    assert await publish(feed, wheel) is Outcome.CREATED
    storage = feed.storage
    [listed] = await storage.live()
    await storage.trash([listed], REASON_MANUAL, "by the test", datetime.now(UTC))
    await storage.settle()  # the deleted record no longer names any object to unlink
    await _store(feed).copy(f".nightproxy/trash/{listed.sha256}", f"numpy/{NAME}")
    restored = await storage.restore(await storage.trashed(), datetime.now(UTC))
    assert [r.sha256 for r in restored] == [listed.sha256]
    assert await served(feed) == (listed.sha256, wheel.read_bytes())


async def test_a_listed_file_whose_name_an_unrecorded_upload_overwrote_can_be_deleted(
    feed: HostedFeed, tmp_path: Path
) -> None:
    """Deleting a listed file whose named object an upload that recorded nothing wrote over
    (after putting the listed bytes in the trash) works, and leaves that object alone."""
    wheel = build_wheel(tmp_path / "w", "numpy", VERSION, payload_size=1000)
    assert await publish(feed, wheel) is Outcome.CREATED
    storage = feed.storage
    [listed] = await storage.live()
    store = _store(feed)
    await store.copy(f"numpy/{NAME}", f".nightproxy/trash/{listed.sha256}")
    await store.put(f"numpy/{NAME}", b"bytes of a replacement that died")
    done = await storage.trash([listed], REASON_MANUAL, "by the test", datetime.now(UTC))
    assert [r.sha256 for r in done] == [listed.sha256]
    assert await storage.live() == []
    assert (await store.get(f"numpy/{NAME}"))[0] == b"bytes of a replacement that died"
