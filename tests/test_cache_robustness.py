"""The cache under stress: torn blobs at start-up, upstreams that overrun their length, blobs
shared by several names, eviction racing a hit, and export/import beside a live server.

HTTP tests run the real proxy in front of real fake upstreams on loopback; store, fill and
transfer tests drive those objects directly on temporary directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import pathlib
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.cache import transfer
from nightproxy.cache.fill import Fill, FillError, SizeMismatchError
from nightproxy.cache.fills import FillManager
from nightproxy.cache.store import CacheStore
from nightproxy.cache.transfer import MANIFEST, export_cache, import_cache
from nightproxy.server import keys
from nightproxy.server.app import create_app
from nightproxy.upstreams.base import Download
from tests.conftest import (
    PIP_ACCEPT,
    MakeConfig,
    StartFake,
    StartProxy,
    simple_url,
)
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed


# -- helpers ------------------------------------------------------------------------------------


async def listed(http: aiohttp.ClientSession, proxy: TestServer) -> dict[str, dict[str, Any]]:
    """The demo page's JSON file entries by filename, each with its absolute ``url``."""
    page = proxy.make_url("/simple/demo/")
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200
        doc = json.loads(await resp.read())
    return {f["filename"]: {**f, "url": page.join(URL(f["url"]))} for f in doc["files"]}


async def fetch(http: aiohttp.ClientSession, url: URL) -> tuple[int, str | None, bytes]:
    async with http.get(url) as resp:
        return resp.status, resp.headers.get("X-Nightproxy-Cache"), await resp.read()


async def one_wheel(start_fake: StartFake, wheelhouse: Path) -> tuple[FakeSimpleIndex, Path]:
    fake = FakeSimpleIndex()
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=64 * 1024)
    fake.add_file("demo", wheel)
    return await start_fake(fake), wheel


def blob_files(cache_dir: Path) -> list[Path]:
    return [p for p in (cache_dir / "blobs").rglob("*") if p.is_file()]


def open_store(root: Path, max_size: int = 10**9) -> CacheStore:
    store = CacheStore(root, max_size, 3600.0)
    store.open()
    return store


def put(store: CacheStore, data: bytes, name: str) -> str:
    victims = store.reserve(len(data))
    assert victims is not None
    store.delete_blobs(victims)
    sha = store.write_blob(data, key=hashlib.sha256(data).hexdigest(), filename=name, upstream="u")
    store.admitted(sha, len(data), len(data), name)
    return sha


# -- 1. a torn blob is not served after a restart -------------------------------------------


