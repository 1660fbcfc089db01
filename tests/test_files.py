"""File downloads through the proxy: streaming tee, verification, single fill, cache hits.

Real proxy app, real fake upstream on loopback; the large-file memory check runs the real
``nightproxy serve`` in a subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import free_port, nightproxy_serve
from tests.wheels import build_wheel, sha256_file, wheel_filename, wheel_metadata

DEMO = wheel_filename("demo", "1.0")
OTHER = wheel_filename("other", "0.1")
WAIT = 20.0  # upper bound for any single wait; never an assertion about speed


def blob_files(cache_dir: Path) -> list[Path]:
    return [p for p in (cache_dir / "blobs").rglob("*") if p.is_file()]


def tmp_files(cache_dir: Path) -> list[Path]:
    """Leftovers of fills in ``tmp/``."""
    return [p for p in (cache_dir / "tmp").rglob("*") if p.is_file()]


async def file_url(
    http: aiohttp.ClientSession, proxy: TestServer | URL, project: str, filename: str
) -> tuple[URL, dict[str, Any]]:
    """The proxy's absolute URL of ``filename`` and its JSON entry, read from the page."""
    base = proxy if isinstance(proxy, URL) else proxy.make_url("/")
    page = base.join(URL(f"simple/{project}/"))
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200, await resp.text()
        doc = json.loads(await resp.read())
    entry = next(f for f in doc["files"] if f["filename"] == filename)
    return page.join(URL(entry["url"])), entry


async def attempt(http: aiohttp.ClientSession, url: URL) -> tuple[int, bytes, int | None, bool]:
    """(status, body read, announced length, failed) for one download.

    A download failed if the status is an error, the transfer broke off
    (``ClientPayloadError``), or fewer bytes came than Content-Length announced.
    """
    async with http.get(url) as resp:
        try:
            body = await resp.read()
        except aiohttp.ClientPayloadError:
            return resp.status, b"", resp.content_length, True
        short = resp.content_length is not None and len(body) < resp.content_length
        return resp.status, body, resp.content_length, short or resp.status >= 400


async def wait_until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """Where ``make_config`` puts the proxy's cache."""
    return tmp_path / "cache"


