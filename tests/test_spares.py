"""Spare files: page cache made ready between downloads, written over by the next cold fills.

The pool is driven on a real temporary directory; the fills that use it run through the real
proxy against a real fake upstream on loopback sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from nightproxy.cache import spares as spares_module
from nightproxy.cache import store as store_module
from nightproxy.cache.fill import FillManager
from nightproxy.cache.spares import MAX_SPARES, MIN_FILL, PREFIX, SPARE_SIZE, SparePool
from nightproxy.cache.store import CacheStore
from nightproxy.server import keys
from tests.conftest import MakeConfig, StartFake, StartProxy
from tests.fakes import FakeSimpleIndex
from tests.test_eviction import (
    blob_files,
    download,
    file_url,
    proxy_config,
    tmp_files,
    wait_until,
)
from tests.wheels import build_wheel, sha256_file

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
MIB = 1024 * 1024


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """Where ``make_config`` puts the proxy's cache."""
    return tmp_path / "cache"


def spare_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX))


# -- the pool -------------------------------------------------------------------------------


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[tuple[SparePool, asyncio.Event]]:
    idle = asyncio.Event()
    idle.set()
    spares = SparePool(tmp_path, 2 * MIB, idle)
    yield spares, idle
    await spares.close()


async def test_a_spare_is_a_sparse_file_of_its_full_size(
    pool: tuple[SparePool, asyncio.Event], tmp_path: Path
) -> None:
    """A ready spare has its full size and no disk blocks: reading it cost memory, not disk."""
    spares, _idle = pool
    spares.start()
    await wait_until(lambda: spares.ready == 1, "a spare is made")
    (path,) = spare_files(tmp_path)
    status = path.stat()
    assert status.st_size == spares.size == 2 * MIB
    assert status.st_blocks == 0


async def test_spares_are_made_only_while_no_fill_runs(
    pool: tuple[SparePool, asyncio.Event], tmp_path: Path
) -> None:
    """While a fill runs (``idle`` cleared) no spare is made; once it ends, one is."""
    spares, idle = pool
    idle.clear()
    spares.start()
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert spares.ready == 0
    assert spare_files(tmp_path) == []
    idle.set()
    await wait_until(lambda: spares.ready == 1, "a spare is made once idle")


async def test_a_small_file_takes_no_spare(pool: tuple[SparePool, asyncio.Event]) -> None:
    """A file announced below ``MIN_FILL`` would waste a spare: it gets none."""
    spares, _idle = pool
    spares.start()
    await wait_until(lambda: spares.ready == 1, "a spare is made")
    assert spares.take(MIN_FILL - 1) is None
    assert spares.ready == 1


async def test_a_taken_spare_is_replaced(
    pool: tuple[SparePool, asyncio.Event], tmp_path: Path
) -> None:
    """Taking a spare (a large or unannounced size) hands over its open descriptor, and the
    pool makes another."""
    spares, _idle = pool
    spares.start()
    await wait_until(lambda: spares.ready == 1, "a spare is made")
    spare = spares.take(None)
    assert spare is not None
    try:
        os.pwrite(spare.fd, b"abc", 0)
        assert os.pread(spare.fd, 3, 0) == b"abc"
    finally:
        os.close(spare.fd)
    await wait_until(lambda: spares.ready == 1, "the spare is replaced")
    assert spares.taken == 1
    assert spares.made == 2
    assert len(spare_files(tmp_path)) == 2  # the taken one is its taker's to keep or delete


async def test_closing_the_pool_deletes_its_spares(tmp_path: Path) -> None:
    """Spares not taken are deleted when the pool closes."""
    idle = asyncio.Event()
    idle.set()
    spares = SparePool(tmp_path, 2 * MIB, idle)
    spares.start()
    await wait_until(lambda: spares.ready == 1, "a spare is made")
    await spares.close()
    assert spare_files(tmp_path) == []


async def test_closing_while_a_spare_is_being_made_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare still being made in its thread when the pool closes (the server stops) is
    waited for and deleted, not left in ``tmp/``."""
    entered, release, made = threading.Event(), threading.Event(), threading.Event()
    real = spares_module._make

    def held(directory: Path, size: int) -> spares_module.Spare:
        entered.set()
        release.wait(WAIT)
        try:
            return real(directory, size)
        finally:
            made.set()

    monkeypatch.setattr(spares_module, "_make", held)
    idle = asyncio.Event()
    idle.set()
    spares = SparePool(tmp_path, 2 * MIB, idle)
    spares.start()
    await wait_until(entered.is_set, "a spare is being made")
    closing = asyncio.create_task(spares.close())
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(closing, WAIT)
    await wait_until(made.is_set, "the thread made its file")
    assert spare_files(tmp_path) == []


async def test_a_failure_to_make_a_spare_is_logged_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a usable directory the pool logs a warning and makes nothing; the next fill
    that asks for a spare makes it try again."""
    directory = tmp_path / "gone"
    idle = asyncio.Event()
    idle.set()
    spares = SparePool(directory, 2 * MIB, idle)
    try:
        with caplog.at_level(logging.WARNING, logger="nightproxy.cache.spares"):
            spares.start()
            await wait_until(lambda: "cannot prepare a spare" in caplog.text, "a warning")
        assert spares.ready == 0
        directory.mkdir()
        assert spares.take(None) is None
        await wait_until(lambda: spares.ready == 1, "made on the next request")
    finally:
        await spares.close()


