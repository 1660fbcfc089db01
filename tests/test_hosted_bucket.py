"""A hosted feed stored in a bucket, against a real S3 server (SeaweedFS).

Two ``BucketStorage`` objects over one prefix stand for two servers sharing the bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import yaml
from packaging.utils import canonicalize_name

from nightproxy.config import S3Options, UpstreamConfig
from nightproxy.hosted.bucket import BucketStorage
from nightproxy.hosted.records import NewFile
from nightproxy.hosted.storage import REASON_MANUAL, Outcome, Staged
from nightproxy.model import ProjectPage
from nightproxy.objectstore import ObjectStore, StoreSettings
from nightproxy.upstreams.s3 import S3Upstream
from tests.hosted_support import NUMPY_TOKEN, sha256_line, twine_upload
from tests.seaweed import SeaweedServer
from tests.support import free_port, installed_version, nightproxy_serve, pip_install
from tests.wheels import build_wheel

NOW = datetime(2026, 3, 1, tzinfo=UTC)
PROJECT = canonicalize_name("demo")
NAME = "demo-1.0.dev0-py3-none-any.whl"


def settings(seaweed: SeaweedServer, prefix: str) -> StoreSettings:
    return StoreSettings(
        bucket=seaweed.bucket,
        prefix=prefix,
        endpoint=seaweed.endpoint,
        region=seaweed.region,
        addressing="path",
        access_key_id=seaweed.access_key_id,
        secret_access_key=seaweed.secret_access_key,
    )


@pytest.fixture
async def stores(
    seaweed: SeaweedServer, s3_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[BucketStorage, BucketStorage]]:
    async with aiohttp.ClientSession() as session:
        made = []
        for n in range(2):
            store = ObjectStore(session, settings(seaweed, s3_prefix))
            storage = BucketStorage(store, tmp_path / f"staging-{n}")
            await storage.open(NOW)
            made.append(storage)
        yield made[0], made[1]
        for storage in made:
            await storage.close()


def new_file(data: bytes, when: datetime = NOW) -> NewFile:
    return NewFile(
        project=PROJECT,
        filename=NAME,
        sha256=hashlib.sha256(data).hexdigest(),
        blake2_256=hashlib.blake2b(data, digest_size=32).hexdigest(),
        size=len(data),
        uploader="demo token 1",
        requires_python=None,
        metadata_sha256=hashlib.sha256(b"meta" + data).hexdigest(),
        upload_time=when,
    )


async def upload(storage: BucketStorage, data: bytes, *, overwrite: bool = False) -> Outcome:
    async with storage.staging() as staged:
        staged.path.write_bytes(data)
        result = await storage.commit(
            Staged(staged.path, b"meta" + data), new_file(data), overwrite=overwrite
        )
    return result.outcome


async def read(storage: BucketStorage) -> bytes:
    [record] = await storage.live()
    async with storage.open_bytes(record) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def test_layout_and_records_shared_by_two_servers(
    stores: tuple[BucketStorage, BucketStorage],
) -> None:
    """A file lands at <prefix><project>/<filename>; the other server lists and reads it;
    the same bytes again change nothing, other bytes are refused."""
    one, two = stores
    assert await upload(one, b"first") is Outcome.CREATED
    info = await one.store.head(f"demo/{NAME}")
    assert info.size == 5
    assert await read(two) == b"first"
    assert await two.read_blob(new_file(b"first").metadata_sha256 or "") == b"metafirst"
    assert await upload(two, b"first") is Outcome.UNCHANGED
    assert await upload(two, b"other") is Outcome.EXISTS
    assert await read(one) == b"first"
    # Another nightproxy can mirror the same prefix read-only as an s3 upstream.
    mirror = S3Upstream(
        UpstreamConfig(
            name="mirror",
            kind="s3",
            url=f"s3://{one.store.settings.bucket}/{one.store.settings.prefix}",
            options=S3Options(
                endpoint=one.store.settings.endpoint,
                addressing="path",
                region=one.store.settings.region,
                access_key_id=one.store.settings.access_key_id,
                secret_access_key=one.store.settings.secret_access_key,
            ),
        ),
        one.store.session,
    )
    page = await mirror.fetch_project(PROJECT)
    assert isinstance(page, ProjectPage)
    assert [f.filename for f in page.files] == [NAME]


async def test_racing_uploads_one_wins(stores: tuple[BucketStorage, BucketStorage]) -> None:
    """Two servers take an upload of one filename with other bytes at once: a conditional put
    lets one win; the other answers that the file exists."""
    one, two = stores
    outcomes = await asyncio.gather(upload(one, b"a" * 100_000), upload(two, b"b" * 100_000))
    assert sorted(o.value for o in outcomes) == ["created", "exists"]
    winner = b"a" if outcomes[0] is Outcome.CREATED else b"b"
    assert await read(one) == winner * 100_000
    assert len(await two.live()) == 1


async def test_overwrite_trash_restore_purge(
    stores: tuple[BucketStorage, BucketStorage],
) -> None:
    """An overwrite keeps the old bytes in the trash (reads of the old record fail, never
    giving new bytes); restore and purge work across servers."""
    one, two = stores
    await upload(one, b"old")
    [old] = await one.live()
    assert await upload(two, b"new", overwrite=True) is Outcome.REPLACED
    assert await read(one) == b"new"
    with pytest.raises(Exception, match="no longer listed"):
        async with one.open_bytes(old):
            pass
    [trashed] = await one.trashed()
    assert (trashed.sha256, trashed.trash_reason) == (old.sha256, "replaced")
    [current] = await two.live()
    await two.trash([current], REASON_MANUAL, "by test", NOW)
    assert await one.live() == []
    restored = await one.restore([r for r in await one.trashed() if r.sha256 == old.sha256], NOW)
    assert [r.sha256 for r in restored] == [old.sha256]
    assert await read(two) == b"old"
    assert await two.purge(await two.trashed(), protect=()) >= 1
    assert await one.trashed() == []
    assert await one.deletions() == {"replaced": 1, "manual": 1}


async def test_orphan_bytes_are_removed_on_open(
    stores: tuple[BucketStorage, BucketStorage], tmp_path: Path
) -> None:
    """Bytes a crashed upload left without a record are removed once old enough, never a
    recorded file."""
    one, _two = stores
    await upload(one, b"kept")
    await one.store.put("demo/demo-0.1.dev0-py3-none-any.whl", b"orphan")
    reopened = BucketStorage(one.store, tmp_path / "staging-3")
    await reopened.open(datetime.now(UTC) + timedelta(hours=2))
    names = [info.key async for info in one.store.list_objects("demo/")]
    assert names == [f"demo/{NAME}"]


async def test_served_through_the_index(
    seaweed: SeaweedServer, s3_prefix: str, tmp_path: Path
) -> None:
    """twine uploads to a bucket-backed feed, and pip installs the file through the index."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cache": {"dir": str(tmp_path / "cache")},
                "upstreams": [
                    {
                        "name": "community",
                        "kind": "hosted",
                        "url": seaweed.url(s3_prefix),
                        "endpoint": seaweed.endpoint,
                        "addressing": "path",
                        "region": seaweed.region,
                        "access_key_id": seaweed.access_key_id,
                        "secret_access_key": seaweed.secret_access_key,
                        "publishers": {"numpy": {"tokens": [sha256_line(NUMPY_TOKEN)]}},
                    }
                ],
            }
        )
    )
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0")
    port = free_port()
    async with nightproxy_serve(["--config", str(config)], port):
        base = f"http://127.0.0.1:{port}"
        status, out = await twine_upload(f"{base}/feeds/community/", [wheel], NUMPY_TOKEN, tmp_path)
        assert status == 0, out
        await pip_install(f"{base}/simple/", tmp_path / "target", tmp_path, "numpy")
    assert installed_version(tmp_path / "target", "numpy") == "2.0.dev0"
