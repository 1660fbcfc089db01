"""HTTP semantics installers rely on: ETag/304, gzip, Cache-Control, HEAD, Range.

Real proxy app in front of a real fake upstream on loopback; upstream requests are counted
in the fake's log.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.server import keys
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.fakes.simple import TEXT_HTML
from tests.wheels import build_wheel, sha256_file

PAGE = "/simple/demo/"
IDENTITY = {"Accept": PIP_ACCEPT, "Accept-Encoding": "identity"}


@pytest.fixture
async def raw_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that shows bodies exactly as sent (no transparent decompression)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
async def upstream(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """demo 1.0 with 64 KiB of payload."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0", payload_size=64 * 1024))
    return await start_fake(fake)


@pytest.fixture
def wheel(upstream: FakeSimpleIndex) -> Path:
    (entry,) = upstream.projects["demo"].files.values()
    return entry.path


@pytest.fixture
async def proxy(
    upstream: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    return await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(upstream)}])
    )


async def file_url(http: aiohttp.ClientSession, proxy: TestServer) -> URL:
    page = proxy.make_url(PAGE)
    async with http.get(page, headers=IDENTITY) as resp:
        assert resp.status == 200
        (entry,) = json.loads(await resp.read())["files"]
    return page.join(URL(entry["url"]))


def file_gets(fake: FakeSimpleIndex, wheel: Path) -> int:
    return fake.count("GET", f"/files/{wheel.name}")


async def cache_it(http: aiohttp.ClientSession, url: URL, wheel: Path) -> None:
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == wheel.read_bytes()


# -- pages ----------------------------------------------------------------------------------