@pytest.fixture
async def upstream(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """One upstream: demo 1.0 (with 64 KiB of payload so it spans several chunks), other 0.1."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0", payload_size=64 * 1024))
    fake.add_file("other", build_wheel(wheelhouse, "other", "0.1"))
    fake.slow.chunk_size = 8 * 1024
    fake.slow.delay = 0
    return await start_fake(fake)


@pytest.fixture
async def proxy(
    upstream: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    return await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(upstream)}])
    )


@pytest.fixture
async def fresh_proxy(
    upstream: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    """The proxy with ``index.ttl: 0s``, so every page request sees the upstream's changes."""
    config = make_config(
        [{"name": "main", "kind": "simple", "url": simple_url(upstream)}], index={"ttl": "0s"}
    )
    return await start_proxy(config)


def demo_wheel(upstream: FakeSimpleIndex) -> Path:
    return upstream.projects["demo"].files[DEMO].path


def upstream_gets(upstream: FakeSimpleIndex, filename: str) -> int:
    return upstream.count("GET", f"/files/{filename}")


# -- the happy path -------------------------------------------------------------------------


async def test_download_yields_exact_bytes(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer
) -> None:
    """A file downloaded through the proxy is byte-for-byte the upstream's wheel."""
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    status, body, length, failed = await attempt(http, url)
    assert (status, failed) == (200, False)
    assert hashlib.sha256(body).hexdigest() == sha256_file(demo_wheel(upstream))
    assert length == len(body)


async def test_second_download_is_served_from_cache(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer, cache_dir: Path
) -> None:
    """The second download of a file is a cache hit with no new upstream GET."""
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    await attempt(http, url)
    assert upstream_gets(upstream, DEMO) == 1
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["X-Nightproxy-Cache"] == "hit"
        body = await resp.read()
    assert hashlib.sha256(body).hexdigest() == sha256_file(demo_wheel(upstream))
    assert upstream_gets(upstream, DEMO) == 1
    assert [p.name for p in blob_files(cache_dir)] == [sha256_file(demo_wheel(upstream))]


# -- integrity ------------------------------------------------------------------------------


async def test_hash_mismatch_fails_the_client_download(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer
) -> None:
    """When the bytes do not match the index's sha256 the client sees a failed transfer."""
    upstream.wrong_hash.add(DEMO)
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    status, body, length, failed = await attempt(http, url)
    assert failed, f"status {status}: a complete-looking body of {len(body)}/{length} bytes"


async def test_hash_mismatch_is_logged_as_error(
    http: aiohttp.ClientSession,
    upstream: FakeSimpleIndex,
    proxy: TestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hash mismatch is logged at ERROR, naming the file."""
    upstream.wrong_hash.add(DEMO)
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    with caplog.at_level(logging.ERROR, logger="nightproxy"):
        await attempt(http, url)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(DEMO in m for m in errors), errors


async def test_hash_mismatch_caches_nothing(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer, cache_dir: Path
) -> None:
    """A mismatching download leaves no blob or temporary file, and a retry goes upstream."""
    upstream.wrong_hash.add(DEMO)
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    await attempt(http, url)
    assert blob_files(cache_dir) == []
    assert tmp_files(cache_dir) == []
    _status, _body, _length, failed = await attempt(http, url)
    assert failed
    assert upstream_gets(upstream, DEMO) == 2
    assert blob_files(cache_dir) == []


async def test_after_mismatch_is_fixed_the_file_is_fetched_again(
    http: aiohttp.ClientSession,
    upstream: FakeSimpleIndex,
    fresh_proxy: TestServer,
    cache_dir: Path,
) -> None:
    """Once the upstream advertises the right hash, the file is fetched anew and cached."""
    upstream.wrong_hash.add(DEMO)
    bad_url, _entry = await file_url(http, fresh_proxy, "demo", DEMO)
    await attempt(http, bad_url)
    upstream.wrong_hash.clear()
    good_url, entry = await file_url(http, fresh_proxy, "demo", DEMO)
    assert entry["hashes"]["sha256"] == sha256_file(demo_wheel(upstream))
    status, body, _length, failed = await attempt(http, good_url)
    assert (status, failed) == (200, False)
    assert hashlib.sha256(body).hexdigest() == sha256_file(demo_wheel(upstream))
    assert upstream_gets(upstream, DEMO) == 2
    assert [p.name for p in blob_files(cache_dir)] == [sha256_file(demo_wheel(upstream))]


async def test_truncated_upstream_body_fails_and_caches_nothing(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer, cache_dir: Path
) -> None:
    """An upstream that cuts the body short fails the client's transfer and caches nothing."""
    upstream.truncate.add(DEMO)
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    _status, _body, _length, failed = await attempt(http, url)
    assert failed
    assert blob_files(cache_dir) == []
    # The client may see the cut before the fill has removed its temporary file.
    await wait_until(lambda: not tmp_files(cache_dir), "the partial file removed")
    assert blob_files(cache_dir) == []
    upstream.truncate.clear()
    status, body, _length, failed = await attempt(http, url)
    assert (status, failed) == (200, False)
    assert hashlib.sha256(body).hexdigest() == sha256_file(demo_wheel(upstream))
    assert upstream_gets(upstream, DEMO) == 2


# -- one fill, many readers -----------------------------------------------------------------


async def test_concurrent_first_requests_share_one_upstream_get(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer
) -> None:
    """Twenty clients asking for an uncached file at once cause one upstream GET; all get it."""
    upstream.slow_file.add(DEMO)
    upstream.slow.hold = True
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    started = 0

    async def one() -> bytes:
        nonlocal started
        async with http.get(url) as resp:
            assert resp.status == 200
            started += 1
            return await resp.read()

    tasks = [asyncio.create_task(one()) for _ in range(20)]
    try:
        # Every client has its response headers while the upstream still holds the body.
        await wait_until(lambda: started == 20, "all 20 clients got response headers")
    finally:
        upstream.slow.release.set()
    bodies = await asyncio.gather(*tasks)
    expected = sha256_file(demo_wheel(upstream))
    assert [hashlib.sha256(b).hexdigest() for b in bodies] == [expected] * 20
    assert upstream_gets(upstream, DEMO) == 1


async def test_a_body_without_length_is_teed_chunked_and_cached(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer, cache_dir: Path
) -> None:
    """An upstream answering with chunked encoding (no Content-Length): clients joining the
    download get the whole verified file, chunked too, and it is cached once."""
    upstream.chunked.add(DEMO)
    upstream.slow_file.add(DEMO)
    upstream.slow.hold = True
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    expected = sha256_file(demo_wheel(upstream))

    async def one() -> tuple[str | None, bytes]:
        async with http.get(url) as resp:
            assert resp.status == 200
            return resp.headers.get("Transfer-Encoding"), await resp.read()

    tasks = [asyncio.create_task(one()) for _ in range(3)]
    await wait_until(lambda: upstream_gets(upstream, DEMO) == 1, "the upstream GET started")
    upstream.slow.release.set()
    results = await asyncio.gather(*tasks)
    assert [(te, hashlib.sha256(body).hexdigest()) for te, body in results] == [
        ("chunked", expected)
    ] * 3
    assert [p.name for p in blob_files(cache_dir)] == [expected]
    assert upstream_gets(upstream, DEMO) == 1


async def test_first_bytes_arrive_before_upstream_finishes(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer
) -> None:
    """The client receives the first bytes while the upstream is still holding the rest."""
    upstream.slow_file.add(DEMO)
    upstream.slow.hold = True
    wheel = demo_wheel(upstream).read_bytes()
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    try:
        async with http.get(url) as resp:
            assert resp.status == 200
            async with asyncio.timeout(WAIT):
                first = await resp.content.readany()
            assert not upstream.slow.release.is_set()
            assert 0 < len(first) < len(wheel)
            assert first == wheel[: len(first)]
            upstream.slow.release.set()
            rest = await resp.read()
    finally:
        upstream.slow.release.set()
    assert first + rest == wheel


async def test_client_disconnect_does_not_cancel_the_fill(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer, cache_dir: Path
) -> None:
    """One of two clients hanging up mid-download does not stop the other or the caching."""
    upstream.slow_file.add(DEMO)
    upstream.slow.hold = True
    wheel = demo_wheel(upstream).read_bytes()
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    try:
        async with aiohttp.ClientSession() as quitter_session:
            quitter = await quitter_session.get(url)
            stayer = await http.get(url)
            async with asyncio.timeout(WAIT):
                assert await quitter.content.readany()
                first = await stayer.content.readany()
            quitter.close()
        upstream.slow.release.set()
        rest = await stayer.read()
        stayer.release()
    finally:
        upstream.slow.release.set()
    assert first + rest == wheel
    assert upstream_gets(upstream, DEMO) == 1
    async with http.get(url) as resp:
        assert resp.headers["X-Nightproxy-Cache"] == "hit"
        assert await resp.read() == wheel
    assert upstream_gets(upstream, DEMO) == 1
    assert [p.name for p in blob_files(cache_dir)] == [hashlib.sha256(wheel).hexdigest()]


# -- metadata -------------------------------------------------------------------------------


async def test_metadata_matches_advertised_hash(
    http: aiohttp.ClientSession, upstream: FakeSimpleIndex, proxy: TestServer
) -> None:
    """``<file>.metadata`` returns the wheel's METADATA, whose sha256 the page advertises."""
    url, entry = await file_url(http, proxy, "demo", DEMO)
    advertised = entry["core-metadata"]["sha256"]
    async with http.get(url.with_name(url.name + ".metadata")) as resp:
        assert resp.status == 200
        body = await resp.read()
    assert body == wheel_metadata(demo_wheel(upstream))
    assert hashlib.sha256(body).hexdigest() == advertised


# -- URLs that name nothing -----------------------------------------------------------------


async def test_key_of_another_project_uncached_is_404(
    http: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """A file URL under ``demo`` with the key of another project's file is a 404."""
    other_url, _entry = await file_url(http, proxy, "other", OTHER)
    other_key = other_url.parts[-2]
    await file_url(http, proxy, "demo", DEMO)
    async with http.get(proxy.make_url(f"/files/demo/{other_key}/{DEMO}")) as resp:
        assert resp.status == 404


async def test_key_of_another_project_cached_is_404(
    http: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """Even once cached, another project's file is not served under ``demo``'s URL."""
    other_url, _entry = await file_url(http, proxy, "other", OTHER)
    await attempt(http, other_url)
    other_key = other_url.parts[-2]
    async with http.get(proxy.make_url(f"/files/demo/{other_key}/{DEMO}")) as resp:
        assert resp.status == 404


async def test_unknown_key_is_404(http: aiohttp.ClientSession, proxy: TestServer) -> None:
    """A well-formed key that no upstream lists is a 404."""
    async with http.get(proxy.make_url(f"/files/demo/{'0' * 64}/{DEMO}")) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    "tail",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "..%2F..%2Fstate.sqlite",
        "%2E%2E",
        "sub/" + DEMO,
        DEMO + "%2F..%2F..%2F..%2Fstate.sqlite",
        "..%5C..%5Cstate.sqlite",
    ],
)
async def test_path_traversal_is_404(
    http: aiohttp.ClientSession, proxy: TestServer, tail: str
) -> None:
    """Filenames that try to leave their directory, or contain a slash, are 404s."""
    url, _entry = await file_url(http, proxy, "demo", DEMO)
    await attempt(http, url)  # something real is cached next to what they aim at
    key = url.parts[-2]
    raw = URL(f"{proxy.make_url('/')}files/demo/{key}/{tail}", encoded=True)
    async with http.get(raw) as resp:
        body = await resp.read()
        assert resp.status == 404
    assert b"root:" not in body
    assert b"SQLite" not in body


async def test_traversal_in_key_is_404(http: aiohttp.ClientSession, proxy: TestServer) -> None:
    """A key segment that tries to leave the files tree is a 404."""
    raw = URL(f"{proxy.make_url('/')}files/demo/..%2F..%2Fstate.sqlite/{DEMO}", encoded=True)
    async with http.get(raw) as resp:
        body = await resp.read()
        assert resp.status == 404
    assert b"SQLite" not in body


# -- a large file, memory measured in a separate proxy process -------------------------------


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


async def test_large_file_streams_with_bounded_memory(
    http: aiohttp.ClientSession, start_fake: StartFake, tmp_path: Path
) -> None:
    """A 64 MiB wheel streams through intact while the proxy's peak RSS grows far less."""
    big = build_wheel(tmp_path / "big", "big", "1.0", payload_size=64 * 1024 * 1024)
    small = build_wheel(tmp_path / "small", "big", "0.1", payload_size=64 * 1024)
    fake = FakeSimpleIndex()
    fake.add_file("big", big)
    fake.add_file("big", small)
    await start_fake(fake)
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"logging:\n  level: warning\n"
        f"upstreams:\n  - name: main\n    kind: simple\n    url: {simple_url(fake)}\n"
    )
    port = free_port()
    async with nightproxy_serve(["--config", str(config)], port) as proc:
        base = URL(f"http://127.0.0.1:{port}/")
        # Warm up: imports, connection pools, thread pool, first page render.
        small_url, _entry = await file_url(http, base, "big", small.name)
        await attempt(http, small_url)
        before = _peak_rss_kib(proc.pid)
        big_url, _entry = await file_url(http, base, "big", big.name)
        digest = hashlib.sha256()
        received = 0
        async with http.get(big_url) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(1 << 20):
                digest.update(chunk)
                received += len(chunk)
        after = _peak_rss_kib(proc.pid)
    assert received == big.stat().st_size
    assert digest.hexdigest() == sha256_file(big)
    growth_mib = (after - before) / 1024
    assert growth_mib < 32, f"proxy peak RSS grew {growth_mib:.1f} MiB for a 64 MiB file"