async def test_blob_cut_short_while_down_is_fetched_again_after_restart(
    start_fake: StartFake,
    make_config: MakeConfig,
    wheelhouse: Path,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A cached blob truncated while the proxy was down is a miss after the restart, and the
    client gets the whole verified file again, never the short one."""
    fake, wheel = await one_wheel(start_fake, wheelhouse)
    config = make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}])

    async def get_once() -> tuple[int, str | None, bytes]:
        proxy = TestServer(create_app(config))
        await proxy.start_server()
        try:
            entry = (await listed(http, proxy))[wheel.name]
            return await fetch(http, entry["url"])
        finally:
            await proxy.close()

    assert (await get_once())[1] == "miss"
    (blob,) = blob_files(tmp_path / "cache")
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])

    status, cache, body = await get_once()
    assert (status, cache) == (200, "miss")
    assert body == wheel.read_bytes()
    assert fake.count("GET", f"/files/{wheel.name}") == 2


def test_size_mismatch_at_open_deletes_the_blob_and_its_row(tmp_path: Path) -> None:
    """At open, a blob whose size on disk is not its recorded size is gone: file, row, alias."""
    root = tmp_path / "cache"
    first = open_store(root)
    torn, kept = put(first, b"a" * 100, "a-1.0-py3-none-any.whl"), put(first, b"b" * 100, "b.whl")
    first.record_alias("m:key", torn)
    first.close()
    first.path_for(torn).write_bytes(b"a" * 40)

    second = open_store(root)
    try:
        assert not second.has(torn)
        assert not second.path_for(torn).exists()
        assert second.resolve("m:key") is None
        assert second.has(kept)
        assert second.used_bytes == 100
        assert [b["sha256"] for b in second.snapshot()[0]] == [kept]
    finally:
        second.close()


def test_blob_without_row_whose_bytes_do_not_match_its_name_is_deleted_at_open(
    tmp_path: Path,
) -> None:
    """A blob left without a row (a crash between rename and insert) is adopted only if its
    bytes hash to its name; one that does not is deleted."""
    root = tmp_path / "cache"
    store = open_store(root)
    store.close()
    bogus = "ab" * 32
    store.path_for(bogus).parent.mkdir(parents=True, exist_ok=True)
    store.path_for(bogus).write_bytes(b"not the bytes of that digest")

    again = open_store(root)
    try:
        assert not again.has(bogus)
        assert not again.path_for(bogus).exists()
        assert again.used_bytes == 0
    finally:
        again.close()


# -- 2. an upstream that sends more than it announced ---------------------------------------


class _Overrun(Download):
    """A download that announces ``size`` but sends ``extra`` more bytes after them."""

    def __init__(self, inner: Download, extra: bytes) -> None:
        self._inner = inner
        self._extra = extra
        self.size = inner.size

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner.chunks():
            yield chunk
        yield self._extra


def overrunning(
    real: Callable[[Any], AbstractAsyncContextManager[Download]], extra: bytes
) -> Callable[[Any], AbstractAsyncContextManager[Download]]:
    @contextlib.asynccontextmanager
    async def open_file(file: Any) -> AsyncIterator[Download]:
        async with real(file) as download:
            yield _Overrun(download, extra)

    return open_file


async def test_upstream_sending_more_than_it_announced_never_gives_a_complete_body(
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """An upstream whose body runs past its announced length: the client reads fewer bytes
    than Content-Length (a payload error), and nothing is cached."""
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=64 * 1024)
    proxy = await start_proxy(
        make_config([{"name": "local", "kind": "directory", "path": "./wheelhouse"}])
    )
    upstream = proxy.app[keys.UPSTREAMS]["local"]
    upstream.open_file = overrunning(upstream.open_file, b"x" * 4096)  # type: ignore[method-assign]
    entry = (await listed(http, proxy))[wheel.name]

    async with http.get(entry["url"]) as resp:
        assert resp.status == 200
        assert resp.content_length == wheel.stat().st_size
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert proxy.app[keys.STORE].file_count == 0


async def test_wheel_grown_in_place_after_listing_is_never_served_complete(
    wheelhouse: Path,
    tmp_path: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A directory wheel overwritten in place by a bigger build after its page was read: the
    client gets a payload error, never a complete-looking body of other bytes."""
    old = build_wheel(wheelhouse, "demo", "1.0", payload_size=64 * 1024)
    bigger = build_wheel(tmp_path / "other", "demo", "1.0", payload_size=256 * 1024, seed=7)
    proxy = await start_proxy(
        make_config([{"name": "local", "kind": "directory", "path": "./wheelhouse", "ttl": "0s"}])
    )
    entry = (await listed(http, proxy))[old.name]
    with open(old, "r+b") as fh:
        fh.write(bigger.read_bytes())

    async with http.get(entry["url"]) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


class _Fixed(Download):
    def __init__(self, size: int, body: bytes) -> None:
        self.size = size
        self._body = body

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._body), 1000):
            yield self._body[start : start + 1000]


async def run_fill(tmp_path: Path, download: Download) -> tuple[Fill, list[tuple[int, int]]]:
    """Fill from ``download`` (no published hash) and collect what a reader was released."""
    store = open_store(tmp_path / "cache")
    fills = FillManager(store)

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[Download]:
        yield download

    fill = fills.start(
        "k" * 64, opener, expected_sha256=None, filename="demo-1.0-py3-none-any.whl", upstream="u"
    )
    released: list[tuple[int, int]] = []
    with contextlib.suppress(FillError):
        async with asyncio.timeout(WAIT):
            async for span in fill.spans():
                released.append(span)
    await fill.finished.wait()
    await fills.close()
    store.close()
    return fill, released


async def test_fill_fails_when_the_download_is_longer_than_announced(tmp_path: Path) -> None:
    """A download yielding more bytes than its size fails the fill (even with no hash to
    check), caches nothing, and never releases the announced last byte to a reader."""
    fill, released = await run_fill(tmp_path, _Fixed(5000, b"z" * 6000))
    assert isinstance(fill.error, SizeMismatchError)
    assert not fill.cached
    assert sum(length for _offset, length in released) < 5000


async def test_fill_fails_when_the_download_is_shorter_than_announced(tmp_path: Path) -> None:
    """A download that ends before its announced size fails the fill and caches nothing."""
    fill, released = await run_fill(tmp_path, _Fixed(5000, b"z" * 4000))
    assert isinstance(fill.error, SizeMismatchError)
    assert not fill.cached
    assert sum(length for _offset, length in released) < 5000


