"""The records of a hosted feed: which files it holds, when and by whom they were uploaded,
and what lies in its trash, in one SQLite database.

The database is the authority on what the feed lists: a file is listed exactly when it has a
live row. Every change runs in one write transaction (``BEGIN IMMEDIATE``), which several
worker processes over one feed take in turn; the storage does its file moves inside it, so a
change and the bytes it refers to appear together or not at all. All of this is blocking:
callers on the event loop run it in a thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName

#: Bumped with each change of the schema; ``_MIGRATIONS[n]`` moves version n to n + 1.
SCHEMA_VERSION = 2
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        blake2_256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        upload_time REAL NOT NULL,
        aged_from REAL NOT NULL,
        uploader TEXT NOT NULL,
        metadata_sha256 TEXT,
        requires_python TEXT,
        trashed_at REAL,
        trash_reason TEXT,
        trash_detail TEXT
    );
    CREATE UNIQUE INDEX live_name ON files (project, filename) WHERE trashed_at IS NULL;
    CREATE INDEX by_sha ON files (sha256);
    CREATE INDEX by_metadata_sha ON files (metadata_sha256);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # Files whose <project>/<filename> link a change has yet to bring in line: what a crash
    # can leave half done, and all that opening the feed must look at.
    """
    CREATE TABLE pending (id INTEGER PRIMARY KEY);
    """,
)
_COLUMNS = (
    "id, project, filename, sha256, blake2_256, size, upload_time, aged_from, uploader, "
    "metadata_sha256, requires_python, trashed_at, trash_reason, trash_detail"
)
#: The counter every change increments, so that listings cached by other processes refresh.
GENERATION = "generation"
#: Prefix of the counters of deletions, per reason.
DELETED = "deleted:"


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One stored file: live, or in the trash (``trashed_at`` set)."""

    id: int
    project: NormalizedName
    filename: str
    sha256: str
    blake2_256: str
    size: int
    #: When its bytes were uploaded: published as PEP 700 ``upload-time``.
    upload_time: datetime
    #: What retention ages the file from: its upload, or its restore from the trash.
    aged_from: datetime
    #: Which token or publisher uploaded it (a label, never a secret).
    uploader: str
    #: The sha256 of its extracted METADATA (PEP 658), for wheels.
    metadata_sha256: str | None
    requires_python: str | None
    trashed_at: datetime | None = None
    #: Why it was deleted: ``retention``, ``manual``, ``replaced`` or ``missing``.
    trash_reason: str | None = None
    #: The details a person reads (the rule, group and age; who deleted it).
    trash_detail: str | None = None


@dataclass(frozen=True, slots=True)
class NewFile:
    """What an accepted upload adds."""

    project: NormalizedName
    filename: str
    sha256: str
    blake2_256: str
    size: int
    uploader: str
    requires_python: str | None
    metadata_sha256: str | None
    upload_time: datetime


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _record(row: Sequence[Any]) -> FileRecord:
    upload_time = datetime.fromtimestamp(row[6], UTC)
    aged_from = datetime.fromtimestamp(row[7], UTC)
    return FileRecord(
        id=row[0],
        project=NormalizedName(row[1]),
        filename=row[2],
        sha256=row[3],
        blake2_256=row[4],
        size=row[5],
        upload_time=upload_time,
        aged_from=aged_from,
        uploader=row[8],
        metadata_sha256=row[9],
        requires_python=row[10],
        trashed_at=_time(row[11]),
        trash_reason=row[12],
        trash_detail=row[13],
    )


