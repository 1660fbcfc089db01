"""What the index keeps across restarts, in its own ``index.sqlite`` in ``cache.dir``: each
upstream's last good page (stale-if-error), the files upstreams stopped listing
(keep_missing) and when each file was first seen (build dates).

It is only ever a help: a page that cannot be saved is still served, and a database that
cannot be read is moved aside (kept for inspection) and started afresh. Several worker
processes share the file: WAL, a busy timeout, short transactions, every call from a thread.
The schema's version is ``PRAGMA user_version``; ``MIGRATIONS`` bring it forward one step at a
time, the first taking over these tables from the cache's ``state.sqlite`` of nightproxy 0.x.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from nightproxy.cache.db import BUSY_TIMEOUT, connect_checked, open_or_replace, run_migrations
from nightproxy.index.codec import (
    gone_from_json,
    gone_to_json,
    packed_page,
    page_from_json,
    page_from_packed,
)
from nightproxy.model import DistFile, ProjectPage

log = logging.getLogger(__name__)

Migration = Callable[[sqlite3.Connection], None]

FILENAME = "index.sqlite"
#: The combined database of nightproxy 0.x, whose index tables version 1 takes over.
LEGACY_FILENAME = "state.sqlite"
#: First-seen times are recorded in transactions of at most this many keys, so that a page of
#: 200,000 files does not hold the write lock against the other workers for long.
FIRST_SEEN_BATCH = 10_000

#: Files an upstream stopped listing, by filename, with the time it stopped.
Gone = dict[str, tuple[DistFile, float]]


def _to_v1(db: sqlite3.Connection, root: Path) -> None:
    db.execute(
        """CREATE TABLE IF NOT EXISTS pages (
            upstream TEXT NOT NULL,
            project TEXT NOT NULL,
            fetched_at REAL NOT NULL,
            body BLOB NOT NULL,
            encoding TEXT NOT NULL,
            PRIMARY KEY (upstream, project)
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS retained (
            upstream TEXT NOT NULL,
            project TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (upstream, project)
        )"""
    )
    db.execute("CREATE TABLE IF NOT EXISTS first_seen (key TEXT PRIMARY KEY, at REAL NOT NULL)")
    _take_over_legacy(db, root / LEGACY_FILENAME)


def _take_over_legacy(db: sqlite3.Connection, legacy: Path) -> None:
    """Copy the index's tables out of the combined database of nightproxy 0.x, so that an
    upgraded server keeps its stale pages, retained files and first-seen dates."""
    if not legacy.is_file():
        return
    try:
        old = sqlite3.connect(f"file:{legacy}?mode=ro", uri=True, timeout=BUSY_TIMEOUT / 1000)
    except sqlite3.Error as exc:
        log.warning("could not read %s to take over its pages: %s", legacy, exc)
        return
    copied = 0
    try:
        tables = {row[0] for row in old.execute("SELECT name FROM sqlite_master")}
        if "pages" in tables:
            for rows in _batches(old, "SELECT upstream, project, fetched_at, body FROM pages"):
                db.executemany(
                    "INSERT OR IGNORE INTO pages VALUES (?, ?, ?, ?, 'json')",
                    [(u, p, f, str(b)) for u, p, f, b in rows],
                )
                copied += len(rows)
        if "retained" in tables:
            for rows in _batches(old, "SELECT upstream, project, body FROM retained"):
                db.executemany("INSERT OR IGNORE INTO retained VALUES (?, ?, ?)", rows)
        if "first_seen" in tables:
            for rows in _batches(old, "SELECT key, at FROM first_seen"):
                db.executemany("INSERT OR IGNORE INTO first_seen VALUES (?, ?)", rows)
    except sqlite3.Error as exc:
        # A broken old database costs its pages, not the start-up.
        log.warning("could not take over the pages of %s: %s", legacy, exc)
    finally:
        old.close()
    if copied:
        log.info("took over %d saved pages from %s", copied, legacy)


def _to_v2(db: sqlite3.Connection, _root: Path) -> None:
    """First-seen times in a table without rowids: one B-tree to write per new file instead
    of two (a page of 200,000 new files is 200,000 inserts of random keys)."""
    db.execute("CREATE TABLE first_seen_v2 (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO first_seen_v2 SELECT key, at FROM first_seen")
    db.execute("DROP TABLE first_seen")
    db.execute("ALTER TABLE first_seen_v2 RENAME TO first_seen")


def _batches(db: sqlite3.Connection, query: str) -> Iterator[list[tuple[object, ...]]]:
    cursor = db.execute(query)
    while rows := cursor.fetchmany(1000):
        yield rows


MIGRATIONS: tuple[Callable[[sqlite3.Connection, Path], None], ...] = (_to_v1, _to_v2)
SCHEMA_VERSION = len(MIGRATIONS)


class IndexState:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / FILENAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # -- opening (disk I/O: run in a thread) ----------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database and bring its schema forward; one that cannot be read
        is moved aside and replaced by an empty one."""
        self.root.mkdir(parents=True, exist_ok=True)
        root = self.root

        def at_root(step: Callable[[sqlite3.Connection, Path], None]) -> Migration:
            return lambda db: step(db, root)

        def migrate(db: sqlite3.Connection) -> None:
            run_migrations(db, [at_root(step) for step in MIGRATIONS])

        # Workers starting at once take turns: only the first moves a broken file aside (the
        # next would move the first one's new database).
        self._db, note = open_or_replace(
            self.path,
            lambda path: connect_checked(path, migrate),
            self.root / f"{FILENAME}.lock",
        )
        if note is not None:
            log.warning("%s; saved pages start afresh", note)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._open_db()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                # SQLite may have rolled back already (a full disk): nothing left to undo.
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, query: str, args: tuple[object, ...]) -> tuple[object, ...] | None:
        """One row, or None; an unreadable database is an absent row, with a warning."""
        try:
            with self._lock:
                if self._db is None:
                    return None
                row: tuple[object, ...] | None = self._db.execute(query, args).fetchone()
                return row
        except sqlite3.Error as exc:
            log.warning("could not read saved page state (%s)", exc)
            return None

    # -- last good pages ------------------------------------------------------------------------

    def save_page(self, upstream: str, fetched_at: float, page: ProjectPage) -> None:
        """Keep an upstream's last good page for stale-if-error across restarts."""
        body = packed_page(page)
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, 'packed')",
                (upstream, page.name, fetched_at, body),
            )

    def touch_page(self, upstream: str, project: str, fetched_at: float) -> None:
        """The upstream confirmed its page (304): it is good as of ``fetched_at``."""
        with self._write() as db:
            db.execute(
                "UPDATE pages SET fetched_at = ? WHERE upstream = ? AND project = ?",
                (fetched_at, upstream, project),
            )

    def load_page(self, upstream: str, project: str) -> tuple[float, ProjectPage] | None:
        """A persisted page and when it was last known good; None if absent or unreadable."""
        row = self._read(
            "SELECT fetched_at, body, encoding FROM pages WHERE upstream = ? AND project = ?",
            (upstream, project),
        )
        if row is None:
            return None
        fetched_at, body, encoding = row
        try:
            if encoding == "packed" and isinstance(body, bytes):
                return float(str(fetched_at)), page_from_packed(body)
            text = body.decode() if isinstance(body, bytes) else str(body)
            return float(str(fetched_at)), page_from_json(text)
        except (ValueError, KeyError, TypeError, zlib.error):
            return None

    # -- keep_missing ---------------------------------------------------------------------------

    def save_gone(self, upstream: str, project: str, gone: Gone) -> None:
        """The keep_missing state of one upstream's project."""
        body = gone_to_json(gone)
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO retained VALUES (?, ?, ?)", (upstream, project, body)
            )

    def load_gone(self, upstream: str, project: str) -> Gone:
        row = self._read(
            "SELECT body FROM retained WHERE upstream = ? AND project = ?", (upstream, project)
        )
        if row is None:
            return {}
        try:
            return gone_from_json(str(row[0]))
        except (ValueError, KeyError, TypeError):
            return {}

    # -- first-seen times -----------------------------------------------------------------------

    def first_seen(self, keys: list[str], now: float) -> dict[str, float]:
        """When each key was first seen, recording ``now`` for new ones.

        Known keys are only read (no write lock); new ones are written in short transactions
        and read back, since another process may have seen them first. Unreadable or
        unwritable, a key counts as seen ``now``: a build date is then only less precise.
        """
        found: dict[str, float] = {}
        try:
            for start in range(0, len(keys), FIRST_SEEN_BATCH):
                batch = keys[start : start + FIRST_SEEN_BATCH]
                with self._lock:
                    found.update(self._seen(self._open_db(), batch))
                new = [k for k in batch if k not in found]
                if new:
                    with self._write() as db:
                        db.executemany(
                            "INSERT OR IGNORE INTO first_seen VALUES (?, ?)",
                            [(k, now) for k in new],
                        )
                        found.update(self._seen(db, new))
        except sqlite3.Error as exc:
            log.warning("could not record first-seen times (%s)", exc)
        return found

    @staticmethod
    def _seen(db: sqlite3.Connection, keys: list[str]) -> Iterator[tuple[str, float]]:
        rows: list[tuple[str, float]] = []
        for offset in range(0, len(keys), 500):
            chunk = keys[offset : offset + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, at FROM first_seen WHERE key IN ({marks})"  # noqa: S608
            rows.extend(db.execute(query, chunk))
        return iter(rows)

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("index state is not open")
        return self._db
