"""The disk budget through the real proxy: LRU and age eviction, restarts, pins, the CLI.

Real proxy app and real fake upstream on loopback sockets; the store is only looked at (and,
to age an entry, touched with an old clock) — never used to short-cut HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.cache.store import CacheStore
from nightproxy.server import keys
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel, sha256_file

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
KIB = 1024
MIB = 1024 * KIB


# -- helpers --------------------------------------------------------------------------------


def blob_files(cache_dir: Path) -> dict[str, int]:
    """{sha256: size} of every blob on disk."""
    found = {}
    blobs = cache_dir / "blobs"
    if blobs.exists():
        for path in blobs.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file():
                    found[path.name] = path.stat().st_size
    return found


def tmp_files(cache_dir: Path) -> list[Path]:
    """Leftovers of fills in ``tmp/``."""
    return [p for p in (cache_dir / "tmp").iterdir() if p.is_file()]


async def wait_until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


async def file_url(http: aiohttp.ClientSession, proxy: TestServer, project: str) -> URL:
    """The proxy's absolute URL of the one file of ``project``, read from the JSON page."""
    page = proxy.make_url(f"/simple/{project}/")
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200, await resp.text()
        doc = json.loads(await resp.read())
    (entry,) = doc["files"]
    return page.join(URL(entry["url"]))


async def download(http: aiohttp.ClientSession, url: URL) -> tuple[bytes, str]:
    """(body, X-Nightproxy-Cache) of a complete, successful download."""
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.read()
        return body, resp.headers.get("X-Nightproxy-Cache", "")


def gets(fake: FakeSimpleIndex, path: Path) -> int:
    return fake.count("GET", f"/files/{path.name}")


def store_of(proxy: TestServer) -> CacheStore:
    return proxy.app[keys.STORE]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """Where ``make_config`` puts the proxy's cache."""
    return tmp_path / "cache"


@pytest.fixture
async def three(start_fake: StartFake, wheelhouse: Path) -> tuple[FakeSimpleIndex, list[Path]]:
    """An upstream with projects p1, p2, p3: one ~32 KiB wheel each."""
    fake = FakeSimpleIndex()
    wheels = []
    for n in (1, 2, 3):
        wheel = build_wheel(wheelhouse, f"p{n}", "1.0", payload_size=32 * KIB, seed=n)
        fake.add_file(f"p{n}", wheel)
        wheels.append(wheel)
    await start_fake(fake)
    return fake, wheels


def budget_for_two(wheels: list[Path]) -> int:
    """Room for any two of the wheels but never all three."""
    sizes = sorted(w.stat().st_size for w in wheels)
    budget = sizes[-1] + sizes[-2]
    assert budget < sum(sizes)
    return budget


def proxy_config(make_config: MakeConfig, fake: FakeSimpleIndex, **cache: Any) -> Any:
    return make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}], cache=cache)


# -- LRU through the proxy ------------------------------------------------------------------


