"""The index's own database (``index.sqlite``): taken over from nightproxy 0.x's combined
``state.sqlite``, versioned, moved aside when unreadable, shared by worker processes.

Real SQLite files, a real proxy app in front of a real fake upstream on loopback, and real
processes for concurrent writers.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nightproxy.index.state import FILENAME, SCHEMA_VERSION, IndexState
from nightproxy.model import DistFile, ProjectPage
from nightproxy.server import keys
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel

#: The schema of ``state.sqlite`` as nightproxy 0.x (the main branch before the index had a
#: database of its own) created it, word for word.
LEGACY_SCHEMA = """
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
SHA = "ab" * 32
FIRST_SEEN = 1_577_836_800.0  # 2020-01-01T00:00:00Z


def legacy_file(url: str, filename: str, sha: str = SHA) -> dict[str, Any]:
    """A file as nightproxy 0.x's codec wrote it: no upload time, no date in the version."""
    return {
        "filename": filename,
        "url": url,
        "upstream": "main",
        "hashes": {"sha256": sha},
        "requires_python": None,
        "yanked": False,
        "size": 10,
        "upload_time": None,
        "core_metadata": False,
        "change_marker": None,
    }


def write_legacy_state(cache_dir: Path, url: str) -> None:
    """A ``state.sqlite`` with one saved page, one retained file and one first-seen time."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(cache_dir / "state.sqlite")
    db.executescript(LEGACY_SCHEMA)
    page = {
        "name": "demo",
        "etag": '"v1"',
        "last_modified": None,
        "files": [legacy_file(url, "demo-1.0-py3-none-any.whl")],
    }
    gone = [{"since": time.time() - 60, "file": legacy_file(url, "demo-0.9-py3-none-any.whl")}]
    with db:
        db.execute(
            "INSERT INTO pages VALUES (?, ?, ?, ?)",
            ("main", "demo", time.time() - 60, json.dumps(page)),
        )
        db.execute("INSERT INTO retained VALUES (?, ?, ?)", ("main", "demo", json.dumps(gone)))
        db.execute("INSERT INTO first_seen VALUES (?, ?)", (SHA, FIRST_SEEN))
    db.close()


@pytest.fixture
async def upstream(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"))
    return await start_fake(fake)


async def test_an_upgraded_server_keeps_its_stale_pages_retained_files_and_first_seen_dates(
    upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Started over a cache dir of nightproxy 0.x with the upstream down, the proxy serves the
    page saved there (stale), dates its file by the first-seen time saved there, and holds the
    retained file saved there."""
    write_legacy_state(tmp_path / "cache", upstream.url("/files/demo-1.0-py3-none-any.whl"))
    upstream.down = True
    proxy = await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(upstream)}])
    )
    async with http.get(proxy.make_url("/simple/demo/"), headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Nightproxy-Stale"] == "main"
        doc = json.loads(await resp.read())
    [file] = doc["files"]
    assert file["filename"] == "demo-1.0-py3-none-any.whl"
    assert file["_nightproxy"]["build-time-source"] == "first-seen"
    assert file["_nightproxy"]["build-time"].startswith("2020-01-01T00:00:00")
    state = proxy.app[keys.INDEX_STATE]
    assert set(state.load_gone("main", "demo")) == {"demo-0.9-py3-none-any.whl"}


def test_the_old_tables_are_taken_over_once(tmp_path: Path) -> None:
    """The copy from ``state.sqlite`` happens when ``index.sqlite`` is made, never again: a
    page saved since is not overwritten by the old one at the next start."""
    write_legacy_state(tmp_path, "https://feed.invalid/demo-1.0-py3-none-any.whl")
    state = IndexState(tmp_path)
    state.open()
    newer = ProjectPage(
        name="demo",  # type: ignore[arg-type]
        files=(DistFile("demo-2.0-py3-none-any.whl", "https://feed.invalid/x.whl", "main"),),
    )
    state.save_page("main", time.time(), newer)
    state.close()
    again = IndexState(tmp_path)
    again.open()
    saved = again.load_page("main", "demo")
    again.close()
    assert saved is not None
    assert [f.filename for f in saved[1].files] == ["demo-2.0-py3-none-any.whl"]
    db = sqlite3.connect(tmp_path / FILENAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


@pytest.mark.parametrize("damage", ["garbage", "half", "directory"])
def test_an_unreadable_index_database_is_moved_aside_and_started_afresh(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, a truncated file or a directory in place of ``index.sqlite``: the state opens
    empty and works, the broken one is kept beside it, and one warning says so."""
    state = IndexState(tmp_path)
    state.open()
    state.first_seen([f"k{n}" for n in range(3000)], 1.0)
    state.close()
    path = tmp_path / FILENAME
    if damage == "garbage":
        path.write_bytes(b"not a database at all" * 100)
    elif damage == "half":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
        path.mkdir()
    for journal in ("-wal", "-shm"):
        tmp_path.joinpath(FILENAME + journal).unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        state = IndexState(tmp_path)
        state.open()
    assert state.first_seen(["k1"], 2.0) == {"k1": 2.0}
    state.close()
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "moved to" in r.message]
    assert list(tmp_path.glob(FILENAME + ".broken-*"))


def _write_many(root: str, worker: int, count: int) -> None:
    """In a process of its own: pages, keep_missing state and first-seen times."""
    state = IndexState(Path(root))
    state.open()
    for n in range(count):
        page = ProjectPage(
            name=f"p{worker}-{n}",  # type: ignore[arg-type]
            files=(DistFile(f"p{worker}_{n}-1.0-py3-none-any.whl", "https://f.invalid/", "u"),),
        )
        state.save_page("u", float(n), page)
        state.first_seen([f"w{worker}-{n}", "shared"], float(worker))
        state.save_gone("u", page.name, {})
    state.close()


def test_worker_processes_writing_at_once_lose_nothing_and_corrupt_nothing(
    tmp_path: Path,
) -> None:
    """Four processes writing the same ``index.sqlite`` at once: every write is there after,
    a key first seen by several keeps one time, and the database checks out whole."""
    IndexState(tmp_path).open()  # made once, as the first worker to start would
    workers, count = 4, 60
    with ProcessPoolExecutor(workers) as pool:
        for done in [pool.submit(_write_many, str(tmp_path), w, count) for w in range(workers)]:
            done.result()
    state = IndexState(tmp_path)
    state.open()
    for worker in range(workers):
        for n in range(0, count, 7):
            saved = state.load_page("u", f"p{worker}-{n}")
            assert saved is not None
            assert saved[0] == float(n)
    seen = state.first_seen(["shared", *(f"w{w}-{count - 1}" for w in range(workers))], 99.0)
    assert 99.0 not in seen.values()
    state.close()
    db = sqlite3.connect(tmp_path / FILENAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


async def undated_feed(request: web.Request) -> web.Response:
    """A PEP 503 page whose one file nothing dates (no upload time, no date in its version)."""
    link = '<a href="/files/demo-1.0-py3-none-any.whl#sha256=' + SHA + '">x</a>'
    return web.Response(text=f"<html><body>{link}</body></html>", content_type="text/html")


async def test_page_state_is_written_off_the_event_loop(
    aiohttp_server: Any,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Saving a fetched page and recording its files' first-seen times run in worker threads,
    never on the thread of the event loop."""
    feed = web.Application()
    feed.router.add_get("/simple/demo/", undated_feed)
    server = await aiohttp_server(feed)
    entry = {"name": "main", "kind": "simple", "url": str(server.make_url("/simple/"))}
    proxy = await start_proxy(make_config([entry]))
    state = proxy.app[keys.INDEX_STATE]
    calls: list[tuple[str, threading.Thread]] = []
    for name in ("save_page", "first_seen"):
        method = getattr(state, name)

        def spy(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            calls.append((_name, threading.current_thread()))
            return _method(*args, **kwargs)

        setattr(state, name, spy)
    async with http.get(proxy.make_url("/simple/demo/"), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 200
    assert {name for name, _thread in calls} == {"save_page", "first_seen"}
    assert threading.main_thread() not in {thread for _name, thread in calls}


def test_a_version_1_database_is_brought_forward_with_its_first_seen_times(
    tmp_path: Path,
) -> None:
    """A database of schema version 1 (first-seen times in a rowid table) keeps every time
    when it is brought to the current version."""
    db = sqlite3.connect(tmp_path / FILENAME)
    db.executescript(
        """
        CREATE TABLE pages (upstream TEXT NOT NULL, project TEXT NOT NULL,
            fetched_at REAL NOT NULL, body BLOB NOT NULL, encoding TEXT NOT NULL,
            PRIMARY KEY (upstream, project));
        CREATE TABLE retained (upstream TEXT NOT NULL, project TEXT NOT NULL,
            body TEXT NOT NULL, PRIMARY KEY (upstream, project));
        CREATE TABLE first_seen (key TEXT PRIMARY KEY, at REAL NOT NULL);
        PRAGMA user_version = 1;
        """
    )
    with db:
        db.executemany(
            "INSERT INTO first_seen VALUES (?, ?)", [(f"k{n}", float(n)) for n in range(50)]
        )
    db.close()
    state = IndexState(tmp_path)
    state.open()
    assert state.first_seen(["k7", "k49", "new"], 1000.0) == {"k7": 7.0, "k49": 49.0, "new": 1000.0}
    state.close()
    db = sqlite3.connect(tmp_path / FILENAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