async def test_page_if_none_match_is_304(
    raw_http: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """Sending back the page's ETag gets a 304 with the same ETag and no body."""
    async with raw_http.get(proxy.make_url(PAGE), headers=IDENTITY) as resp:
        assert resp.status == 200
        etag = resp.headers["ETag"]
    async with raw_http.get(
        proxy.make_url(PAGE), headers={**IDENTITY, "If-None-Match": etag}
    ) as resp:
        assert resp.status == 304
        assert resp.headers["ETag"] == etag
        assert await resp.read() == b""


async def test_page_other_etag_is_200(raw_http: aiohttp.ClientSession, proxy: TestServer) -> None:
    """A validator that does not match gets the full page."""
    async with raw_http.get(
        proxy.make_url(PAGE), headers={**IDENTITY, "If-None-Match": '"not-the-etag"'}
    ) as resp:
        assert resp.status == 200
        assert json.loads(await resp.read())["name"] == "demo"


async def test_page_gzip_when_asked(raw_http: aiohttp.ClientSession, proxy: TestServer) -> None:
    """Accept-Encoding: gzip gives a gzip body that decodes to the identity page, under its
    own ETag."""
    async with raw_http.get(proxy.make_url(PAGE), headers=IDENTITY) as resp:
        plain = await resp.read()
        plain_etag = resp.headers["ETag"]
        assert "Content-Encoding" not in resp.headers
    async with raw_http.get(
        proxy.make_url(PAGE), headers={"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip"}
    ) as resp:
        packed = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in resp.headers["Vary"]
        assert resp.headers["ETag"] != plain_etag
    assert packed[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed) == plain


async def test_head_on_page(raw_http: aiohttp.ClientSession, proxy: TestServer) -> None:
    """HEAD on a page: 200, the GET's headers and length, no body."""
    async with raw_http.get(proxy.make_url(PAGE), headers=IDENTITY) as resp:
        body = await resp.read()
        etag, ctype = resp.headers["ETag"], resp.headers["Content-Type"]
    async with raw_http.head(proxy.make_url(PAGE), headers=IDENTITY) as resp:
        assert resp.status == 200
        assert resp.headers["ETag"] == etag
        assert resp.headers["Content-Type"] == ctype
        assert int(resp.headers["Content-Length"]) == len(body)
        assert await resp.read() == b""


async def test_page_cache_control_is_short(
    raw_http: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """Pages carry max-age no longer than the index ttl (default 600 s)."""
    async with raw_http.get(proxy.make_url(PAGE), headers=IDENTITY) as resp:
        control = resp.headers["Cache-Control"]
    assert control.startswith("max-age=")
    assert 0 <= int(control.removeprefix("max-age=")) <= 600


async def test_page_has_last_modified(raw_http: aiohttp.ClientSession, proxy: TestServer) -> None:
    """Pages carry a Last-Modified validator besides their ETag."""
    async with raw_http.get(proxy.make_url(PAGE), headers=IDENTITY) as resp:
        assert "Last-Modified" in resp.headers


# -- files: HEAD ----------------------------------------------------------------------------


async def test_head_on_uncached_file_makes_no_upstream_get(
    raw_http: aiohttp.ClientSession, proxy: TestServer, upstream: FakeSimpleIndex, wheel: Path
) -> None:
    """HEAD of a file not yet cached: its size and Accept-Ranges, and no download at all."""
    url = await file_url(raw_http, proxy)
    async with raw_http.head(url) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == wheel.stat().st_size
        assert resp.headers["Accept-Ranges"] == "bytes"
    assert upstream.count("GET", "/files/") == 0
    assert proxy.app[keys.STORE].file_count == 0
    assert proxy.app[keys.FILLS].in_flight == 0


async def test_head_on_cached_file(
    raw_http: aiohttp.ClientSession, proxy: TestServer, upstream: FakeSimpleIndex, wheel: Path
) -> None:
    """HEAD of a cached file: size, Accept-Ranges, validators, long Cache-Control; no body."""
    url = await file_url(raw_http, proxy)
    await cache_it(raw_http, url, wheel)
    async with raw_http.head(url) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == wheel.stat().st_size
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert "ETag" in resp.headers
        assert "Last-Modified" in resp.headers
        assert "immutable" in resp.headers["Cache-Control"]
        assert await resp.read() == b""
    assert file_gets(upstream, wheel) == 1


class HtmlOnlyIndex(FakeSimpleIndex):
    """A feed that only speaks HTML: its pages give no file sizes."""

    async def _gate(self, request: web.Request) -> str:
        await super()._gate(request)
        return TEXT_HTML


async def test_head_on_uncached_file_of_unknown_size_never_lies_about_length(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    raw_http: aiohttp.ClientSession,
) -> None:
    """Without a size from the index, HEAD may omit Content-Length but never announce a
    wrong one (an empty HEAD response must not claim the wheel is 0 bytes)."""
    fake = HtmlOnlyIndex()
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=4096)
    fake.add_file("demo", wheel)
    await start_fake(fake)
    proxy = await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}])
    )
    url = await file_url(raw_http, proxy)
    async with raw_http.head(url) as resp:
        assert resp.status == 200
        length = resp.headers.get("Content-Length")
    assert length is None or int(length) == wheel.stat().st_size, length
    assert fake.count("GET", "/files/") == 0


# -- files: validators ----------------------------------------------------------------------


