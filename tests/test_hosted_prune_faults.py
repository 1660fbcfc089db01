"""Retention that fails part way leaves a hosted feed consistent, and the next run finishes it.

Real faults only: a local feed's folder made immutable (``chattr +i`` as root, read-only
otherwise), so that removing a link or a blob fails as on a broken disk; a bucket feed's
SeaweedFS killed at an exact point of the prune (right after the first manifest write), seen
through a real forward proxy on the way to it.

Consistent means: every file is listed and served with its bytes, or in the trash with its
bytes (restorable); the folder or bucket names no file the records do not list once the next
run is over; no project is emptied.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from packaging.utils import NormalizedName

from nightproxy.config import token_digest
from nightproxy.hosted.auth import FeedAuth
from nightproxy.hosted.bucket import BucketStorage, trash_key
from nightproxy.hosted.feed import FeedSettings, HostedFeed
from nightproxy.hosted.local import LocalStorage
from nightproxy.hosted.prune import PruneRules
from nightproxy.hosted.records import FileRecord
from nightproxy.objectstore import ObjectStore, StoreError
from tests.conftest import StartFake
from tests.forward_proxy import ForwardProxy
from tests.hosted_support import publish
from tests.seaweed import SeaweedServer
from tests.wheels import build_wheel

LINUX = "cp312-cp312-manylinux_2_17_x86_64"
PROJECTS = ("numpy", "scipy")
#: Dev builds per project, a day apart: retention keeps the newest 2 of each.
BUILDS = 4


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def rules(_project: NormalizedName) -> PruneRules:
    return PruneRules(dev_max_age=30 * 86400, keep_latest=2)


def settings() -> FeedSettings:
    return FeedSettings(name="community", rules=rules, trash=7 * 86400, recheck=0)


def auth() -> FeedAuth:
    return FeedAuth({}, [token_digest("admin-token-for-tests")])


@contextlib.contextmanager
def frozen(folder: Path) -> Iterator[None]:
    """No entry of ``folder`` can be added or removed meanwhile, even by root."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], check=False).returncode:
        pytest.skip("running as root without chattr +i: no way to make a folder immutable")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


async def fill(feed: HostedFeed, clock: Clock, dist: Path) -> dict[str, bytes]:
    """BUILDS dev builds of each project, a day apart, then 60 days pass; every file's bytes."""
    uploaded = {}
    for day in range(BUILDS):
        for project in PROJECTS:
            wheel = build_wheel(dist, project, f"2.0.dev{day}", tag=LINUX)
            await publish(feed, wheel)
            uploaded[wheel.name] = wheel.read_bytes()
        clock.now += timedelta(days=1)
    clock.now += timedelta(days=60)
    return uploaded


async def served(feed: HostedFeed, record: FileRecord) -> bytes:
    async with feed.storage.open_bytes(record) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def check_consistent(feed: HostedFeed, uploaded: dict[str, bytes]) -> set[str]:
    """Every file listed and served whole, or in the trash with its bytes; no project empty.
    The names listed."""
    live = (await feed.snapshot(fresh=True)).files()
    for record in live:
        assert await served(feed, record) == uploaded[record.filename], record.filename
    trashed = await feed.storage.trashed()
    for record in trashed:
        assert hashlib.sha256(await trash_bytes(feed, record)).hexdigest() == record.sha256
    names = {r.filename for r in live}
    assert names | {r.filename for r in trashed} == set(uploaded)
    assert {r.project for r in live} == set(PROJECTS)
    return names


async def trash_bytes(feed: HostedFeed, record: FileRecord) -> bytes:
    storage = feed.storage
    if isinstance(storage, LocalStorage):
        return await asyncio.to_thread(storage.blob(record.sha256).read_bytes)
    assert isinstance(storage, BucketStorage)
    data, _info = await storage.store.get(trash_key(record.sha256))
    return data


def newest_two(uploaded: dict[str, bytes]) -> set[str]:
    return {name for name in uploaded if f"dev{BUILDS - 1}-" in name or f"dev{BUILDS - 2}-" in name}


# -- a local feed ----------------------------------------------------------------------------


@pytest.fixture
async def local_feed(tmp_path: Path) -> AsyncIterator[tuple[HostedFeed, Clock]]:
    clock = Clock()
    feed = HostedFeed(settings(), LocalStorage(tmp_path / "feed"), auth(), clock=clock)
    await feed.open()
    yield feed, clock
    await feed.close()


def named_files(root: Path) -> set[str]:
    return {
        p.name
        for project in PROJECTS
        if (root / project).is_dir()
        for p in (root / project).iterdir()
    }