def test_the_number_of_spares_is_capped(tmp_path: Path) -> None:
    """However much memory is configured, at most ``MAX_SPARES`` spares (each holds an open
    descriptor) are kept."""
    pool = SparePool(tmp_path, 1000 * SPARE_SIZE, asyncio.Event())
    assert pool.target == MAX_SPARES


async def test_no_spare_memory_means_no_spares(tmp_path: Path) -> None:
    """``spare_memory: 0`` turns the pool off."""
    fills = FillManager(CacheStore(tmp_path, MIB, 3600.0), spare_memory=0)
    fills.start_spares()
    await asyncio.sleep(0.05)
    assert fills.spares.target == 0
    assert fills.spares.take(None) is None
    await fills.close()


# -- fills over spares, through the proxy -----------------------------------------------------


async def spared_proxy(
    start_fake: StartFake,
    start_proxy: StartProxy,
    make_config: MakeConfig,
    wheel: Path,
    spare_memory: int,
) -> tuple[FakeSimpleIndex, TestServer]:
    fake = FakeSimpleIndex()
    fake.add_file("big", wheel)
    await start_fake(fake)
    proxy = await start_proxy(proxy_config(make_config, fake, spare_memory=spare_memory))
    spares = proxy.app[keys.FILLS].spares
    await wait_until(lambda: spares.ready == spares.target, "the spares are made")
    return fake, proxy