async def test_spans_hold_back_the_last_announced_byte_whatever_was_written(
    tmp_path: Path,
) -> None:
    """Before verification, a reader is released at most ``size - 1`` bytes of a fill whose
    size is known, even if more than that has been written."""
    fill = Fill("key", tmp_path / "x.part", None)
    fill.size = 10
    fill.written = 12
    spans = fill.spans()
    assert await anext(spans) == (0, 9)
    fill.done = True
    fill.error = FillError("failed")
    fill._notify()
    with pytest.raises(FillError):
        await anext(spans)


# -- 3. one blob under several names ---------------------------------------------------------


async def test_wheels_with_identical_metadata_fetch_it_once_each(
    start_fake: StartFake,
    start_proxy: StartProxy,
    make_config: MakeConfig,
    wheelhouse: Path,
    http: aiohttp.ClientSession,
) -> None:
    """Two wheels whose METADATA bytes are the same: alternating requests for their .metadata
    cost one upstream GET per wheel, not one per request."""
    fake = FakeSimpleIndex()
    a = build_wheel(wheelhouse, "demo", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    b = build_wheel(wheelhouse, "demo", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64")
    fake.add_file("demo", a)
    fake.add_file("demo", b)
    assert (
        fake.projects["demo"].files[a.name].metadata == fake.projects["demo"].files[b.name].metadata
    )
    fake = await start_fake(fake)
    proxy = await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}])
    )
    files = await listed(http, proxy)
    expected = fake.projects["demo"].files[a.name].metadata

    for name in [a.name, b.name] * 3:
        status, _cache, body = await fetch(http, URL(str(files[name]["url"]) + ".metadata"))
        assert (status, body) == (200, expected)
    assert fake.count("GET", ".metadata") == 2


def test_every_name_of_a_shared_blob_resolves_across_a_restart(tmp_path: Path) -> None:
    """Bytes admitted under two names answer to both, also after the store is reopened; a
    third name still does not."""
    root = tmp_path / "cache"
    first = open_store(root)
    data = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
    sha = put(first, data, "demo-1.0-cp311-cp311-linux_x86_64.whl.metadata")
    assert put(first, data, "demo-1.0-cp312-cp312-linux_x86_64.whl.metadata") == sha
    for store in (first, reopened := (first.close(), open_store(root))[1]):
        assert store.resolve(sha, "demo-1.0-cp311-cp311-linux_x86_64.whl.metadata") == sha
        assert store.resolve(sha, "demo-1.0-cp312-cp312-linux_x86_64.whl.metadata") == sha
        assert store.resolve(sha, "other-1.0-py3-none-any.whl.metadata") is None
    reopened.close()


async def test_metadata_of_a_cached_key_under_another_project_is_404(
    start_fake: StartFake,
    start_proxy: StartProxy,
    make_config: MakeConfig,
    wheelhouse: Path,
    http: aiohttp.ClientSession,
) -> None:
    """A cached wheel's .metadata asked for under another project's name and wheel is 404."""
    fake, wheel = await one_wheel(start_fake, wheelhouse)
    proxy = await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}])
    )
    entry = (await listed(http, proxy))[wheel.name]
    assert (await fetch(http, URL(str(entry["url"]) + ".metadata")))[0] == 200
    key = entry["url"].parts[-2]
    other = proxy.make_url(f"/files/other/{key}/other-1.0-py3-none-any.whl.metadata")
    assert (await fetch(http, other))[0] == 404


# -- 4. eviction racing a hit ------------------------------------------------------------------


