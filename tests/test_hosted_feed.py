"""The hosted feed service over a real local storage, with an injected clock: uploads,
retention per platform, trash, restore, dry runs and trash expiry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from packaging.utils import NormalizedName, canonicalize_name

from nightproxy.config import token_digest
from nightproxy.hosted.auth import FeedAuth, Identity
from nightproxy.hosted.feed import FeedSettings, ForbiddenError, HostedFeed, NotFoundError
from nightproxy.hosted.local import LocalStorage
from nightproxy.hosted.prune import PruneRules
from nightproxy.hosted.records import FileRecord
from nightproxy.hosted.storage import Outcome
from nightproxy.hosted.upload import UploadError
from tests.hosted_support import publish
from tests.wheels import build_sdist, build_wheel

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
LINUX = "cp312-cp312-manylinux_2_17_x86_64"
WINDOWS = "cp312-cp312-win_amd64"
NUMPY = canonicalize_name("numpy")
ADMIN = Identity("admin token 1", admin=True)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, days: float) -> None:
        self.now += timedelta(days=days)


def rules(project: NormalizedName) -> PruneRules:
    if project == "openblas-libs":
        return PruneRules(dev_max_age=None, keep_latest=2)
    return PruneRules(dev_max_age=30 * 86400, keep_latest=2)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def feed(tmp_path: Path, clock: Clock) -> AsyncIterator[HostedFeed]:
    settings = FeedSettings(name="community", rules=rules, trash=7 * 86400, recheck=0)
    auth = FeedAuth({NUMPY: [token_digest("t")]})
    hosted = HostedFeed(settings, LocalStorage(tmp_path / "feed"), auth, clock=clock)
    await hosted.open()
    yield hosted
    await hosted.close()


async def listed(feed: HostedFeed) -> set[str]:
    return {r.filename for r in (await feed.snapshot()).files()}


async def test_upload_is_listed_with_its_facts(
    feed: HostedFeed, tmp_path: Path, clock: Clock
) -> None:
    """An accepted wheel is listed with its upload time, uploader, size and METADATA digest."""
    path = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0+20260301", tag=LINUX)
    token = await feed.auth.identify("t")
    assert token is not None
    assert await publish(feed, path, token) is Outcome.CREATED
    [record] = (await feed.snapshot()).files()
    assert (record.upload_time, record.uploader) == (clock.now, "numpy token 1")
    assert record.size == path.stat().st_size
    assert record.metadata_sha256 is not None
    assert (await feed.snapshot()).digests[record.metadata_sha256] == record


async def test_other_projects_token_is_forbidden(feed: HostedFeed, tmp_path: Path) -> None:
    """A numpy token cannot publish scipy; the refusal names what it may publish."""
    path = build_wheel(tmp_path / "dist", "scipy", "1.0.dev0", tag=LINUX)
    token = await feed.auth.identify("t")
    assert token is not None
    with pytest.raises(ForbiddenError, match="may publish numpy, not scipy"):
        await publish(feed, path, token)
    assert await listed(feed) == set()


async def test_bad_digest_keeps_nothing(feed: HostedFeed, tmp_path: Path) -> None:
    """An upload whose sha256_digest does not match is refused and nothing is listed."""
    path = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    with pytest.raises(UploadError, match="sha256_digest does not match"):
        await publish(feed, path, sha256_digest="0" * 64)
    assert await listed(feed) == set()
    assert list(feed.storage.staging_dir.iterdir()) == []


async def test_retention_per_platform_releases_kept_never_empty(
    feed: HostedFeed, tmp_path: Path, clock: Clock
) -> None:
    """Windows builds that stopped keep their last two; Linux ages out; releases and the
    exempt project stay; a dry run deletes nothing and says why for each file."""
    dist = tmp_path / "dist"
    await publish(feed, build_wheel(dist, "numpy", "1.0", tag=LINUX))
    await publish(feed, build_wheel(dist, "openblas-libs", "0.3.dev0", tag=LINUX))
    for day in range(6):
        await publish(feed, build_wheel(dist, "numpy", f"2.0.dev{day}", tag=LINUX))
        if day < 3:
            await publish(feed, build_wheel(dist, "numpy", f"2.0.dev{day}", tag=WINDOWS))
        await publish(feed, build_sdist(dist, "numpy", f"2.0.dev{day}"))
        clock.advance(10)
    # Now day 60: builds of days 0-2 (60-40 days old) are past 30 days.
    before = await listed(feed)
    planned = await feed.prune(dry_run=True)
    assert await listed(feed) == before
    gone = {d.file.filename for d in planned}
    assert gone == {f"numpy-2.0.dev{day}-{LINUX}.whl" for day in range(3)} | {
        f"numpy-2.0.dev0-{WINDOWS}.whl"
    } | {f"numpy-2.0.dev{day}.tar.gz" for day in range(3)}
    reasons = {d.file.filename: d.reason for d in planned}
    assert reasons[f"numpy-2.0.dev0-{WINDOWS}.whl"].startswith("dev_max_age: 60d old")
    assert f"group {WINDOWS}" in reasons[f"numpy-2.0.dev0-{WINDOWS}.whl"]
    assert {d.file.filename for d in await feed.prune()} == gone
    assert await listed(feed) == before - gone
    assert {"numpy-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"} <= await listed(feed)
    assert await feed.storage.deletions() == {"retention": len(gone)}


async def test_delete_restore_and_trash_expiry(
    feed: HostedFeed, tmp_path: Path, clock: Clock
) -> None:
    """A deleted file is unlisted but restorable; after the trash period its bytes go, except
    while a download holds them."""
    path = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    await publish(feed, path)
    [record] = await feed.delete(ADMIN, NUMPY, version="2.0.dev0")
    assert await listed(feed) == set()
    with pytest.raises(NotFoundError, match=r"numpy has no file of version 2\.0\.dev0 listed"):
        await feed.delete(ADMIN, NUMPY, version="2.0.dev0")
    await feed.restore(NUMPY, filename=path.name)
    assert await listed(feed) == {path.name}
    await feed.delete(ADMIN, NUMPY, filename=path.name)
    clock.advance(8)
    blob = feed.storage.local_path(record.sha256)
    assert blob is not None
    with feed.serving(record.sha256):
        assert await feed.expire_trash() == 0
    assert blob.exists()
    assert await feed.expire_trash() == 2  # the wheel and its METADATA
    assert not blob.exists()
    with pytest.raises(NotFoundError, match="is not in the trash"):
        await feed.restore(NUMPY, filename=path.name)


async def test_delete_needs_rights(feed: HostedFeed, tmp_path: Path) -> None:
    """A token of another project cannot delete; the file stays listed."""
    path = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    await publish(feed, path)
    other = Identity("scipy token 1", projects=frozenset({canonicalize_name("scipy")}))
    with pytest.raises(ForbiddenError, match="may publish scipy, not numpy"):
        await feed.delete(other, NUMPY, filename=path.name)
    assert await listed(feed) == {path.name}


async def test_maintain_prunes_after_an_upload(
    feed: HostedFeed, tmp_path: Path, clock: Clock
) -> None:
    """The maintenance task prunes as soon as an upload lands, not only on its interval."""
    dist = tmp_path / "dist"
    for day in range(3):
        await publish(feed, build_wheel(dist, "numpy", f"2.0.dev{day}", tag=LINUX))
        clock.advance(40)
    task = asyncio.create_task(feed.maintain())
    try:
        await publish(feed, build_wheel(dist, "numpy", "2.0.dev3", tag=LINUX))
        for _ in range(200):
            if len(await listed(feed)) == 2:
                break
            await asyncio.sleep(0.05)
        assert await listed(feed) == {f"numpy-2.0.dev{d}-{LINUX}.whl" for d in (2, 3)}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class GatedStorage(LocalStorage):
    """A local storage whose full listing waits for the test to let it through: a big feed's
    slow re-read, made observable."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()
        self.gate.set()
        self.reading = asyncio.Event()
        #: Holds a look at the feed's generation after it was read.
        self.generation_gate = asyncio.Event()
        self.generation_gate.set()
        self.generation_read = asyncio.Event()

    async def generation(self) -> int:
        generation = await super().generation()
        self.generation_read.set()
        await self.generation_gate.wait()
        return generation

    async def live(self, project: NormalizedName | None = None) -> list[FileRecord]:
        if project is None:
            self.reading.set()
            await self.gate.wait()
        return await super().live(project)