async def test_a_cold_file_written_over_a_spare_is_cached_at_its_own_size(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """A 2 MiB wheel written into a 4 MiB spare reaches the client intact, is cached cut to
    its own size, is a hit next time, and the spare is replaced."""
    wheel = build_wheel(wheelhouse, "big", "1.0", payload_size=2 * MIB)
    _fake, proxy = await spared_proxy(start_fake, start_proxy, make_config, wheel, 4 * MIB)
    spares = proxy.app[keys.FILLS].spares
    url = await file_url(http, proxy, "big")
    body, cache = await download(http, url)
    assert cache == "miss"
    assert hashlib.sha256(body).hexdigest() == sha256_file(wheel)
    assert spares.taken == 1
    assert blob_files(cache_dir) == {sha256_file(wheel): wheel.stat().st_size}
    assert await download(http, url) == (wheel.read_bytes(), "hit")
    await wait_until(lambda: spares.ready == 1, "the spare is replaced")
    assert tmp_files(cache_dir) == []


async def test_a_file_larger_than_its_spare_outgrows_it(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """A 3 MiB wheel written into a 1 MiB spare goes on past its end: every byte arrives and
    the cached copy is the whole file."""
    wheel = build_wheel(wheelhouse, "big", "1.0", payload_size=3 * MIB)
    _fake, proxy = await spared_proxy(start_fake, start_proxy, make_config, wheel, MIB)
    url = await file_url(http, proxy, "big")
    body, _cache = await download(http, url)
    assert body == wheel.read_bytes()
    assert proxy.app[keys.FILLS].spares.taken == 1
    assert blob_files(cache_dir) == {sha256_file(wheel): wheel.stat().st_size}


async def test_a_file_of_unannounced_size_takes_a_spare(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """A chunked response (no Content-Length) may be large: it is written over a spare, and
    its cached copy is cut to what arrived."""
    wheel = build_wheel(wheelhouse, "big", "1.0", payload_size=512 * 1024)
    fake, proxy = await spared_proxy(start_fake, start_proxy, make_config, wheel, 4 * MIB)
    fake.chunked.add(wheel.name)
    url = await file_url(http, proxy, "big")
    body, _cache = await download(http, url)
    assert body == wheel.read_bytes()
    assert proxy.app[keys.FILLS].spares.taken == 1
    assert blob_files(cache_dir) == {sha256_file(wheel): wheel.stat().st_size}


async def test_a_small_cold_file_leaves_the_spares_alone(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A wheel announced under 1 MiB is written into a new file."""
    wheel = build_wheel(wheelhouse, "big", "1.0", payload_size=64 * 1024)
    _fake, proxy = await spared_proxy(start_fake, start_proxy, make_config, wheel, 4 * MIB)
    body, _cache = await download(http, await file_url(http, proxy, "big"))
    assert body == wheel.read_bytes()
    assert proxy.app[keys.FILLS].spares.taken == 0


async def test_a_failed_fill_over_a_spare_leaves_nothing(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    cache_dir: Path,
) -> None:
    """A download cut short while written over a spare is never served whole, and neither
    the spare nor any part of the file stays behind."""
    wheel = build_wheel(wheelhouse, "big", "1.0", payload_size=2 * MIB)
    fake, proxy = await spared_proxy(start_fake, start_proxy, make_config, wheel, 4 * MIB)
    fake.truncate.add(wheel.name)
    url = await file_url(http, proxy, "big")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(url) as resp:
            await resp.read()
    assert proxy.app[keys.FILLS].spares.taken == 1
    await wait_until(lambda: not tmp_files(cache_dir), "no leftover")
    assert blob_files(cache_dir) == {}


async def test_stopping_the_server_deletes_its_spares(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    cache_dir: Path,
) -> None:
    """A server that stops leaves no spare file in ``tmp/``."""
    wheel = build_wheel(wheelhouse, "big", "1.0", payload_size=64 * 1024)
    _fake, proxy = await spared_proxy(start_fake, start_proxy, make_config, wheel, 4 * MIB)
    assert spare_files(cache_dir / "tmp") != []
    await proxy.close()
    assert spare_files(cache_dir / "tmp") == []


# -- torn blobs after a restart of the machine --------------------------------------------


def holey_blob(store: CacheStore, tmp_path: Path, size: int) -> str:
    """Admit a blob that is all hole: what a fill over a spare leaves if the machine dies
    before its bytes are written back."""
    sha = hashlib.sha256(b"never written").hexdigest()
    part = tmp_path / "torn.part"
    with open(part, "wb") as fh:
        fh.truncate(size)
    store.admit_file(part, sha, size, filename="torn-1.0-py3-none-any.whl", upstream="main")
    store.admitted(sha, size, 0, "torn-1.0-py3-none-any.whl", upstream="main")
    store.flush()
    return sha


@pytest.fixture
def boot_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "boot_id"
    path.write_text("boot-1\n")
    monkeypatch.setattr(store_module, "BOOT_ID", path)
    return path


def test_a_blob_with_holes_is_deleted_after_the_machine_restarted(
    tmp_path: Path, boot_id: Path
) -> None:
    """A cached file with a hole is deleted at the first start in a new boot."""
    root = tmp_path / "cache"
    store = CacheStore(root, 10 * MIB, 3600.0)
    store.open()
    sha = holey_blob(store, tmp_path, MIB)
    boot_id.write_text("boot-2\n")
    again = CacheStore(root, 10 * MIB, 3600.0)
    again.open()
    assert not again.has(sha)
    assert not again.path_for(sha).exists()


def test_blobs_are_not_searched_for_holes_when_only_the_process_restarted(
    tmp_path: Path, boot_id: Path
) -> None:
    """In the same boot the kernel still holds every byte a dead process wrote: nothing is
    deleted (a hole here can only be the test's own)."""
    root = tmp_path / "cache"
    store = CacheStore(root, 10 * MIB, 3600.0)
    store.open()
    sha = holey_blob(store, tmp_path, MIB)
    again = CacheStore(root, 10 * MIB, 3600.0)
    again.open()
    assert again.has(sha)


def test_a_whole_blob_survives_a_restart_of_the_machine(tmp_path: Path, boot_id: Path) -> None:
    """A cached file without holes is kept after a new boot."""
    root = tmp_path / "cache"
    store = CacheStore(root, 10 * MIB, 3600.0)
    store.open()
    sha = store.write_blob(
        os.urandom(MIB), key="whole", filename="whole-1.0-py3-none-any.whl", upstream="main"
    )
    store.flush()
    boot_id.write_text("boot-2\n")
    again = CacheStore(root, 10 * MIB, 3600.0)
    again.open()
    assert again.has(sha)


def test_a_cache_without_a_boot_record_is_searched_for_holes(tmp_path: Path, boot_id: Path) -> None:
    """A missing (or empty) record of the last boot cannot vouch for the blobs: they are
    searched for holes, as after a restart of the machine."""
    root = tmp_path / "cache"
    store = CacheStore(root, 10 * MIB, 3600.0)
    store.open()
    sha = holey_blob(store, tmp_path, MIB)
    (root / "boot_id").write_text("")
    again = CacheStore(root, 10 * MIB, 3600.0)
    again.open()
    assert not again.has(sha)
