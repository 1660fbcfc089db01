"""The cache service through the real proxy: ranges joining a download, events, admission.

Real proxy app, real fake upstream on loopback; the upstream holds the rest of its one wheel
after the first chunk until the test releases it, so "answered before the download ended" is
a fact about order, not about timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.cache.service import NoRoomError, Verified
from nightproxy.server import keys
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel, sha256_file

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed


@pytest.fixture
async def held(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """An upstream whose one wheel (256 KiB of payload) stalls after its first 64 KiB."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=256 * 1024)
    fake.add_file("demo", wheel)
    fake.slow_file.add(wheel.name)
    fake.slow.chunk_size = 64 * 1024
    fake.slow.delay = 0
    fake.slow.hold = True
    return await start_fake(fake)


@pytest.fixture
def wheel(held: FakeSimpleIndex) -> Path:
    (entry,) = held.projects["demo"].files.values()
    return entry.path


@pytest.fixture
async def proxy(
    held: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    return await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(held)}])
    )


@pytest.fixture
async def url(http: aiohttp.ClientSession, proxy: TestServer) -> URL:
    page = proxy.make_url("/simple/demo/")
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        (entry,) = json.loads(await resp.read())["files"]
    return page.join(URL(entry["url"]))


def gets(fake: FakeSimpleIndex, wheel: Path) -> int:
    return fake.count("GET", f"/files/{wheel.name}")


async def test_range_on_a_cold_file_is_answered_from_the_running_download(
    held: FakeSimpleIndex, wheel: Path, url: URL, http: aiohttp.ClientSession
) -> None:
    """A Range within the bytes already downloaded is answered (206) while the upstream still
    holds the rest; a range reaching the last byte waits for the verified end; one GET."""
    data = wheel.read_bytes()
    async with asyncio.timeout(WAIT):
        async with http.get(url, headers={"Range": "bytes=100-4195"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 100-4195/{len(data)}"
            assert await resp.read() == data[100:4196]
        assert not held.slow.release.is_set()
        tail = asyncio.ensure_future(http.get(url, headers={"Range": "bytes=-22"}))
        await asyncio.sleep(0.2)
        assert not tail.done(), "the last byte went out before the file was verified"
        held.slow.release.set()
        async with await tail as resp:
            assert resp.status == 206
            assert await resp.read() == data[-22:]
    assert gets(held, wheel) == 1


async def test_unsatisfiable_range_on_a_cold_file_is_416(
    held: FakeSimpleIndex, wheel: Path, url: URL, http: aiohttp.ClientSession
) -> None:
    """A range starting past the end of a cold file: 416 with the file's length."""
    size = wheel.stat().st_size
    async with asyncio.timeout(WAIT):
        async with http.get(url, headers={"Range": f"bytes={size + 10}-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{size}"
    held.slow.release.set()


async def test_a_verified_download_is_announced_to_subscribers(
    held: FakeSimpleIndex, wheel: Path, url: URL, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """Subscribers hear of a file once it is verified and cached: its key, digest and name."""
    heard: list[Verified] = []
    proxy.app[keys.CACHE].subscribe(heard.append)
    held.slow.release.set()
    async with http.get(url) as resp:
        assert await resp.read() == wheel.read_bytes()
    async with asyncio.timeout(WAIT):
        while not heard:
            await asyncio.sleep(0.01)
    sha = sha256_file(wheel)
    assert heard == [Verified(sha, sha, wheel.name)]


async def test_admit_makes_room_and_records_the_key(
    held: FakeSimpleIndex, proxy: TestServer, tmp_path: Path
) -> None:
    """``admit`` of a verified file evicts what it must and answers for its key at once;
    when only pinned blobs could make room it refuses and leaves nothing behind."""
    cache = proxy.app[keys.CACHE]
    store = cache.store
    store.max_size = 1000
    blobs = []
    for n in range(3):
        data = bytes([n]) * 400
        tmp = tmp_path / f"b{n}"
        tmp.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        await cache.admit(
            tmp, sha, f"m:key{n}", filename=f"b{n}-1.0-py3-none-any.whl", upstream="u"
        )
        blobs.append(sha)
    assert store.resolve("m:key2") == blobs[2]
    assert not store.has(blobs[0]), "the least recently used blob made room"
    pinned = [await cache.open_blob(sha) for sha in blobs[1:]]
    tmp = tmp_path / "big"
    tmp.write_bytes(b"x" * 400)
    with pytest.raises(NoRoomError):
        await cache.admit(
            tmp, hashlib.sha256(b"x" * 400).hexdigest(), "m:big", filename="big", upstream="u"
        )
    assert not tmp.exists()
    for blob in pinned:
        assert blob is not None
        blob.release()
