"""``state.sqlite``: versioned and migrated forward, and never fatal when it breaks.

Migrations are checked against a database built with the schema nightproxy 0.x wrote (copied
here as it was). The corruption tests break the file of a cache the real proxy filled, start
the real proxy again, and download through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.cache.db import SCHEMA_VERSION, DatabaseTooNewError
from nightproxy.cache.store import CacheStore
from nightproxy.server.app import create_app
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel, sha256_file

#: The schema of nightproxy 0.x (``PRAGMA user_version`` 0), exactly as it created it.
SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    last_use REAL NOT NULL,
    created REAL NOT NULL,
    filename TEXT NOT NULL DEFAULT '',
    upstream TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS blob_names (
    sha256 TEXT NOT NULL,
    filename TEXT NOT NULL,
    PRIMARY KEY (sha256, filename)
);
CREATE TABLE IF NOT EXISTS aliases (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS first_seen (
    key TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS retained (
    upstream TEXT NOT NULL,
    project TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (upstream, project)
);
CREATE TABLE IF NOT EXISTS pages (
    upstream TEXT NOT NULL,
    project TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (upstream, project)
);
"""


def old_cache(root: Path, blobs: dict[str, bytes]) -> dict[str, str]:
    """A cache directory as nightproxy 0.x left it: blobs, their rows, an alias each."""
    shas = {}
    root.mkdir(parents=True)
    db = sqlite3.connect(root / "state.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA_V0)
    now = time.time()
    for n, (name, data) in enumerate(blobs.items()):
        sha = hashlib.sha256(data).hexdigest()
        path = root / "blobs" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        db.execute(
            "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
            (sha, len(data), now - 100 + n, now - 200, name, "main"),
        )
        db.execute("INSERT INTO blob_names VALUES (?, ?)", (sha, name))
        db.execute("INSERT INTO aliases VALUES (?, ?)", (f"m:u{n:040x}", sha))
        shas[name] = sha
    db.execute("INSERT INTO pages VALUES ('main', 'demo', ?, '{}')", (now,))
    db.commit()
    db.close()
    return shas


def test_a_database_of_the_unversioned_schema_is_brought_forward(tmp_path: Path) -> None:
    """A cache of nightproxy 0.x opens with every blob, name, alias and its recency intact,
    at the current schema version, in WAL mode; the index's old tables are left for it."""
    root = tmp_path / "cache"
    names = [f"p{n}-1.0-py3-none-any.whl" for n in range(3)]
    shas = old_cache(root, {name: name.encode() * 50 for name in names})
    store = CacheStore(root, 10**9, 3600.0)
    store.open()
    try:
        for n, name in enumerate(names):
            assert store.resolve(shas[name], name) == shas[name]
            assert store.resolve(f"m:u{n:040x}") == shas[name]
        assert [b["sha256"] for b in store.snapshot()[0]] == [shas[n] for n in names]
        assert store.reserve(0) == []
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(root / "state.sqlite")) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM pages").fetchone()[0] == 1


def test_opening_twice_migrates_once(tmp_path: Path) -> None:
    """A migrated database opens again unchanged (the second open has nothing to do)."""
    root = tmp_path / "cache"
    old_cache(root, {"a-1-py3-none-any.whl": b"a" * 10})
    for _ in range(2):
        store = CacheStore(root, 10**9, 3600.0)
        store.open()
        assert store.file_count == 1
        store.close()


def test_a_database_of_a_newer_nightproxy_is_left_alone(tmp_path: Path) -> None:
    """A schema newer than this version knows is refused with a clear error, and the file is
    neither changed nor moved aside."""
    root = tmp_path / "cache"
    root.mkdir()
    with contextlib.closing(sqlite3.connect(root / "state.sqlite")) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = (root / "state.sqlite").read_bytes()
    store = CacheStore(root, 10**9, 3600.0)
    with pytest.raises(DatabaseTooNewError, match="newer nightproxy"):
        store.open()
    assert (root / "state.sqlite").read_bytes() == before
    assert not list(root.glob("state.sqlite.broken-*"))


# -- a broken database ----------------------------------------------------------------------


def truncate_to_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)


def zero_a_page(path: Path) -> None:
    with open(path, "r+b") as fh:
        page = int.from_bytes(fh.read(18)[16:18], "big") or 65536
        fh.seek(page)  # the second page: the root of a table
        fh.write(b"\0" * page)


def directory_in_its_place(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "something").write_text("x")


@pytest.mark.parametrize(
    "breakage", [truncate_to_half, garbage, zero_a_page, directory_in_its_place]
)
async def test_a_broken_database_is_moved_aside_and_the_files_stay_served(
    breakage: object,
    start_fake: StartFake,
    make_config: MakeConfig,
    wheelhouse: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """state.sqlite truncated, garbage, with a zeroed page, or a directory: the server starts,
    says so in one WARNING line, keeps the broken file for inspection, and serves the cached
    wheel from the cache (no second upstream GET)."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(wheelhouse, "demo", "1.0", payload_size=64 * 1024)
    fake.add_file("demo", wheel)
    # Rows enough for the database to span several pages.
    for n in range(40):
        fake.add_file(f"filler{n}", build_wheel(wheelhouse, f"filler{n}", "1.0"))
    await start_fake(fake)
    config = make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}])
    cache = tmp_path / "cache"

    async def fetch(*projects: str) -> tuple[int, str, str]:
        """Start a proxy, download each project's file through it; the last one's answer."""
        proxy = TestServer(create_app(config))
        await proxy.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                for project in projects:
                    page = proxy.make_url(f"/simple/{project}/")
                    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
                        (entry,) = json.loads(await resp.read())["files"]
                    async with http.get(page.join(URL(entry["url"]))) as resp:
                        body = await resp.read()
                        answer = resp.status, resp.headers["X-Nightproxy-Cache"], body.hex()
                return answer
        finally:
            await proxy.close()

    assert (await fetch(*(f"filler{n}" for n in range(40)), "demo"))[1] == "miss"
    breakage(cache / "state.sqlite")  # type: ignore[operator]
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            (cache / f"state.sqlite{suffix}").unlink()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nightproxy"):
        status, hit, body = await fetch("demo")
    assert (status, hit) == (200, "hit")
    assert hashlib.sha256(bytes.fromhex(body)).hexdigest() == sha256_file(wheel)
    assert fake.count("GET", f"/files/{wheel.name}") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "state.sqlite" in warnings[0]
    assert "moved to state.sqlite.broken-" in warnings[0]
    assert list(cache.glob("state.sqlite.broken-*"))