async def test_eviction_through_proxy_follows_last_use(
    three: tuple[FakeSimpleIndex, list[Path]],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """Budget for two: download 1, 2, use 1 again, download 3 — file 2 is the one evicted."""
    fake, wheels = three
    proxy = await start_proxy(proxy_config(make_config, fake, max_size=budget_for_two(wheels)))
    urls = [await file_url(http, proxy, f"p{n}") for n in (1, 2, 3)]
    shas = [sha256_file(w) for w in wheels]

    await download(http, urls[0])
    await download(http, urls[1])
    body, cache = await download(http, urls[0])
    assert cache == "hit"
    assert body == wheels[0].read_bytes()
    body, _ = await download(http, urls[2])
    assert body == wheels[2].read_bytes()

    await wait_until(lambda: shas[2] in blob_files(cache_dir), "third file cached")
    assert set(blob_files(cache_dir)) == {shas[0], shas[2]}
    assert store_of(proxy).used_bytes <= store_of(proxy).max_size
    # The evicted file comes from upstream again; the kept one does not.
    _, cache = await download(http, urls[1])
    assert cache == "miss"
    assert gets(fake, wheels[1]) == 2
    assert gets(fake, wheels[0]) == 1


async def test_budget_never_exceeded_during_concurrent_fills(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """Six slow cold downloads at once, twice: accounted and on-disk bytes stay within budget."""
    fake = FakeSimpleIndex()
    wheels = []
    for n in range(6):
        wheel = build_wheel(wheelhouse, f"c{n}", "1.0", payload_size=48 * KIB, seed=n)
        fake.add_file(f"c{n}", wheel)
        fake.slow_file.add(wheel.name)
        wheels.append(wheel)
    fake.slow.chunk_size = 4 * KIB
    fake.slow.delay = 0.002
    await start_fake(fake)
    size = max(w.stat().st_size for w in wheels)
    budget = int(size * 2.5)
    proxy = await start_proxy(proxy_config(make_config, fake, max_size=budget))
    store = store_of(proxy)
    urls = [await file_url(http, proxy, f"c{n}") for n in range(6)]

    peaks = {"accounted": 0, "disk": 0, "samples": 0}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peaks["accounted"] = max(peaks["accounted"], store.used_bytes)
            peaks["disk"] = max(peaks["disk"], sum(blob_files(cache_dir).values()))
            peaks["samples"] += 1
            await asyncio.sleep(0.001)

    sampler = asyncio.create_task(sample())
    try:
        for _round in range(2):
            bodies = await asyncio.gather(*(download(http, u) for u in urls))
            for (body, _cache), wheel in zip(bodies, wheels, strict=True):
                assert body == wheel.read_bytes()
    finally:
        stop.set()
        await sampler

    assert peaks["samples"] > 10
    assert peaks["accounted"] <= budget, peaks
    assert peaks["disk"] <= budget, peaks
    assert sum(blob_files(cache_dir).values()) == store.used_bytes
    # Twelve downloads of six files into room for two: the cache must have made room by
    # evicting, or (when what would have to go was still being served) streamed uncached.
    assert store.file_count <= 2


async def test_file_larger_than_budget_is_streamed_and_not_cached(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """A wheel bigger than the whole budget reaches the client intact and leaves no file."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(wheelhouse, "huge", "1.0", payload_size=256 * KIB)
    fake.add_file("huge", wheel)
    await start_fake(fake)
    proxy = await start_proxy(proxy_config(make_config, fake, max_size=64 * KIB))
    url = await file_url(http, proxy, "huge")

    body, cache = await download(http, url)
    assert cache == "miss"
    assert hashlib.sha256(body).hexdigest() == sha256_file(wheel)
    await wait_until(lambda: not tmp_files(cache_dir), "no temporary file left")
    assert blob_files(cache_dir) == {}
    assert store_of(proxy).used_bytes == 0
    body, _ = await download(http, url)
    assert body == wheel.read_bytes()
    assert gets(fake, wheel) == 2


async def test_blob_being_served_is_not_evicted(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """A cached wheel stuck mid-send to a slow client is pinned: a new fill that would need
    its room is streamed uncached instead, and the slow client still gets every byte."""
    fake = FakeSimpleIndex()
    big = build_wheel(wheelhouse, "big", "1.0", payload_size=12 * MIB)
    small = build_wheel(wheelhouse, "small", "1.0", payload_size=64 * KIB)
    fake.add_file("big", big)
    fake.add_file("small", small)
    await start_fake(fake)
    budget = big.stat().st_size + small.stat().st_size - 1
    proxy = await start_proxy(proxy_config(make_config, fake, max_size=budget))
    store = store_of(proxy)
    big_url = await file_url(http, proxy, "big")
    small_url = await file_url(http, proxy, "small")
    big_sha = sha256_file(big)
    await download(http, big_url)
    assert store.has(big_sha)

    # A client with a tiny receive window that stops reading after the first bytes: the
    # proxy's sendfile of the 12 MiB blob cannot complete while it stalls.
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (proxy.host, proxy.port))
    reader, writer = await asyncio.open_connection(sock=raw, limit=16 * KIB)
    try:
        writer.write(
            f"GET {big_url.raw_path} HTTP/1.1\r\nHost: {proxy.host}:{proxy.port}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200")
        first = await asyncio.wait_for(reader.readexactly(4096), WAIT)

        body, cache = await download(http, small_url)
        assert body == small.read_bytes()
        assert cache == "miss"
        assert store.has(big_sha), "the blob being served was evicted"
        assert store.path_for(big_sha).is_file()
        assert not store.has(sha256_file(small))

        rest = await asyncio.wait_for(reader.read(), WAIT * 3)
        assert hashlib.sha256(first + rest).hexdigest() == big_sha
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    # Once the slow client is done, the big blob may go to make room.
    await download(http, small_url)
    await wait_until(lambda: store.has(sha256_file(small)), "small file cached")
    assert not store.has(big_sha)


# -- restarts -------------------------------------------------------------------------------


async def test_restart_keeps_recency(
    three: tuple[FakeSimpleIndex, list[Path]],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """Use order recorded before a restart decides eviction after it: 1, 2, use 1, restart,
    download 3 — file 2 goes."""
    fake, wheels = three
    config = proxy_config(make_config, fake, max_size=budget_for_two(wheels))
    shas = [sha256_file(w) for w in wheels]
    first = await start_proxy(config)
    urls = [await file_url(http, first, f"p{n}") for n in (1, 2, 3)]
    await download(http, urls[0])
    await download(http, urls[1])
    _, cache = await download(http, urls[0])
    assert cache == "hit"
    await first.close()

    second = await start_proxy(config)
    assert store_of(second).file_count == 2
    await download(http, await file_url(http, second, "p3"))
    await wait_until(lambda: store_of(second).has(shas[2]), "third file cached")
    assert set(blob_files(cache_dir)) == {shas[0], shas[2]}


async def test_startup_evicts_entries_older_than_max_age(
    three: tuple[FakeSimpleIndex, list[Path]],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """A file last used longer than cache.max_age ago is deleted when the server starts."""
    fake, wheels = three
    config = proxy_config(make_config, fake, max_age="1h")
    shas = [sha256_file(w) for w in wheels[:2]]
    first = await start_proxy(config)
    for n in (1, 2):
        await download(http, await file_url(http, first, f"p{n}"))
    await first.close()

    # Age p1's last use on disk, the way two hours without a request would.
    offline = CacheStore(cache_dir, config.cache.max_size, config.cache.max_age)
    offline.open(clean_tmp=False)
    offline.touch(shas[0], now=time.time() - 2 * 3600)
    offline.close()

    second = await start_proxy(config)
    assert set(blob_files(cache_dir)) == {shas[1]}
    assert not store_of(second).has(shas[0])
    _, cache = await download(http, await file_url(http, second, "p1"))
    assert cache == "miss"
    assert gets(fake, wheels[0]) == 2


async def test_periodic_sweep_evicts_entries_older_than_max_age(
    three: tuple[FakeSimpleIndex, list[Path]],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The maintenance task sweeps a file that ages past max_age while the server runs."""
    monkeypatch.setattr("nightproxy.server.app.MAINTENANCE_INTERVAL", 0.05)
    fake, wheels = three
    proxy = await start_proxy(proxy_config(make_config, fake, max_age="1h"))
    shas = [sha256_file(w) for w in wheels[:2]]
    for n in (1, 2):
        await download(http, await file_url(http, proxy, f"p{n}"))
    store_of(proxy).touch(shas[0], now=time.time() - 2 * 3600)
    await wait_until(lambda: shas[0] not in blob_files(cache_dir), "old file swept")
    assert shas[1] in blob_files(cache_dir)
    assert store_of(proxy).has(shas[1])


async def test_crash_leftovers_in_tmp_are_removed_at_server_start(
    three: tuple[FakeSimpleIndex, list[Path]],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    cache_dir: Path,
) -> None:
    """Partial downloads left in tmp/ by a crashed server are gone once a new one starts."""
    fake, _wheels = three
    (cache_dir / "tmp").mkdir(parents=True)
    leftovers = [cache_dir / "tmp" / f"{'a' * 64}.{n}.123.part" for n in range(3)]
    for path in leftovers:
        path.write_bytes(b"PK\x03\x04 half a wheel")
    await start_proxy(proxy_config(make_config, fake))
    assert not any(p.exists() for p in leftovers)
    assert blob_files(cache_dir) == {}


async def test_blob_deleted_behind_the_server_is_refetched(
    three: tuple[FakeSimpleIndex, list[Path]],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """An external prune removed a cached blob: the next request for it eventually gets
    the right bytes from upstream (never a 500), and it is cached again."""
    fake, wheels = three
    proxy = await start_proxy(proxy_config(make_config, fake))
    store = store_of(proxy)
    url = await file_url(http, proxy, "p1")
    sha = sha256_file(wheels[0])
    await download(http, url)
    store.path_for(sha).unlink()

    statuses = []
    for _attempt in range(2):
        async with http.get(url) as resp:
            statuses.append(resp.status)
            if resp.status == 200:
                assert await resp.read() == wheels[0].read_bytes()
                break
    assert 500 not in statuses
    assert statuses[-1] == 200
    await wait_until(lambda: store.path_for(sha).is_file(), "re-fetched blob cached")
    assert gets(fake, wheels[0]) == 2


async def test_first_request_after_external_prune_gets_the_file(
    three: tuple[FakeSimpleIndex, list[Path]],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """The very request that finds the blob missing is answered with the file, not a 404."""
    fake, wheels = three
    proxy = await start_proxy(proxy_config(make_config, fake))
    url = await file_url(http, proxy, "p1")
    await download(http, url)
    store_of(proxy).path_for(sha256_file(wheels[0])).unlink()
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == wheels[0].read_bytes()


# -- the cache commands ---------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nightproxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def filled(
    three: tuple[FakeSimpleIndex, list[Path]],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> tuple[TestServer, list[Path]]:
    """A running proxy that has downloaded p1 then p2."""
    fake, wheels = three
    proxy = await start_proxy(proxy_config(make_config, fake))
    for n in (1, 2):
        await download(http, await file_url(http, proxy, f"p{n}"))
    return proxy, wheels[:2]


async def test_cache_stats_json_counts_what_was_downloaded(
    filled: tuple[TestServer, list[Path]], cache_dir: Path
) -> None:
    """`cache stats --json` beside the running server: files and bytes of the two wheels."""
    _proxy, wheels = filled
    code, out, err = await run_cli("cache", "stats", "--cache-dir", str(cache_dir), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["files"] == 2
    assert data["bytes"] == sum(w.stat().st_size for w in wheels)
    assert data["oldest_use"] is not None
    assert data["newest_use"] is not None
    assert data["oldest_use"] <= data["newest_use"]


async def test_cache_stats_after_shutdown_reports_budget_from_config(
    filled: tuple[TestServer, list[Path]], tmp_path: Path, cache_dir: Path
) -> None:
    """`cache stats --config` on a stopped server's cache reports the configured budget."""
    proxy, wheels = filled
    await proxy.close()
    config = tmp_path / "np.yaml"
    config.write_text(
        f"cache:\n  dir: {cache_dir}\n  max_size: 5MiB\n"
        "upstreams:\n  - name: main\n    kind: simple\n    url: http://127.0.0.1:9/simple/\n"
    )
    code, out, err = await run_cli("cache", "stats", "--config", str(config), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["files"], data["bytes"]) == (2, sum(w.stat().st_size for w in wheels))
    assert data["budget"] == 5 * MIB


async def test_cache_prune_dry_run_deletes_nothing(
    filled: tuple[TestServer, list[Path]], cache_dir: Path
) -> None:
    """`cache prune --max-size 1 --dry-run` names both files and leaves every byte in place."""
    proxy, wheels = filled
    await proxy.close()
    before = blob_files(cache_dir)
    code, out, err = await run_cli(
        "cache", "prune", "--cache-dir", str(cache_dir), "--max-size", "1", "--dry-run"
    )
    assert code == 0, err
    total = sum(w.stat().st_size for w in wheels)
    assert f"would evict 2 files, {total} bytes" in out
    assert blob_files(cache_dir) == before
    code, out, _ = await run_cli("cache", "stats", "--cache-dir", str(cache_dir), "--json")
    assert json.loads(out)["files"] == 2


async def test_cache_prune_evicts_least_recently_used(
    filled: tuple[TestServer, list[Path]], cache_dir: Path
) -> None:
    """`cache prune --max-size` removes the least recently used file to fit (p1, used first)."""
    proxy, wheels = filled
    await proxy.close()
    keep = wheels[1].stat().st_size
    code, out, err = await run_cli(
        "cache", "prune", "--cache-dir", str(cache_dir), "--max-size", str(keep)
    )
    assert code == 0, err
    assert "evicted 1 files" in out
    assert set(blob_files(cache_dir)) == {sha256_file(wheels[1])}
