"""``nightproxy cache export | import | stats | prune``: moving and trimming a warm cache.

A real proxy on loopback fills the cache from a fake upstream; the cache commands then run as
real subprocesses (``python -m nightproxy``), as an operator or a CI job would run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.config import load_config
from tests.conftest import PIP_ACCEPT, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel, sha256_file


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nightproxy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stats(*where: str | Path) -> dict[str, Any]:
    done = cli("cache", "stats", "--json", *where)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def blobs(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "blobs").rglob("*") if p.is_file()}


async def download(http: aiohttp.ClientSession, proxy: TestServer, filename: str) -> str:
    """Fetch ``filename`` of project demo through the proxy; its X-Nightproxy-Cache header."""
    page = proxy.make_url("/simple/demo/")
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200
        doc = json.loads(await resp.read())
    entry = next(f for f in doc["files"] if f["filename"] == filename)
    async with http.get(page.join(URL(entry["url"]))) as resp:
        assert resp.status == 200
        await resp.read()
        return resp.headers["X-Nightproxy-Cache"]


@dataclass
class Filled:
    config: Path
    cache_dir: Path
    fake: FakeSimpleIndex
    #: filename -> (sha256, size), in download order
    files: dict[str, tuple[str, int]]


@pytest.fixture
async def filled(
    http: aiohttp.ClientSession, start_fake: StartFake, start_proxy: StartProxy, tmp_path: Path
) -> Filled:
    """A cache holding two wheels, downloaded through a proxy that has since shut down."""
    fake = FakeSimpleIndex()
    wheels = [
        build_wheel(tmp_path / "wheels", "demo", "1.0", payload_size=20_000, seed=1),
        build_wheel(tmp_path / "wheels", "demo", "1.1.dev20261120", payload_size=30_000, seed=2),
    ]
    for wheel in wheels:
        fake.add_file("demo", wheel)
    await start_fake(fake)
    cache_dir = tmp_path / "cache"
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache:\n  dir: {cache_dir}\n"
        "retention:\n  dev_max_age: off\n"
        f"upstreams:\n  - name: main\n    kind: simple\n    url: {simple_url(fake)}\n"
    )
    proxy = await start_proxy(load_config(config))
    for wheel in wheels:
        assert await download(http, proxy, wheel.name) == "miss"
    await proxy.close()  # flushes recency to disk, as a stopped service would
    return Filled(
        config=config,
        cache_dir=cache_dir,
        fake=fake,
        files={w.name: (sha256_file(w), w.stat().st_size) for w in wheels},
    )


def corrupt_second_blob(archive: Path) -> str:
    """Flip one byte inside the second blob of ``archive``; that blob's sha256."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("blobs/")]
    assert len(members) == 2
    victim = members[1]
    with archive.open("r+b") as fh:
        fh.seek(victim.offset_data + victim.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return victim.name.removeprefix("blobs/")


# -- export / import ------------------------------------------------------------------------------


def test_export_then_import_reproduces_the_cache(filled: Filled, tmp_path: Path) -> None:
    """An exported cache imported elsewhere has the same files and bytes, byte for byte."""
    archive = tmp_path / "x.tar"
    done = cli("cache", "export", archive, "--config", filled.config)
    assert done.returncode == 0, done.stderr
    assert "exported 2 files" in done.stdout
    new = tmp_path / "new-cache"
    done = cli("cache", "import", archive, "--cache-dir", new)
    assert done.returncode == 0, done.stderr
    before = stats("--config", filled.config)
    after = stats("--cache-dir", new)
    assert (
        (after["files"], after["bytes"])
        == (before["files"], before["bytes"])
        == (
            2,
            sum(size for _sha, size in filled.files.values()),
        )
    )
    assert blobs(new) == {sha for sha, _size in filled.files.values()}
    for sha in blobs(new):
        assert sha256_file(next((new / "blobs").rglob(sha))) == sha


async def test_imported_cache_serves_hits_without_downloading(
    filled: Filled, tmp_path: Path, http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    """A proxy started on an imported cache answers both files as hits: a warm start."""
    archive = tmp_path / "x.tar"
    assert cli("cache", "export", archive, "--config", filled.config).returncode == 0
    new = tmp_path / "new-cache"
    assert cli("cache", "import", archive, "--cache-dir", new).returncode == 0
    warm = tmp_path / "warm.yaml"
    warm.write_text(filled.config.read_text().replace(str(filled.cache_dir), str(new)))
    filled.fake.clear_log()
    proxy = await start_proxy(load_config(warm))
    for filename in filled.files:
        assert await download(http, proxy, filename) == "hit"
    assert filled.fake.count(path_contains="/files/") == 0


def test_corrupted_archive_is_rejected_and_imports_nothing(filled: Filled, tmp_path: Path) -> None:
    """One flipped byte in a blob: exit 1, the message names that blob, the cache stays empty."""
    archive = tmp_path / "x.tar"
    assert cli("cache", "export", archive, "--config", filled.config).returncode == 0
    bad_sha = corrupt_second_blob(archive)
    new = tmp_path / "new-cache"
    done = cli("cache", "import", archive, "--cache-dir", new)
    assert done.returncode == 1
    assert bad_sha in done.stderr
    assert "corrupt" in done.stderr
    after = stats("--cache-dir", new)
    assert (after["files"], after["bytes"]) == (0, 0)
    assert blobs(new) == set()
    assert list((new / "tmp").iterdir()) == []


# -- prune ----------------------------------------------------------------------------------------


def test_prune_dry_run_reports_and_deletes_nothing(filled: Filled) -> None:
    """``--dry-run --max-size 1B`` says both files would go, and both stay."""
    before = blobs(filled.cache_dir)
    done = cli("cache", "prune", "--dry-run", "--max-size", "1B", "--config", filled.config)
    assert done.returncode == 0, done.stderr
    total = sum(size for _sha, size in filled.files.values())
    assert f"would evict 2 files, {total} bytes" in done.stdout
    assert blobs(filled.cache_dir) == before
    assert stats("--config", filled.config)["files"] == 2


async def test_prune_evicts_the_least_recently_used_first(
    filled: Filled, http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    """The first-downloaded file, used again since, stays; the one unused longest goes."""
    (old_name, (old_sha, old_size)), (_new_name, (new_sha, new_size)) = filled.files.items()
    proxy = await start_proxy(load_config(filled.config))
    assert await download(http, proxy, old_name) == "hit"  # the other is now least recent
    await proxy.close()
    budget = old_size + new_size - 1  # room for either file alone, not both
    done = cli("cache", "prune", "--max-size", f"{budget}B", "--config", filled.config)
    assert done.returncode == 0, done.stderr
    assert f"evicted 1 files, {new_size} bytes" in done.stdout
    assert blobs(filled.cache_dir) == {old_sha}
    assert new_sha not in json.dumps(stats("--config", filled.config))
    assert stats("--config", filled.config)["files"] == 1
