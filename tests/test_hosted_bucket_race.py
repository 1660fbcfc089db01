"""Two servers overwriting one filename of a bucket-stored feed at once, against SeaweedFS:
the interleaving of their bytes and record writes is driven by gates on the storage's own
steps, and whatever the order, the file listed is the file served."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from packaging.utils import canonicalize_name

from nightproxy.hosted import bucket
from nightproxy.hosted.auth import FeedAuth
from nightproxy.hosted.bucket import BucketStorage
from nightproxy.hosted.feed import FeedSettings, HostedFeed
from nightproxy.hosted.manifest import Manifest
from nightproxy.hosted.prune import PruneRules
from nightproxy.hosted.storage import Outcome
from nightproxy.objectstore import ObjectStore, PreconditionFailedError
from nightproxy.server import keys
from nightproxy.server.upload import setup_upload_routes
from tests.hosted_support import NUMPY_TOKEN, basic, form_fields, publish, sha256_line
from tests.seaweed import SeaweedServer
from tests.wheels import build_wheel

WAIT = 60.0  # bound on any one wait, so that a wrong gate fails rather than hangs
NUMPY = canonicalize_name("numpy")
VERSION = "2.0.dev0"
NAME = f"numpy-{VERSION}-py3-none-any.whl"


class GatedStorage(BucketStorage):
    """A bucket storage whose first write of a file's bytes and of its record each wait for
    the events the test sets, and which says how far it got."""

    def __init__(self, store: ObjectStore, staging_dir: Path) -> None:
        super().__init__(store, staging_dir)
        self.before_put: list[asyncio.Event] = []
        self.before_record: list[asyncio.Event] = []
        self.at_put = asyncio.Event()
        self.put_done = asyncio.Event()
        #: Set when its conditional write of the bytes lost to the other upload's.
        self.lost_name = asyncio.Event()
        self.record_done = asyncio.Event()
        self.finished = asyncio.Event()

    async def _put_file(self, path: Path, key: str, sha256: str, **conditions: Any) -> str:
        self.at_put.set()
        await _any(self.before_put)
        try:
            etag = await super()._put_file(path, key, sha256, **conditions)
        except PreconditionFailedError:
            self.lost_name.set()
            raise
        self.put_done.set()
        return etag

    async def _write(self, manifest: Manifest, etag: str | None) -> None:
        if not self.record_done.is_set():
            await _any(self.before_record)
        await super()._write(manifest, etag)
        self.record_done.set()


async def _any(events: list[asyncio.Event]) -> None:
    """Wait until any of ``events`` is set (at once when there are none)."""
    if not events:
        return
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        async with asyncio.timeout(WAIT):
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


def rules(project: str) -> PruneRules:
    return PruneRules(dev_max_age=None, keep_latest=5)


@pytest.fixture
async def two_servers(
    seaweed: SeaweedServer, s3_prefix: str, tmp_path: Path
) -> AsyncIterator[list[tuple[HostedFeed, GatedStorage]]]:
    """Two feeds over one bucket prefix, as two servers (or replicas) have, with overwrites."""
    settings = FeedSettings(name="community", rules=rules, overwrite=True, recheck=0)
    auth = FeedAuth({NUMPY: [sha256_line(NUMPY_TOKEN)]})
    async with aiohttp.ClientSession() as session:
        made = []
        for n in range(2):
            store = ObjectStore(session, seaweed.store_settings(s3_prefix, addressing="path"))
            storage = GatedStorage(store, tmp_path / f"staging-{n}")
            feed = HostedFeed(settings, storage, auth)
            await feed.open()
            made.append((feed, storage))
        yield made
        for feed, _storage in made:
            await feed.close()


async def served(feed: HostedFeed) -> tuple[str, bytes]:
    """The one file the feed lists under NAME: its listed sha256, and its bytes as served."""
    [record] = [r for r in (await feed.snapshot(fresh=True)).files() if r.filename == NAME]
    async with feed.storage.open_bytes(record) as chunks:
        return record.sha256, b"".join([chunk async for chunk in chunks])


async def _upload(feed: HostedFeed, storage: GatedStorage, wheel: Path) -> Outcome:
    try:
        return await publish(feed, wheel)
    finally:
        storage.finished.set()


@pytest.mark.parametrize("last_record", ["first_writer", "second_writer"])
async def test_concurrent_overwrites_list_only_bytes_that_are_served(
    two_servers: list[tuple[HostedFeed, GatedStorage]], tmp_path: Path, last_record: str
) -> None:
    """An existing file is overwritten by two servers at once, both having read its record:
    A writes its bytes, B writes its bytes (or loses the name), then the records are written
    in either order. Both uploads answer cleanly, and the one file listed serves exactly the
    bytes of its listed sha256 (before the fix, A's record won over B's bytes: a 412)."""
    (feed_a, a), (feed_b, b) = two_servers
    first = build_wheel(tmp_path / "old", "numpy", VERSION, payload_size=1000, seed=1)
    wheel_a = build_wheel(tmp_path / "a", "numpy", VERSION, payload_size=1000, seed=2)
    wheel_b = build_wheel(tmp_path / "b", "numpy", VERSION, payload_size=1000, seed=3)
    assert len({first.read_bytes(), wheel_a.read_bytes(), wheel_b.read_bytes()}) == 3
    assert await publish(feed_a, first) is Outcome.CREATED
    a.at_put.clear()
    a.put_done.clear()
    a.record_done.clear()
    # Both have read the record of the old bytes before either writes new ones.
    a.before_put = [b.at_put]
    b.before_put = [a.put_done]
    if last_record == "first_writer":
        a.before_record = [b.finished, b.lost_name]
        b.before_record = []
    else:
        # A's record is written first, B's after it.
        b.before_record = [a.record_done]
    async with asyncio.timeout(WAIT):
        outcomes = await asyncio.gather(_upload(feed_a, a, wheel_a), _upload(feed_b, b, wheel_b))
    # B's write lost the name to A's; once A's record was written, B replaced A's upload.
    assert outcomes == [Outcome.REPLACED, Outcome.REPLACED]
    assert b.lost_name.is_set()
    for feed in (feed_a, feed_b):
        sha256, data = await served(feed)
        assert (hashlib.sha256(data).hexdigest(), data) == (sha256, wheel_b.read_bytes())


async def test_an_upload_that_never_gets_the_name_answers_409(
    two_servers: list[tuple[HostedFeed, GatedStorage]],
    aiohttp_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When another server wrote the name's bytes a moment ago and has not written their
    record (it may be about to), an upload of that name answers 409 saying why, and lists
    nothing."""
    monkeypatch.setattr(bucket, "WINNER_WAIT", 0.5)
    feed, storage = two_servers[0]
    await storage.store.put(f"numpy/{NAME}", b"bytes of an upload that was never recorded")
    app = web.Application()
    app[keys.FEEDS] = {"community": feed}
    setup_upload_routes(app)
    server = await aiohttp_server(app)
    wheel = build_wheel(tmp_path / "dist", "numpy", VERSION)
    form = aiohttp.FormData()
    for key, value in form_fields(wheel).items():
        form.add_field(key, value)
    async with aiohttp.ClientSession() as http:
        with wheel.open("rb") as content:
            form.add_field("content", content, filename=wheel.name)
            async with http.post(
                server.make_url("/feeds/community/"), data=form, headers=basic(NUMPY_TOKEN)
            ) as response:
                assert response.status == 409
                assert "another upload of this name is still in progress" in (await response.text())
    assert (await feed.snapshot(fresh=True)).files() == []
