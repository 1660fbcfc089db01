"""The cache's records in ``state.sqlite``, as this process reads and keeps them.

The database is shared by every process serving the cache directory; this layer keeps the
memory view (``view.py``) in step with it: loading it, applying the change log other
processes append to, writing this process's uses of blobs, and the checks of blobs' bytes.
Every method does disk I/O: callers on the event loop run them in a thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nightproxy.cache import recovery
from nightproxy.cache.db import Database
from nightproxy.cache.layout import is_sha256, owner_token
from nightproxy.cache.view import BlobRecord, CacheView, Entry

#: Entries of the change log older than this are dropped; a view further behind reloads.
CHANGE_LOG_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: a blob admitted (under ``key``), evicted, or aliased."""

    kind: str
    sha256: str
    key: str
    filename: str
    #: The process that made the change (``layout.owner_token``).
    owner: str


class CacheRecords(CacheView):
    def __init__(self, root: Path, max_size: int, max_age: float) -> None:
        super().__init__(root, max_size, max_age)
        self.owner = owner_token()
        self._db: Database | None = None
        self._seq = 0
        self._staged = 0

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("cache store is not open")
        return self._db

    def close(self) -> None:
        if self._db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self.flush()
        self._db.close()
        self._db = None

    def reload(self) -> None:
        """Disk I/O. Replace the memory view with what the database says."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT sha256, size, last_use, filename, upstream FROM blobs"
            ).fetchall()
            names = db.execute("SELECT sha256, filename FROM blob_names").fetchall()
            aliases = dict(db.execute("SELECT key, sha256 FROM aliases").fetchall())
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
        entries = {
            sha: Entry(size, last_use, name, upstream=up) for sha, size, last_use, name, up in rows
        }
        for sha, filename in names:
            if (entry := entries.get(sha)) is not None:
                entry.add_name(filename)
        self._replace(entries, aliases)
        self._seq = seq

    def _delete_records(self, db: sqlite3.Connection, digests: list[str]) -> None:
        rows = [(sha,) for sha in digests]
        db.executemany("DELETE FROM blobs WHERE sha256 = ?", rows)
        db.executemany("DELETE FROM blob_names WHERE sha256 = ?", rows)
        db.executemany("DELETE FROM aliases WHERE sha256 = ?", rows)
        now = time.time()
        db.executemany(
            "INSERT INTO changes (at, kind, sha256, owner) VALUES (?, 'evict', ?, ?)",
            [(now, sha, self.owner) for sha in digests],
        )

    def staged_path(self, name: str) -> Path:
        """A new private temporary file name of this process."""
        self._staged += 1
        return self.layout.staged_path(name, self._staged)

    def temp_path(self, key: str) -> Path:
        return self.staged_path(key)

    # -- other processes' changes (disk I/O) --------------------------------------------------

    def lookup(self, key: str, filename: str | None = None) -> str | None:
        """Disk I/O. ``resolve`` asked of the database, for what another process admitted."""
        with self.db.read() as db:
            sha = key if is_sha256(key) else _one(db, "SELECT sha256 FROM aliases WHERE key=?", key)
            if sha is None:
                return None
            row = db.execute(
                "SELECT size, last_use, filename, upstream FROM blobs WHERE sha256 = ?", (sha,)
            ).fetchone()
            cursor = db.execute("SELECT filename FROM blob_names WHERE sha256 = ?", (sha,))
            names = [name for (name,) in cursor.fetchall()]
        if row is None:
            self._forget(sha)
            return None
        entry = self._remember(sha, row[0], row[2], row[3])
        for name in names:
            entry.add_name(name)
        if key != sha:
            self._aliases[key] = sha
        return self.resolve(key, filename)

    def sync(self) -> list[Change]:
        """Disk I/O. Bring the memory view up to date with the change log; what changed."""
        with self.db.read() as db:
            first = db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
            rows = db.execute(
                "SELECT seq, kind, sha256, key, filename, owner FROM changes WHERE seq > ? "
                "ORDER BY seq",
                (self._seq,),
            ).fetchall()
        if first is not None and first > self._seq + 1 and self._seq:
            self.reload()  # fell behind the trimmed log
            return []
        changes = []
        for seq, kind, sha, key, filename, owner in rows:
            self._seq = seq
            if owner == self.owner:
                continue  # applied when it was made
            if kind == "evict":
                self._forget(sha)
            elif kind == "admit":
                self.lookup(key or sha)
            elif kind == "alias":
                self.lookup(key)
            changes.append(Change(kind, sha, key, filename, owner))
        return changes

    def trim_changes(self) -> None:
        """Disk I/O. Drop change-log entries every live view has long applied."""
        with self.db.write() as db:
            db.execute("DELETE FROM changes WHERE at < ?", (time.time() - CHANGE_LOG_SECONDS,))

    # -- recency (disk I/O) -------------------------------------------------------------------

    def flush(self) -> None:
        """Disk I/O. Persist last-use times changed since the previous flush."""
        if not self._dirty or self._db is None:
            return
        with self.write_with_uses():
            pass

    @contextlib.contextmanager
    def write_with_uses(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that first writes this process's uses of blobs, so that what it
        decides sees them; they are kept for the next one if it rolls back."""
        # This runs in a thread while the event loop keeps touching blobs: the touches are
        # swapped out under a lock, and put back if the transaction does not commit.
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, {}
        try:
            with self.db.write() as db:
                db.executemany(
                    "UPDATE blobs SET last_use = CASE WHEN ? THEN ? ELSE MAX(last_use, ?) END "
                    "WHERE sha256 = ?",
                    [(explicit, when, when, sha) for sha, (when, explicit) in dirty.items()],
                )
                yield db
        except BaseException:
            with self._dirty_lock:
                self._dirty = {**dirty, **self._dirty}  # written next time, not forgotten
            raise

    def snapshot(self) -> tuple[list[BlobRecord], dict[str, str]]:
        """Disk I/O. Every blob's record, least recently used first, and every alias."""
        self.flush()
        with self.db.read() as db:
            rows = db.execute(
                "SELECT sha256, size, last_use, filename, upstream FROM blobs "
                "ORDER BY last_use, rowid"
            ).fetchall()
            aliases = dict(db.execute("SELECT key, sha256 FROM aliases").fetchall())
        blobs: list[BlobRecord] = [
            {"sha256": sha, "size": size, "last_use": last_use, "filename": name, "upstream": up}
            for sha, size, last_use, name, up in rows
        ]
        return blobs, aliases

    def due_for_check(self, before: float) -> tuple[str, int] | None:
        """Disk I/O. The blob least recently checked, if that was before ``before``."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT sha256, size FROM blobs WHERE verified_at < ? ORDER BY verified_at LIMIT 1",
                (before,),
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def mark_verified(self, sha256: str) -> None:
        """Disk I/O. A blob's bytes were found to match its name just now."""
        with self.db.write() as db:
            db.execute("UPDATE blobs SET verified_at = ? WHERE sha256 = ?", (time.time(), sha256))

    def _digest_matches(self, sha256: str) -> bool:
        """Disk I/O. Whether a blob's bytes hash to its name; a vanished one does not."""
        return recovery.digest_matches(self.path_for(sha256), sha256)


def _one(db: sqlite3.Connection, sql: str, *args: object) -> str | None:
    row = db.execute(sql, args).fetchone()
    return None if row is None else str(row[0])
