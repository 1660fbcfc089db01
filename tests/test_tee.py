"""One fetch, many readers: the tee of a cold file through the real proxy.

The fake upstream sends the first chunk of the file and then holds the rest until the test
releases it, so "bytes reach the client before the upload finishes" is a fact about order,
not about timing.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.server import keys
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel, sha256_file

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
CLIENTS = 20


async def wait_until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


@pytest.fixture
async def held(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """An upstream whose one wheel (256 KiB of payload) stalls after its first 8 KiB."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=256 * 1024)
    fake.add_file("demo", wheel)
    fake.slow_file.add(wheel.name)
    fake.slow.chunk_size = 8 * 1024
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
        assert resp.status == 200
        (entry,) = json.loads(await resp.read())["files"]
    return page.join(URL(entry["url"]))


def upstream_gets(fake: FakeSimpleIndex, wheel: Path) -> int:
    return fake.count("GET", f"/files/{wheel.name}")


async def first_bytes(resp: aiohttp.ClientResponse) -> bytes:
    assert resp.status == 200
    return await asyncio.wait_for(resp.content.readany(), WAIT)


async def test_twenty_clients_share_one_upstream_get_and_stream_before_it_ends(
    held: FakeSimpleIndex, wheel: Path, url: URL, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """20 concurrent clients of a cold file: every one receives bytes while the upstream is
    still holding the rest, the upstream sees a single GET, and all bodies are exact."""
    expected = wheel.read_bytes()
    responses = await asyncio.gather(*(http.get(url) for _ in range(CLIENTS)))
    try:
        firsts = await asyncio.gather(*(first_bytes(r) for r in responses))
        # Every client has bytes, and the upstream has not been let go yet.
        assert not held.slow.release.is_set()
        assert all(0 < len(b) < len(expected) for b in firsts)
        assert all(expected.startswith(b) for b in firsts)
        assert upstream_gets(held, wheel) == 1

        held.slow.release.set()
        rests = await asyncio.gather(*(asyncio.wait_for(r.read(), WAIT) for r in responses))
    finally:
        for resp in responses:
            resp.release()
    for first, rest in zip(firsts, rests, strict=True):
        assert first + rest == expected
    assert upstream_gets(held, wheel) == 1
    assert proxy.app[keys.STORE].has(sha256_file(wheel))


async def test_disconnecting_client_does_not_stop_the_other(
    held: FakeSimpleIndex, wheel: Path, url: URL, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """One of two clients hangs up mid-download: the other still gets the exact file, the
    file is cached, and the next request is a hit without another upstream GET."""
    expected = wheel.read_bytes()
    leaver = await http.get(url)
    stayer = await http.get(url)
    try:
        await first_bytes(leaver)
        first = await first_bytes(stayer)
        leaver.close()  # drops the connection mid-body
        held.slow.release.set()
        rest = await asyncio.wait_for(stayer.read(), WAIT)
    finally:
        stayer.release()
    assert first + rest == expected

    store = proxy.app[keys.STORE]
    await wait_until(lambda: store.has(sha256_file(wheel)), "file cached")
    async with http.get(url) as resp:
        assert resp.headers["X-Nightproxy-Cache"] == "hit"
        assert await resp.read() == expected
    assert upstream_gets(held, wheel) == 1


async def test_fill_completes_when_its_only_client_hangs_up(
    held: FakeSimpleIndex, wheel: Path, url: URL, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """The fill is owned by the app: with no client left it still finishes and caches."""
    resp = await http.get(url)
    await first_bytes(resp)
    resp.close()
    held.slow.release.set()
    store = proxy.app[keys.STORE]
    await wait_until(lambda: store.has(sha256_file(wheel)), "file cached without a client")
    blob = store.path_for(sha256_file(wheel))
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha256_file(wheel)
    assert upstream_gets(held, wheel) == 1


async def test_late_joiner_gets_the_whole_file_from_the_start(
    held: FakeSimpleIndex, wheel: Path, url: URL, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """A client arriving after the fill has started still receives byte 0 onwards."""
    expected = wheel.read_bytes()
    early = await http.get(url)
    try:
        await first_bytes(early)
        fills = proxy.app[keys.FILLS]
        assert fills.in_flight == 1
        async with http.get(url) as late:
            first = await first_bytes(late)
            assert expected.startswith(first)
            held.slow.release.set()
            assert first + await asyncio.wait_for(late.read(), WAIT) == expected
        await asyncio.wait_for(early.read(), WAIT)
    finally:
        early.release()
    assert upstream_gets(held, wheel) == 1


async def test_followers_get_exact_bytes_where_the_cache_cannot_sendfile(
    held: FakeSimpleIndex,
    wheel: Path,
    url: URL,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a cache file system without ``sendfile`` (the call fails), clients following one
    download are served by positioned reads instead: every body is exact and complete, though
    they all read through descriptors that share one file offset."""

    def no_sendfile(*_args: object) -> int:
        raise OSError(errno.EINVAL, "sendfile not supported here")

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    expected = wheel.read_bytes()
    responses = await asyncio.gather(*(http.get(url) for _ in range(4)))
    try:
        firsts = await asyncio.gather(*(first_bytes(r) for r in responses))
        held.slow.release.set()
        rests = await asyncio.gather(*(asyncio.wait_for(r.read(), WAIT) for r in responses))
    finally:
        for resp in responses:
            resp.release()
    assert [first + rest == expected for first, rest in zip(firsts, rests, strict=True)] == [
        True
    ] * 4
    assert upstream_gets(held, wheel) == 1
