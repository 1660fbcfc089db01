"""The cache under faults: out of descriptors, bit rot, a full disk, stalled upstreams.

Real proxy app, real fake upstream on loopback. Faults the machine cannot be made to have on
demand are injected at the system call that meets them (``os.open``, ``os.pwritev``), for the
cache's own files only; bytes rot for real, on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.server import keys
from nightproxy.server.app import create_app
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel, sha256_file

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
KIB = 1024


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


async def file_url(http: aiohttp.ClientSession, proxy: TestServer) -> URL:
    page = proxy.make_url("/simple/demo/")
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        (entry,) = json.loads(await resp.read())["files"]
    return page.join(URL(entry["url"]))


async def fetch(http: aiohttp.ClientSession, url: URL) -> tuple[int, str, bytes, dict[str, str]]:
    async with http.get(url) as resp:
        return (
            resp.status,
            resp.headers.get("X-Nightproxy-Cache", ""),
            await resp.read(),
            dict(resp.headers),
        )


def gets(fake: FakeSimpleIndex, wheel: Path) -> int:
    return fake.count("GET", f"/files/{wheel.name}")


@pytest.fixture
async def upstream(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """One 256 KiB wheel, streamed in 16 KiB chunks (``slow`` is tuned per test)."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=256 * KIB)
    fake.add_file("demo", wheel)
    fake.slow_file.add(wheel.name)
    fake.slow.chunk_size = 16 * KIB
    fake.slow.delay = 0
    return await start_fake(fake)


@pytest.fixture
def wheel(upstream: FakeSimpleIndex) -> Path:
    (entry,) = upstream.projects["demo"].files.values()
    return entry.path


def config_for(make_config: MakeConfig, fake: FakeSimpleIndex, **cache: Any) -> Any:
    return make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}], cache=cache)


def in_blobs(path: object) -> bool:
    return f"{os.sep}blobs{os.sep}" in os.fspath(path)  # type: ignore[arg-type]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# -- out of descriptors -----------------------------------------------------------------------