@pytest.fixture
async def two_processes(
    tmp_path: Path, clock: Clock
) -> AsyncIterator[tuple[HostedFeed, GatedStorage, HostedFeed]]:
    """Two feeds over one folder, as two worker processes have; the first's re-reads gated."""
    auth = FeedAuth({NUMPY: [token_digest("t")]})
    gated = GatedStorage(tmp_path / "feed")
    settings = FeedSettings(name="community", rules=rules, recheck=0)
    here = HostedFeed(settings, gated, auth, clock=clock)
    there = HostedFeed(settings, LocalStorage(tmp_path / "feed"), auth, clock=clock)
    await here.open()
    await there.open()
    yield here, gated, there
    gated.gate.set()
    await here.close()
    await there.close()


async def test_pages_do_not_queue_behind_a_slow_re_read(
    two_processes: tuple[HostedFeed, GatedStorage, HostedFeed], tmp_path: Path
) -> None:
    """While one task re-reads a big feed for another process's upload, other listings get
    the previous one at once; the re-read then brings the upload."""
    here, gated, there = two_processes
    before = await here.snapshot()
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    await publish(there, wheel)
    gated.gate.clear()
    gated.reading.clear()
    refresh = asyncio.create_task(here.snapshot())
    await gated.reading.wait()
    async with asyncio.timeout(WAIT):
        assert await here.snapshot() is before
    gated.gate.set()
    assert [r.filename for r in (await refresh).files()] == [
        "numpy-2.0.dev0-cp312-cp312-manylinux_2_17_x86_64.whl"
    ]