async def test_file_due_for_eviction_during_its_hit_check_is_still_served(
    start_fake: StartFake,
    start_proxy: StartProxy,
    make_config: MakeConfig,
    wheelhouse: Path,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The age sweep running while a request checks the cached file does not delete it under
    that request: the client gets the whole file, not a 404."""
    fake, wheel = await one_wheel(start_fake, wheelhouse)
    proxy = await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}])
    )
    entry = (await listed(http, proxy))[wheel.name]
    assert (await fetch(http, entry["url"]))[0] == 200
    store = proxy.app[keys.STORE]
    sha = entry["hashes"]["sha256"]
    store.touch(sha, time.time() - store.max_age - 60)
    loop = asyncio.get_running_loop()
    swept: list[str] = []

    async def sweep() -> None:
        victims = store.expired()
        store.delete_blobs(victims)
        swept.extend(victims)

    real_is_file = pathlib.Path.is_file

    def is_file_then_sweep(self: pathlib.Path) -> bool:
        # The maintenance sweep gets its turn on the loop while the check is in its thread.
        found = real_is_file(self)
        if self.name == sha:
            asyncio.run_coroutine_threadsafe(sweep(), loop).result(WAIT)
        return found

    monkeypatch.setattr(pathlib.Path, "is_file", is_file_then_sweep)
    status, _cache, body = await fetch(http, entry["url"])
    monkeypatch.undo()
    assert status == 200
    assert body == wheel.read_bytes()


async def test_blob_served_as_a_hit_can_be_evicted_afterwards(
    start_fake: StartFake,
    start_proxy: StartProxy,
    make_config: MakeConfig,
    wheelhouse: Path,
    http: aiohttp.ClientSession,
) -> None:
    """Serving a hit holds the blob only while it is sent: afterwards the age sweep takes it."""
    fake, wheel = await one_wheel(start_fake, wheelhouse)
    proxy = await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}])
    )
    entry = (await listed(http, proxy))[wheel.name]
    assert (await fetch(http, entry["url"]))[1] == "miss"
    assert (await fetch(http, entry["url"]))[1] == "hit"
    store = proxy.app[keys.STORE]
    sha = entry["hashes"]["sha256"]
    later = time.time() + store.max_age + 60
    # The client can have every byte before the server's send returns: poll (bounded) until
    # the sweep takes something; a pin left behind would hold it for good.
    async with asyncio.timeout(WAIT):
        while not (swept := store.expired(now=later)):
            await asyncio.sleep(0.01)
    assert swept == [sha]


# -- 5, 6. export and import -------------------------------------------------------------------


def test_export_leaves_out_a_blob_deleted_while_exporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob that a live server evicts during export is left out of archive and manifest;
    the archive imports cleanly."""
    root = tmp_path / "cache"
    store = open_store(root)
    shas = [put(store, os.urandom(1000), f"f{i}-1.0-py3-none-any.whl") for i in range(3)]
    gone = shas[1]
    real_snapshot = store.snapshot

    def snapshot_then_evict() -> Any:
        taken = real_snapshot()
        store.path_for(gone).unlink()  # the server's eviction lands now
        return taken

    monkeypatch.setattr(store, "snapshot", snapshot_then_evict)
    out = tmp_path / "out.tar"
    assert export_cache(store, out) == (2, 2000)
    store.close()
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    assert names == {MANIFEST} | {f"blobs/{s}" for s in shas if s != gone}
    assert {b["sha256"] for b in manifest["blobs"]} == set(shas) - {gone}
    assert list(tmp_path.glob("out.tar.part")) == []
    fresh = CacheStore(tmp_path / "fresh", 10**9, 3600.0)
    fresh.open(clean_tmp=False)
    try:
        assert import_cache(fresh, out)[:2] == (2, 2000)
    finally:
        fresh.close()


def test_failed_export_leaves_no_partial_archive(tmp_path: Path) -> None:
    """An export that fails on a real I/O error raises OSError and leaves no ``.part``."""
    root = tmp_path / "cache"
    store = open_store(root)
    sha = put(store, b"q" * 500, "q-1.0-py3-none-any.whl")
    store.path_for(sha).unlink()
    store.path_for(sha).mkdir()  # unreadable as a file, whoever runs the test
    out = tmp_path / "out.tar"
    try:
        with pytest.raises(OSError):
            export_cache(store, out)
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_import_of_an_archive_listing_a_blob_twice_leaves_nothing_in_tmp(tmp_path: Path) -> None:
    """An archive with one blob twice imports it once and leaves no staged copy in tmp/."""
    data = os.urandom(5000)
    sha = hashlib.sha256(data).hexdigest()
    manifest = json.dumps(
        {
            "format": transfer.FORMAT_VERSION,
            "exported_at": time.time(),
            "blobs": [
                {
                    "sha256": sha,
                    "size": len(data),
                    "last_use": time.time(),
                    "filename": "a-1-py3-none-any.whl",
                    "upstream": "u",
                }
            ],
            "aliases": {},
        }
    ).encode()
    archive = tmp_path / "dup.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for _ in range(2):
            info = tarfile.TarInfo(f"blobs/{sha}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = CacheStore(tmp_path / "cache", 10**9, 3600.0)
    store.open(clean_tmp=False)
    try:
        assert import_cache(store, archive)[:2] == (1, len(data))
        assert store.has(sha)
    finally:
        store.close()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
