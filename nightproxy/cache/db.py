"""``state.sqlite``: opened safely by several processes, versioned, and never fatal when broken.

The schema carries its version in ``PRAGMA user_version`` and is brought forward one step at a
time by ``MIGRATIONS`` (version 0 is the unversioned schema of nightproxy 0.x, and also an
empty file). A database that cannot be read at all (not a database, torn, a directory in its
place) is moved aside, kept for inspection, and replaced by an empty one: the caller rebuilds
what the cache holds from the blobs on disk. A database written by a newer nightproxy is never
touched.

Every statement runs under ``Database.lock`` (one connection per process, used from worker
threads) in short transactions; writers take SQLite's write lock up front (``BEGIN
IMMEDIATE``) and wait for other processes' writers for at most ``BUSY_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from nightproxy.cache.locks import exclusive

#: Milliseconds a statement waits for another process's write transaction.
BUSY_TIMEOUT = 15_000


class DatabaseTooNewError(Exception):
    """The database was written by a newer nightproxy; this one will not change it."""


# -- the schema, step by step ---------------------------------------------------------------

#: The cache's tables of the unversioned schema (version 0), which nightproxy 0.x wrote. Its
#: index tables (pages, retained, first_seen) are the index's to take over (``index/state.py``)
#: and are left alone here.
_V0_TABLES = (
    """CREATE TABLE IF NOT EXISTS blobs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        last_use REAL NOT NULL,
        created REAL NOT NULL,
        filename TEXT NOT NULL DEFAULT '',
        upstream TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE IF NOT EXISTS blob_names (
        sha256 TEXT NOT NULL,
        filename TEXT NOT NULL,
        PRIMARY KEY (sha256, filename)
    )""",
    "CREATE TABLE IF NOT EXISTS aliases (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL)",
)


def _to_v1(db: sqlite3.Connection) -> None:
    """Shared by several processes: reservations of budget, downloads in progress, a log of
    changes for the other processes' views, and when each blob was last verified."""
    for statement in _V0_TABLES:
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(blobs)")}
    if "verified_at" not in columns:
        db.execute("ALTER TABLE blobs ADD COLUMN verified_at REAL NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX IF NOT EXISTS blobs_by_use ON blobs (last_use)")
    db.execute("CREATE INDEX IF NOT EXISTS blobs_by_check ON blobs (verified_at)")
    db.execute("CREATE INDEX IF NOT EXISTS aliases_by_sha ON aliases (sha256)")
    db.execute(
        """CREATE TABLE reservations (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            size INTEGER NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE fills (
            key TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            owner TEXT NOT NULL,
            ino INTEGER NOT NULL,
            size INTEGER,
            ready INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            sha256 TEXT NOT NULL DEFAULT '',
            cached INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '',
            updated REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            key TEXT NOT NULL DEFAULT '',
            filename TEXT NOT NULL DEFAULT '',
            owner TEXT NOT NULL DEFAULT ''
        )"""
    )


#: ``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_to_v1,)
SCHEMA_VERSION = len(MIGRATIONS)


# -- the connection -------------------------------------------------------------------------


class Database:
    """One process's connection, shared by its threads one statement group at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            yield self.conn

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def open_database(path: Path, lock_path: Path) -> tuple[Database, str | None]:
    """Open (creating or migrating) the database; and what was wrong with it, if anything.

    A database that cannot be used is renamed to ``<name>.broken-<time>`` (with its journal
    files) and a new one is made in its place; the returned note says so. Several processes
    starting at once take turns (``lock_path``), so only the first moves a broken one.
    """
    conn, note = open_or_replace(path, _connect, lock_path)
    return Database(conn), note


def _connect(path: Path) -> sqlite3.Connection:
    def migrate(conn: sqlite3.Connection) -> None:
        _refuse_newer(conn, path)  # again: another process may have written meanwhile
        run_migrations(conn, MIGRATIONS)

    return connect_checked(path, migrate, before=lambda conn: _refuse_newer(conn, path))


def open_or_replace(
    path: Path, connect: Callable[[Path], sqlite3.Connection], lock_path: Path
) -> tuple[sqlite3.Connection, str | None]:
    """Disk I/O. ``connect(path)``; if the file cannot be used as a database, move it aside
    (``move_aside``) and connect to a new one. Returns the connection and, after a move, a
    note saying so. A failure that says nothing about the file (``passing_failure``) and a
    database too new are raised instead.

    Processes starting at once take turns (``lock_path``), so that only the first moves a
    broken file aside: the next would move the new database the first one made.
    """
    with exclusive(lock_path):
        try:
            return _patiently(connect, path), None
        except DatabaseTooNewError:
            raise
        except (sqlite3.DatabaseError, OSError) as exc:
            if passing_failure(exc):
                raise
            aside = move_aside(path)
            note = f"{path.name} was unreadable ({_describe(exc)}); moved to {aside.name}"
        return _patiently(connect, path), note


def _patiently(connect: Callable[[Path], sqlite3.Connection], path: Path) -> sqlite3.Connection:
    """``connect(path)``, again while another process holds the lock it needs: switching the
    journal to WAL answers "database is locked" at once, without the busy timeout, while
    another process starting beside this one is doing the same."""
    deadline = time.monotonic() + BUSY_TIMEOUT / 1000
    while True:
        try:
            return connect(path)
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code not in _BUSY_CODES or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def connect_checked(
    path: Path,
    migrate: Callable[[sqlite3.Connection], None],
    *,
    before: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """Disk I/O. A connection to the WAL database at ``path``, shared by processes (busy
    timeout; transactions begun by hand, so that a writer takes the write lock up front and two
    processes never deadlock upgrading read locks), checked (``quick_check``) and migrated.
    ``before`` runs first, before anything is written (even the journal mode)."""
    if path.exists() and not path.is_file():
        raise sqlite3.DatabaseError("not a regular file")
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT}")
        if before is not None:
            before(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems))
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def run_migrations(
    conn: sqlite3.Connection, steps: Sequence[Callable[[sqlite3.Connection], None]]
) -> None:
    """Bring ``PRAGMA user_version`` forward to ``len(steps)``, running the steps it lacks in
    one write transaction; a newer version is left as it is."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= len(steps):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in steps[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {max(version, len(steps))}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _refuse_newer(conn: sqlite3.Connection, path: Path) -> None:
    """Before anything is written (even the journal mode): a newer schema is not ours."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise DatabaseTooNewError(
            f"{path} has schema version {version}; this nightproxy knows up to "
            f"{SCHEMA_VERSION}: use the newer nightproxy, or another cache.dir"
        )


def move_aside(path: Path) -> Path:
    """Disk I/O. Rename a broken SQLite database (and its journal files) to
    ``<name>.broken-<time>``, kept for inspection; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    path.rename(aside)
    for suffix in ("-wal", "-shm"):
        journal = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            journal.rename(aside.with_name(aside.name + suffix))
    return aside


#: SQLite result codes that say nothing about the file itself: busy, locked, read-only,
#: permissions, full, out of memory, interrupted. Such a database is never moved aside.
_PASSING_CODES = frozenset({3, 5, 6, 7, 8, 9, 13})
#: SQLITE_BUSY and SQLITE_LOCKED: another connection holds what this one needs, for now.
_BUSY_CODES = frozenset({5, 6})


def passing_failure(exc: BaseException) -> bool:
    """Whether opening a database failed for a reason that says nothing about the file
    (busy, locked, permissions, full...): such a database is never moved aside."""
    if isinstance(exc, PermissionError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _PASSING_CODES


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