class RecordDB:
    """The feed's database; one connection per process, used from any thread under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        #: The schema version found on opening (0: a new database).
        self.migrated_from = SCHEMA_VERSION
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA journal_mode=WAL")
            # An upload answered 200 must survive a power cut, not only a crash.
            db.execute("PRAGMA synchronous=FULL")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the feed database has schema {version}; this nightproxy knows up to "
                    f"{SCHEMA_VERSION}: upgrade nightproxy"
                )
            self.migrated_from = int(version)
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def write(self, *, change: bool = True) -> Iterator[Writer]:
        """One write transaction; every process's writers take turns. Commits on success.

        ``change``: the feed's listing changes (its generation moves on).
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Writer(self._db)
                if change:
                    self._bump(GENERATION)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def generation(self) -> int:
        """Changes whenever any process changed the feed."""
        with self._lock:
            return Writer(self._db).generation()

    def live(self, project: NormalizedName | None = None) -> list[FileRecord]:
        return self._select("trashed_at IS NULL", project)

    def trashed(self, project: NormalizedName | None = None) -> list[FileRecord]:
        return self._select("trashed_at IS NOT NULL", project)

    def _select(self, where: str, project: NormalizedName | None) -> list[FileRecord]:
        query = f"SELECT {_COLUMNS} FROM files WHERE {where}"  # noqa: S608 - fixed fragments
        args: tuple[str, ...] = ()
        if project is not None:
            query += " AND project = ?"
            args = (project,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [_record(row) for row in rows]

    def settled(self, ids: Collection[int]) -> None:
        """These files' links are in line with their records."""
        if ids:
            with self.write(change=False) as writer:
                writer.settle(ids)

    def deletions(self) -> dict[str, int]:
        """Files deleted so far, per reason."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, value FROM counters WHERE name LIKE ?", (DELETED + "%",)
            ).fetchall()
        return {name[len(DELETED) :]: int(value) for name, value in rows}


class Writer:
    """The statements of one write transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def generation(self) -> int:
        found = self._db.execute(
            "SELECT value FROM counters WHERE name = ?", (GENERATION,)
        ).fetchone()
        return int(found[0]) if found else 0

    def live_named(self, project: NormalizedName, filename: str) -> FileRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM files "  # noqa: S608 - fixed fragments
            "WHERE project = ? AND filename = ? AND trashed_at IS NULL",
            (project, filename),
        ).fetchone()
        return None if row is None else _record(row)

    def by_ids(self, ids: Collection[int]) -> list[FileRecord]:
        found = []
        for record_id in sorted(set(ids)):
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM files WHERE id = ?",  # noqa: S608 - fixed fragments
                (record_id,),
            ).fetchone()
            if row is not None:
                found.append(_record(row))
        return found

    def insert(self, new: NewFile) -> FileRecord:
        stamp = new.upload_time.timestamp()
        cursor = self._db.execute(
            "INSERT INTO files (project, filename, sha256, blake2_256, size, upload_time, "
            "aged_from, uploader, metadata_sha256, requires_python) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new.project,
                new.filename,
                new.sha256,
                new.blake2_256,
                new.size,
                stamp,
                stamp,
                new.uploader,
                new.metadata_sha256,
                new.requires_python,
            ),
        )
        record_id = cursor.lastrowid
        assert record_id is not None
        return self.by_ids([record_id])[0]

    def trash(self, record: FileRecord, reason: str, detail: str, now: datetime) -> None:
        self._db.execute(
            "UPDATE files SET trashed_at = ?, trash_reason = ?, trash_detail = ? "
            "WHERE id = ? AND trashed_at IS NULL",
            (now.timestamp(), reason, detail, record.id),
        )
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (DELETED + reason,),
        )

    def restore(self, record: FileRecord, now: datetime) -> None:
        self._db.execute(
            "UPDATE files SET trashed_at = NULL, trash_reason = NULL, trash_detail = NULL, "
            "aged_from = ? WHERE id = ?",
            (now.timestamp(), record.id),
        )

    def forget(self, record: FileRecord) -> None:
        self._db.execute("DELETE FROM files WHERE id = ?", (record.id,))

    def unsettled(self, ids: Collection[int]) -> None:
        """Mark files whose links this transaction's change leaves to be brought in line."""
        self._db.executemany("INSERT OR IGNORE INTO pending (id) VALUES (?)", [(i,) for i in ids])

    def settle(self, ids: Collection[int]) -> None:
        self._db.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in ids])

    def settle_all(self) -> None:
        self._db.execute("DELETE FROM pending")

    def pending(self) -> list[FileRecord]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE id IN (SELECT id FROM pending)"  # noqa: S608
        ).fetchall()
        return [_record(row) for row in rows]

    def live_digests(self) -> set[str]:
        rows = self._db.execute("SELECT sha256 FROM files WHERE trashed_at IS NULL")
        return {sha for (sha,) in rows}

    def referenced(self, digest: str) -> bool:
        """Whether any row, live or trashed, needs the blob of ``digest``."""
        row = self._db.execute(
            "SELECT 1 FROM files WHERE sha256 = ? OR metadata_sha256 = ? LIMIT 1",
            (digest, digest),
        ).fetchone()
        return row is not None

    def all_digests(self) -> set[str]:
        digests: set[str] = set()
        for sha, metadata_sha in self._db.execute("SELECT sha256, metadata_sha256 FROM files"):
            digests.add(sha)
            if metadata_sha is not None:
                digests.add(metadata_sha)
        return digests