async def test_no_descriptor_to_pin_a_cached_file_is_503_and_the_file_stays_cached(
    upstream: FakeSimpleIndex,
    wheel: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EMFILE opening a cached blob: 503 with Retry-After (never 404 or 500), and once
    descriptors are back the file is a hit, not downloaded again."""
    proxy = await start_proxy(config_for(make_config, upstream))
    url = await file_url(http, proxy)
    assert (await fetch(http, url))[:2] == (200, "miss")
    real_open = os.open

    def no_descriptors(path: Any, *args: Any, **kwargs: Any) -> int:
        if in_blobs(path):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_descriptors)
    status, _cache, _body, headers = await fetch(http, url)
    monkeypatch.undo()
    assert status == 503
    assert "Retry-After" in headers
    assert (await fetch(http, url))[:3] == (200, "hit", wheel.read_bytes())
    assert gets(upstream, wheel) == 1


async def test_no_descriptor_to_send_a_cached_file_is_503_and_the_file_stays_cached(
    upstream: FakeSimpleIndex,
    wheel: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EMFILE when the response opens the cached blob to send it: 503, and the cache keeps
    the file (the next request is a hit without an upstream GET)."""
    proxy = await start_proxy(config_for(make_config, upstream))
    url = await file_url(http, proxy)
    await fetch(http, url)
    real_open = pathlib.Path.open

    def no_descriptors(self: pathlib.Path, *args: Any, **kwargs: Any) -> Any:
        if in_blobs(self):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", no_descriptors)
    status, _cache, _body, headers = await fetch(http, url)
    monkeypatch.undo()
    assert status == 503
    assert "Retry-After" in headers
    assert (await fetch(http, url))[:3] == (200, "hit", wheel.read_bytes())
    assert gets(upstream, wheel) == 1


# -- bit rot ----------------------------------------------------------------------------------


def rot(path: Path) -> None:
    """Flip one bit in the middle of a file, in place."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


async def test_a_rotten_blob_is_caught_when_a_process_first_serves_it(
    upstream: FakeSimpleIndex,
    wheel: Path,
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cached blob with one bit flipped while the server was down is never served: the
    restarted server checks it on first use, evicts it, counts it, and the client gets the
    file downloaded again."""
    config = config_for(make_config, upstream)
    first = TestServer(create_app(config))
    await first.start_server()
    url = await file_url(http, first)
    await fetch(http, url)
    await first.close()
    rot(tmp_path / "cache" / "blobs" / sha256_file(wheel)[:2] / sha256_file(wheel))

    second = TestServer(create_app(config))
    await second.start_server()
    try:
        url = await file_url(http, second)
        with caplog.at_level(logging.ERROR, logger="nightproxy"):
            status, cache, body, _headers = await fetch(http, url)
        assert (status, cache) == (200, "miss")
        assert hashlib.sha256(body).hexdigest() == sha256_file(wheel)
        assert any("bit rot" in r.getMessage() for r in caplog.records)
        async with http.get(second.make_url("/metrics")) as resp:
            assert metric(await resp.text(), "nightproxy_cache_corrupt_files_total") == 1
    finally:
        await second.close()
    assert gets(upstream, wheel) == 2


async def test_the_scrub_evicts_a_blob_that_rotted_while_served(
    upstream: FakeSimpleIndex,
    wheel: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A blob that rots under a running server (which verified it when it was downloaded) is
    found by the background scrub, evicted, and downloaded again on the next request."""
    proxy = await start_proxy(config_for(make_config, upstream))
    url = await file_url(http, proxy)
    await fetch(http, url)
    store = proxy.app[keys.STORE]
    sha = sha256_file(wheel)
    rot(store.path_for(sha))
    scrub = proxy.app[keys.CACHE].scrub(rate=1024**3)
    scrub.recheck_after = 0.0  # everything is due
    async with asyncio.timeout(WAIT):
        while await scrub.step():
            pass
    assert not store.has(sha)
    assert not store.path_for(sha).exists()
    status, cache, body, _headers = await fetch(http, url)
    assert (status, cache, body) == (200, "miss", wheel.read_bytes())
    assert proxy.app[keys.CACHE].corrupt_blobs == 1


async def test_cache_verify_checks_everything_and_evicts_what_rotted(
    upstream: FakeSimpleIndex,
    wheel: Path,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """``nightproxy cache verify`` reads every cached file: the rotten one is named, evicted,
    and the command exits 1; the sound one stays."""
    other = build_wheel(wheelhouse, "other", "1.0", payload_size=32 * KIB)
    upstream.add_file("other", other)
    proxy = await start_proxy(config_for(make_config, upstream))
    await fetch(http, await file_url(http, proxy))
    page = proxy.make_url("/simple/other/")
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        (entry,) = json.loads(await resp.read())["files"]
    await fetch(http, page.join(URL(entry["url"])))
    await proxy.close()
    cache = tmp_path / "cache"
    rot(cache / "blobs" / sha256_file(wheel)[:2] / sha256_file(wheel))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nightproxy",
        "cache",
        "verify",
        "--cache-dir",
        str(cache),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err.decode()
    assert wheel.name in out.decode()
    assert "checked 2 files" in out.decode()
    assert not (cache / "blobs" / sha256_file(wheel)[:2] / sha256_file(wheel)).exists()
    assert (cache / "blobs" / sha256_file(other)[:2] / sha256_file(other)).exists()


# -- a full disk ------------------------------------------------------------------------------


@contextlib.contextmanager
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Writes to downloads' temporary files fail with ENOSPC until the block ends."""
    real = os.pwritev

    def pwritev(fd: int, buffers: Any, offset: int, *args: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".fill"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers, offset, *args)

    with monkeypatch.context() as patch:
        patch.setattr(os, "pwritev", pwritev)
        yield


async def test_a_full_disk_mid_download_never_cuts_the_clients_stream(
    upstream: FakeSimpleIndex,
    wheel: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The disk fills up after the first chunk of a download: the client receiving it still
    gets the whole, exact file; nothing is cached; a new request while the disk is full is
    streamed whole without caching; readiness reports the cache as not writable."""
    upstream.slow.hold = True
    proxy = await start_proxy(config_for(make_config, upstream))
    url = await file_url(http, proxy)
    resp = await http.get(url)
    try:
        first = await asyncio.wait_for(resp.content.readany(), WAIT)
        with full_disk(monkeypatch):
            upstream.slow.release.set()
            rest = await asyncio.wait_for(resp.read(), WAIT)
            assert first + rest == wheel.read_bytes()
            status, cache, body, _headers = await fetch(http, url)
            assert (status, cache, body) == (200, "miss", wheel.read_bytes())
            async with http.get(proxy.make_url("/readyz")) as ready:
                assert (await ready.json())["cache"]["writable"] is False
    finally:
        resp.release()
    store = proxy.app[keys.STORE]
    await wait_until(lambda: proxy.app[keys.FILLS].in_flight == 0, "downloads ended")
    assert not store.has(sha256_file(wheel))
    assert list((tmp_path / "cache" / "blobs").rglob("*.whl")) == []
    assert gets(upstream, wheel) == 2


# -- stalled upstreams ------------------------------------------------------------------------


async def test_a_download_below_the_rate_floor_is_abandoned(
    upstream: FakeSimpleIndex,
    wheel: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """An upstream trickling far below cache.fill_min_rate for cache.fill_stall_timeout: the
    download is given up (the client's transfer breaks off, nothing is cached) and counted."""
    upstream.slow.chunk_size = 256
    upstream.slow.delay = 0.1
    proxy = await start_proxy(
        config_for(make_config, upstream, fill_min_rate="64KiB", fill_stall_timeout="1s")
    )
    url = await file_url(http, proxy)
    async with http.get(url) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), WAIT)
    await wait_until(lambda: proxy.app[keys.FILLS].in_flight == 0, "download abandoned")
    assert proxy.app[keys.FILLS].stalls == 1
    assert not proxy.app[keys.STORE].has(sha256_file(wheel))


async def test_a_download_that_caches_nothing_stops_when_its_last_client_leaves(
    upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A file larger than the whole budget (streamed, not cached) whose only client hangs up
    mid-body: the download stops at once instead of running on (the upstream here would hold
    it open for good)."""
    upstream.slow.hold = True
    proxy = await start_proxy(config_for(make_config, upstream, max_size="64KiB"))
    url = await file_url(http, proxy)
    resp = await http.get(url)
    await asyncio.wait_for(resp.content.readany(), WAIT)
    assert proxy.app[keys.FILLS].in_flight == 1
    resp.close()
    await wait_until(lambda: proxy.app[keys.FILLS].in_flight == 0, "download stopped")


async def test_a_new_client_never_joins_a_stalled_download(
    upstream: FakeSimpleIndex,
    wheel: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A client arriving while the running download is below the rate floor gets a download
    of its own (a second upstream GET), and both clients get the exact file."""
    upstream.slow.chunk_size = 1 * KIB
    upstream.slow.delay = 0.1
    proxy = await start_proxy(
        config_for(make_config, upstream, fill_min_rate="64KiB", fill_stall_timeout="4s")
    )
    fills = proxy.app[keys.FILLS]
    url = await file_url(http, proxy)
    early = asyncio.ensure_future(fetch(http, url))
    await wait_until(lambda: fills.in_flight == 1, "download started")
    (running,) = [fills.get(key) for key in [url.parts[-2]]]
    assert running is not None
    await wait_until(lambda: not fills.joinable(running), "download found stalled")
    upstream.slow.delay = 0  # the feed recovers
    late = await fetch(http, url)
    assert late[0] == 200
    assert late[2] == wheel.read_bytes()
    status, _cache, body, _headers = await asyncio.wait_for(early, WAIT)
    assert (status, body) == (200, wheel.read_bytes())
    assert gets(upstream, wheel) == 2