async def test_cached_file_if_none_match_is_304(
    raw_http: aiohttp.ClientSession, proxy: TestServer, wheel: Path
) -> None:
    """A cached file's ETag sent back gets a 304 without a body."""
    url = await file_url(raw_http, proxy)
    await cache_it(raw_http, url, wheel)
    async with raw_http.get(url) as resp:
        etag = resp.headers["ETag"]
        await resp.read()
    async with raw_http.get(url, headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
        assert await resp.read() == b""


async def test_file_is_sent_as_is_even_when_gzip_is_accepted(
    raw_http: aiohttp.ClientSession, proxy: TestServer, wheel: Path
) -> None:
    """Files are never content-encoded: the bytes on the wire are the wheel's bytes."""
    url = await file_url(raw_http, proxy)
    for _ in range(2):  # the miss, then the hit
        async with raw_http.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert "Content-Encoding" not in resp.headers
            assert await resp.read() == wheel.read_bytes()


# -- files: Range ---------------------------------------------------------------------------


async def test_range_on_cached_file_is_206_with_content_range(
    raw_http: aiohttp.ClientSession, proxy: TestServer, wheel: Path
) -> None:
    """bytes=0-99 on a cached file: 206, Content-Range bytes 0-99/<size>, the first 100 bytes."""
    url = await file_url(raw_http, proxy)
    await cache_it(raw_http, url, wheel)
    data = wheel.read_bytes()
    async with raw_http.get(url, headers={"Range": "bytes=0-99"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 0-99/{len(data)}"
        assert int(resp.headers["Content-Length"]) == 100
        assert await resp.read() == data[:100]


async def test_suffix_range_on_cached_file(
    raw_http: aiohttp.ClientSession, proxy: TestServer, wheel: Path
) -> None:
    """bytes=-22 (how uv reads a wheel's end-of-central-directory) gives the last 22 bytes."""
    url = await file_url(raw_http, proxy)
    await cache_it(raw_http, url, wheel)
    data = wheel.read_bytes()
    async with raw_http.get(url, headers={"Range": "bytes=-22"}) as resp:
        assert resp.status == 206
        assert (
            resp.headers["Content-Range"] == f"bytes {len(data) - 22}-{len(data) - 1}/{len(data)}"
        )
        assert await resp.read() == data[-22:]


def check_range_answer(status: int, headers: Any, body: bytes, data: bytes) -> None:
    """A correct 206 for bytes=100-199, or a correct 200 with the whole file."""
    assert status in (200, 206), status
    assert int(headers["Content-Length"]) == len(body)
    if status == 206:
        assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert body == data[100:200]
    else:
        assert body == data


async def test_range_on_uncached_file_is_correct(
    raw_http: aiohttp.ClientSession, proxy: TestServer, upstream: FakeSimpleIndex, wheel: Path
) -> None:
    """A Range on a file not yet cached: a right 206 or the whole file, never a wrong length."""
    url = await file_url(raw_http, proxy)
    async with raw_http.get(url, headers={"Range": "bytes=100-199"}) as resp:
        body = await resp.read()
        check_range_answer(resp.status, resp.headers, body, wheel.read_bytes())
    assert file_gets(upstream, wheel) == 1


async def test_range_on_uncached_file_larger_than_budget_is_correct(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    raw_http: aiohttp.ClientSession,
) -> None:
    """A Range on a wheel too big to cache still gets a right 206 or the whole file."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=64 * 1024)
    fake.add_file("demo", wheel)
    await start_fake(fake)
    proxy = await start_proxy(
        make_config(
            [{"name": "main", "kind": "simple", "url": simple_url(fake)}],
            cache={"max_size": 16 * 1024},
        )
    )
    url = await file_url(raw_http, proxy)
    async with raw_http.get(url, headers={"Range": "bytes=100-199"}) as resp:
        body = await resp.read()
        check_range_answer(resp.status, resp.headers, body, wheel.read_bytes())


async def test_range_answer_leaves_the_file_cached_and_verified(
    raw_http: aiohttp.ClientSession, proxy: TestServer, wheel: Path
) -> None:
    """After a Range request on a cold file, the whole verified file is in the cache."""
    url = await file_url(raw_http, proxy)
    async with raw_http.get(url, headers={"Range": "bytes=0-9"}) as resp:
        await resp.read()
    store = proxy.app[keys.STORE]
    sha = sha256_file(wheel)
    # The range is answered as soon as its bytes arrive; the download goes on after it.
    async with asyncio.timeout(20):
        while not store.has(sha):
            await asyncio.sleep(0.01)
    assert store.has(sha)
    assert hashlib.sha256(store.path_for(sha).read_bytes()).hexdigest() == sha
