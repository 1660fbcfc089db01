"""Worker processes over one cache directory: one download per file, a shared budget, and a
download taken over when its worker dies.

``nightproxy serve --workers N`` runs as a subprocess; which worker takes a connection is
decided by stopping the others while it is made (``only``). The fake upstream runs in this
test's event loop, counts every GET, and sends the first chunk of the wheel and then holds the
rest until the test releases it, so that every client has asked before the download can end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.conftest import PIP_ACCEPT, StartFake, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import free_port, nightproxy_serve
from tests.test_workers import all_started, children, only, sockets_of, wait_for
from tests.wheels import build_wheel, sha256_file

WAIT = 30.0  # upper bound for any single wait; never an assertion about speed
KIB = 1024


def write_config(tmp_path: Path, fake: FakeSimpleIndex, **cache: object) -> Path:
    config = tmp_path / "nightproxy.yaml"
    extra = "".join(f"  {key}: {value}\n" for key, value in cache.items())
    config.write_text(
        f"cache:\n  dir: {tmp_path / 'cache'}\n{extra}"
        "logging:\n  level: warning\n"
        f"upstreams:\n  - name: main\n    kind: simple\n    url: {simple_url(fake)}\n"
    )
    return config


@contextlib.asynccontextmanager
async def workers(config: Path, count: int) -> AsyncIterator[tuple[URL, list[int]]]:
    """``serve --workers count``, once every worker runs: (its URL, the workers' pids)."""
    port = free_port()
    async with nightproxy_serve(["--config", str(config), "--workers", str(count)], port) as proc:
        await all_started(proc.pid, count, config.parent / "cache")
        yield URL(f"http://127.0.0.1:{port}/"), sorted(children(proc.pid))


async def spread(
    http: aiohttp.ClientSession, url: URL, pids: list[int], per_worker: int
) -> list[asyncio.Future[tuple[int, str, int, bool]]]:
    """``per_worker`` downloads of ``url`` accepted by each worker in turn."""
    clients: list[asyncio.Future[tuple[int, str, int, bool]]] = []
    for pid in pids:
        with only(set(pids), pid):
            before = sockets_of(pid)
            clients += [asyncio.ensure_future(download(http, url)) for _ in range(per_worker)]
            await wait_for(
                lambda p=pid, b=before: sockets_of(p) >= b + per_worker, "connections accepted"
            )
    return clients


async def file_path(http: aiohttp.ClientSession, base: URL, project: str) -> str:
    """The path of the one file of ``project``, as the page links it."""
    page = base.join(URL(f"simple/{project}/"))
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200, await resp.text()
        (entry,) = json.loads(await resp.read())["files"]
    return page.join(URL(entry["url"])).path


def fresh_session() -> aiohttp.ClientSession:
    """A client that opens a new connection per request (so that workers share them)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


def gets(fake: FakeSimpleIndex, wheel: Path) -> int:
    return fake.count("GET", f"/files/{wheel.name}")


async def download(http: aiohttp.ClientSession, url: URL) -> tuple[int, str, int, bool]:
    """(status, sha256 of the body, bytes, whether the transfer completed)."""
    digest = hashlib.sha256()
    size = 0
    try:
        async with http.get(url) as resp:
            async for chunk in resp.content.iter_chunked(64 * KIB):
                digest.update(chunk)
                size += len(chunk)
            complete = resp.content_length is None or size == resp.content_length
            return resp.status, digest.hexdigest(), size, complete
    except aiohttp.ClientError:
        return 0, digest.hexdigest(), size, False


@pytest.fixture
async def held(start_fake: StartFake, wheelhouse: Path) -> tuple[FakeSimpleIndex, Path]:
    """An upstream whose one 2 MiB wheel stalls after its first 256 KiB until released."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=2 * 1024 * KIB)
    fake.add_file("demo", wheel)
    fake.slow_file.add(wheel.name)
    fake.slow.chunk_size = 256 * KIB
    fake.slow.delay = 0
    fake.slow.hold = True
    await start_fake(fake)
    return fake, wheel


@pytest.mark.parametrize("count", [2, 4])
async def test_a_herd_on_one_cold_file_makes_one_upstream_get_across_workers(
    held: tuple[FakeSimpleIndex, Path], tmp_path: Path, count: int
) -> None:
    """32 clients of one cold file, spread evenly over 2 or 4 workers: a single upstream GET
    in all, and every client gets the exact file."""
    fake, wheel = held
    config = write_config(tmp_path, fake)
    async with workers(config, count) as (base, pids), fresh_session() as http:
        url = base.join(URL(await file_path(http, base, "demo")))
        clients = await spread(http, url, pids, 32 // count)
        fake.slow.release.set()
        async with asyncio.timeout(WAIT * 2):
            results = await asyncio.gather(*clients)
    expected = sha256_file(wheel)
    assert [(status, sha, complete) for status, sha, _n, complete in results] == [
        (200, expected, True)
    ] * 32
    assert gets(fake, wheel) == 1


async def owner_of_download(cache: Path) -> int:
    """The pid of the worker recorded as downloading (once one is)."""
    async with asyncio.timeout(WAIT):
        while True:
            with contextlib.closing(sqlite3.connect(cache / "state.sqlite")) as db:
                row = db.execute("SELECT owner FROM fills WHERE state = 'running'").fetchone()
            if row is not None:
                return int(row[0].split("-")[0])
            await asyncio.sleep(0.01)


async def test_a_worker_killed_mid_download_is_taken_over_and_nothing_partial_is_served(
    held: tuple[FakeSimpleIndex, Path], tmp_path: Path
) -> None:
    """SIGKILL to the worker downloading a file, with clients on both workers: the other
    worker resumes the download and its clients get the exact file; no client gets a
    complete-looking wrong body; the file is then served from the cache."""
    fake, wheel = held
    config = write_config(tmp_path, fake)
    expected = sha256_file(wheel)
    async with workers(config, 2) as (base, pids), fresh_session() as http:
        url = base.join(URL(await file_path(http, base, "demo")))
        clients = await spread(http, url, pids, 4)
        victim = await owner_of_download(tmp_path / "cache")
        os.kill(victim, signal.SIGKILL)
        fake.slow.release.set()
        async with asyncio.timeout(WAIT * 2):
            results = await asyncio.gather(*clients)
        for n, (status, sha, _size, complete) in enumerate(results):
            if status == 200 and complete:
                assert sha == expected, "a complete-looking wrong body"
            if pids[n // 4] != victim:
                assert (status, sha, complete) == (200, expected, True)
        status, sha, _size, complete = await download(http, url)
        assert (status, sha, complete) == (200, expected, True)
    assert gets(fake, wheel) == 2


async def test_the_budget_holds_across_workers_during_concurrent_downloads(
    start_fake: StartFake, wheelhouse: Path, tmp_path: Path
) -> None:
    """Three workers downloading eight different files at once, twice, into room for two:
    the blobs on disk never exceed the budget, and every client gets its exact file."""
    fake = FakeSimpleIndex()
    wheels = []
    for n in range(8):
        wheel = build_wheel(wheelhouse, f"c{n}", "1.0", payload_size=96 * KIB, seed=n)
        fake.add_file(f"c{n}", wheel)
        fake.slow_file.add(wheel.name)
        wheels.append(wheel)
    fake.slow.chunk_size = 8 * KIB
    fake.slow.delay = 0.005
    await start_fake(fake)
    budget = int(max(w.stat().st_size for w in wheels) * 2.5)
    config = write_config(tmp_path, fake, max_size=budget)
    blobs = tmp_path / "cache" / "blobs"
    peak = 0
    samples = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak, samples
        while not stop.is_set():
            total = 0
            for path in blobs.rglob("*"):
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file():
                        total += path.stat().st_size
            peak = max(peak, total)
            samples += 1
            await asyncio.sleep(0.002)

    async with workers(config, 3) as (base, _pids), fresh_session() as http:
        paths = [await file_path(http, base, f"c{n}") for n in range(8)]
        sampler = asyncio.create_task(sample())
        try:
            for _round in range(2):
                urls = [base.join(URL(p)) for p in paths]
                results = await asyncio.gather(*(download(http, url) for url in urls))
                assert [(r[0], r[1]) for r in results] == [(200, sha256_file(w)) for w in wheels]
        finally:
            stop.set()
            await sampler
    assert samples > 10
    assert peak <= budget, f"{peak} bytes of blobs on disk, budget {budget}"