async def test_local_prune_failing_to_unlink_is_finished_by_the_next_run(
    local_feed: tuple[HostedFeed, Clock], tmp_path: Path
) -> None:
    """When scipy's folder refuses every removal mid-prune, the planned files are in the
    trash and restorable, the rest served; the next run removes the names left behind."""
    feed, clock = local_feed
    uploaded = await fill(feed, clock, tmp_path / "dist")
    root = tmp_path / "feed"
    with frozen(root / "scipy"):
        deleted = await feed.prune()
        assert len(deleted) == 2 * len(PROJECTS)
        assert await check_consistent(feed, uploaded) == newest_two(uploaded)
    assert await feed.prune() == []
    assert named_files(root) == newest_two(uploaded)
    [restored] = await feed.restore(
        NormalizedName("scipy"), filename="scipy-2.0.dev0-" + LINUX + ".whl"
    )
    assert await served(feed, restored) == uploaded[restored.filename]
    assert (root / "scipy" / restored.filename).read_bytes() == uploaded[restored.filename]


async def test_local_trash_expiry_failing_halfway_keeps_what_it_keeps_restorable(
    local_feed: tuple[HostedFeed, Clock], tmp_path: Path
) -> None:
    """When one blob cannot be removed as the trash expires, no file stays in the trash
    without its bytes, and the next run removes that blob."""
    feed, clock = local_feed
    uploaded = await fill(feed, clock, tmp_path / "dist")
    await feed.prune()
    trashed = await feed.storage.trashed()
    clock.now += timedelta(days=8)
    storage = feed.storage
    assert isinstance(storage, LocalStorage)
    stuck = storage.blob(max(r.sha256 for r in trashed))
    with frozen(stuck.parent):
        await feed.expire_trash()
        live = await check_consistent_after_expiry(feed, uploaded)
        assert live == newest_two(uploaded)
        assert stuck.exists()
    await feed.prune()
    assert not stuck.exists()
    assert await feed.storage.trashed() == []


async def check_consistent_after_expiry(feed: HostedFeed, uploaded: dict[str, bytes]) -> set[str]:
    """As ``check_consistent``, for a feed whose trash may have been emptied."""
    live = (await feed.snapshot(fresh=True)).files()
    for record in live:
        assert await served(feed, record) == uploaded[record.filename]
    for record in await feed.storage.trashed():
        assert hashlib.sha256(await trash_bytes(feed, record)).hexdigest() == record.sha256
    assert {r.project for r in live} == set(PROJECTS)
    return {r.filename for r in live}


# -- a bucket feed ---------------------------------------------------------------------------


async def test_bucket_prune_with_the_store_killed_halfway_is_finished_by_the_next_run(
    private_seaweed: SeaweedServer, start_fake: StartFake, tmp_path: Path
) -> None:
    """SeaweedFS killed right after the prune wrote numpy's records: numpy's planned files
    are in the trash and restorable, scipy's all still listed and served; after a restart the
    next run trashes scipy's and removes the names numpy's left in the bucket."""
    proxy = await start_fake(ForwardProxy())
    armed = False

    def kill_after_first_manifest(method: str, target: str) -> None:
        nonlocal armed
        if armed and method == "PUT" and "/.nightproxy/projects/" in target:
            armed = False
            private_seaweed.kill()

    proxy.after = kill_after_first_manifest
    clock = Clock()
    store_settings = private_seaweed.store_settings(
        "feed/", proxy=proxy.base_url, attempts=2, backoff=0.01, max_backoff=0.05
    )
    async with aiohttp.ClientSession() as session:
        store = ObjectStore(session, store_settings)
        feed = HostedFeed(
            settings(), BucketStorage(store, tmp_path / "staging"), auth(), clock=clock
        )
        await feed.open()
        try:
            uploaded = await fill(feed, clock, tmp_path / "dist")
            armed = True
            with contextlib.suppress(StoreError):
                await feed.prune()
            assert not armed, "the prune wrote no manifest"
            await asyncio.to_thread(private_seaweed.start)
            live = await check_consistent(feed, uploaded)
            assert {n for n in live if n.startswith("scipy")} == {
                n for n in uploaded if n.startswith("scipy")
            }
            await feed.prune()
            assert await check_consistent(feed, uploaded) == newest_two(uploaded)
            named = {
                info.key.rsplit("/", 1)[-1]
                for project in PROJECTS
                async for info in store.list_objects(f"{project}/")
            }
            assert named == newest_two(uploaded)
            [restored] = await feed.restore(
                NormalizedName("numpy"), filename="numpy-2.0.dev0-" + LINUX + ".whl"
            )
            await feed.snapshot(fresh=True)
            assert await served(feed, restored) == uploaded[restored.filename]
        finally:
            await feed.close()