async def test_a_listing_after_an_upload_here_waits_for_it(
    two_processes: tuple[HostedFeed, GatedStorage, HostedFeed], tmp_path: Path
) -> None:
    """After an upload through this process, a listing never answers from before it, even
    while a re-read is already under way."""
    here, gated, there = two_processes
    await here.snapshot()
    await publish(there, build_wheel(tmp_path / "dist", "numpy", "1.0.dev0", tag=LINUX))
    gated.gate.clear()
    gated.reading.clear()
    refresh = asyncio.create_task(here.snapshot())
    await gated.reading.wait()
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    assert await publish(here, wheel) is Outcome.CREATED
    listing = asyncio.create_task(here.snapshot())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not listing.done()
    gated.gate.set()
    await refresh
    assert wheel.name in {r.filename for r in (await listing).files()}


async def test_a_listing_during_the_re_read_after_an_upload_here_waits_for_it(
    two_processes: tuple[HostedFeed, GatedStorage, HostedFeed], tmp_path: Path
) -> None:
    """A listing asked while the re-read that follows an upload through this process is under
    way (retention's, say) waits for that re-read: it never answers from before the upload."""
    here, gated, _there = two_processes
    await here.snapshot()
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    assert await publish(here, wheel) is Outcome.CREATED
    gated.gate.clear()
    gated.reading.clear()
    refresh = asyncio.create_task(here.snapshot(fresh=True))
    await gated.reading.wait()
    listing = asyncio.create_task(here.snapshot())
    for _ in range(10):
        await asyncio.sleep(0)
    gated.gate.set()
    await refresh
    assert wheel.name in {r.filename for r in (await listing).files()}


async def test_an_upload_here_during_a_re_read_is_listed_next(tmp_path: Path, clock: Clock) -> None:
    """An upload through this process that lands while a re-read begun before it is under way
    is listed by the next listing, not only after ``recheck`` seconds: the re-read that saw
    the feed without it does not count as having read it."""
    gated = GatedStorage(tmp_path / "feed")
    settings = FeedSettings(name="community", rules=rules, recheck=3600)
    here = HostedFeed(settings, gated, FeedAuth({NUMPY: [token_digest("t")]}), clock=clock)
    await here.open()
    try:
        await here.snapshot()
        gated.generation_gate.clear()
        gated.generation_read.clear()
        refresh = asyncio.create_task(here.snapshot(fresh=True))
        await gated.generation_read.wait()
        wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
        assert await publish(here, wheel) is Outcome.CREATED
        gated.generation_gate.set()
        await refresh
        async with asyncio.timeout(WAIT):
            listing = await here.snapshot()
        assert wheel.name in {r.filename for r in listing.files()}
    finally:
        gated.generation_gate.set()
        await here.close()
