"""What the cache holds, and the decisions that change it: budget, eviction, admission.

The database is the authority, shared by every process serving the cache directory: sizes,
last use, names, aliases, and the reservations of budget taken by downloads in progress
(``records.py`` keeps this process's view of it in step). Admission, eviction and
reservations are decided inside one write transaction each, so the budget holds across
processes at every moment; a blob being served by any process is pinned
(``locks.pin_blob``) and skipped.

A blob is only ever created by renaming (or linking) a complete, verified temporary file into
place. Methods marked "Disk I/O" block: callers on the event loop run them in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from nightproxy.cache import recovery
from nightproxy.cache.db import open_database
from nightproxy.cache.layout import is_sha256, owner_alive
from nightproxy.cache.locks import claim_blob
from nightproxy.cache.records import CacheRecords, Change
from nightproxy.cache.view import BlobRecord, Entry, Stats

__all__ = ["BlobRecord", "CacheStore", "Change", "Entry", "Stats", "is_sha256"]

log = logging.getLogger(__name__)

#: Blobs without a database row are hashed at start-up up to this many (crash leftovers);
#: more mean a lost database, and are kept at their size (verified when first served).
ROWLESS_HASH_LIMIT = 100


class _NoRoomError(Exception):
    pass


class CacheStore(CacheRecords):
    def __init__(self, root: Path, max_size: int, max_age: float) -> None:
        super().__init__(root, max_size, max_age)
        self.evictions = 0

    # -- start-up and shutdown (disk I/O: run in a thread) -----------------------------------

    def open(self, *, clean_tmp: bool = True) -> None:
        """Create the layout, open (or rebuild) the database, reconcile it with the blobs.

        Only the server cleans ``tmp/``, and only of what no live process owns: the cache
        commands run beside live servers, whose downloads in progress live there.
        """
        self.layout.make_dirs()
        self._db, moved = open_database(self.layout.db_path, self.layout.lock_dir / "state.lock")
        if clean_tmp:
            recovery.clean_tmp(self.layout)
        found = recovery.reconcile(self, rowless_limit=ROWLESS_HASH_LIMIT, rebuilt=moved)
        if moved is not None:
            log.warning(
                "%s; the record of %d cached files was rebuilt from %s",
                moved,
                found,
                self.blob_dir,
            )
        self.reload()

    # -- budget and eviction (disk I/O) -------------------------------------------------------

    def reserve(self, size: int) -> list[str] | None:
        """Disk I/O. Reserve ``size`` bytes of the budget, evicting least recently used blobs.

        Returns the evicted digests (already deleted), or None when the room cannot be made:
        the file is larger than the budget, or what would have to go is in use by some
        process. The reservation counts for every process until ``release`` or ``admitted``.
        """
        if size > self.max_size:
            return None
        try:
            return [sha for sha, _size in self._evict(size, None)]
        except _NoRoomError:
            return None

    def expired(self, now: float | None = None) -> list[str]:
        """Disk I/O. Delete blobs unused for longer than ``max_age``; return their digests."""
        return [sha for sha, _size in self._evict(None, self._cutoff(now))]

    def prune(self, now: float, *, dry_run: bool = False) -> list[tuple[str, int]]:
        """Disk I/O. Delete what is too old, then what is over the budget (``nightproxy cache
        prune``); with ``dry_run``, only say which blobs (and sizes) that would be."""
        return self._evict(0, self._cutoff(now), dry_run=dry_run)

    def _cutoff(self, now: float | None) -> float | None:
        if self.max_age == float("inf"):
            return None
        return (time.time() if now is None else now) - self.max_age

    def _evict(
        self, size: int | None, cutoff: float | None, *, dry_run: bool = False
    ) -> list[tuple[str, int]]:
        """In one transaction: claim the blobs unused since ``cutoff``, then (with ``size``)
        least recently used ones until ``size`` more bytes fit, and reserve them."""
        claims: list[tuple[str, int, int | None]] = []
        try:
            with self.write_with_uses() as db:
                need = -1.0
                if size is not None:
                    need = self._used_and_reserved(db) + size - self.max_size
                rows = db.execute(
                    "SELECT sha256, size, last_use FROM blobs ORDER BY last_use, rowid"
                )
                while batch := rows.fetchmany(256):
                    if not self._claim(batch, cutoff, need, claims):
                        break
                need -= sum(claimed for _sha, claimed, _fd in claims)
                if size is not None and need > 0:
                    raise _NoRoomError
                victims = [(sha, claimed) for sha, claimed, _fd in claims]
                if dry_run:
                    return victims
                if size:
                    db.execute(
                        "INSERT INTO reservations (owner, size) VALUES (?, ?)", (self.owner, size)
                    )
                self._delete_records(db, [sha for sha, _size in victims])
                for sha, _size in victims:
                    with contextlib.suppress(FileNotFoundError):
                        self.path_for(sha).unlink()
        finally:
            for _sha, _size, fd in claims:
                if fd is not None:
                    os.close(fd)
        for sha, _size in victims:
            self._forget(sha)
        self.evictions += len(victims)
        return victims

    def _claim(
        self,
        rows: list[tuple[str, int, float]],
        cutoff: float | None,
        need: float,
        claims: list[tuple[str, int, int | None]],
    ) -> bool:
        """Lock blobs for deletion, in order: those unused since ``cutoff``, then others
        while ``need`` bytes are still wanted. False once no further row qualifies. Blobs
        pinned here or by any process are skipped."""
        need -= sum(claimed for _sha, claimed, _fd in claims)
        for sha, size, last_use in rows:
            if not (cutoff is not None and last_use < cutoff) and need <= 0:
                return False
            if self._pins.get(sha):
                continue
            try:
                fd = claim_blob(self.path_for(sha))
            except FileNotFoundError:
                fd = None  # gone already: only its record is left to delete
            else:
                if fd is None:
                    continue
            claims.append((sha, size, fd))
            need -= size
        return True

    def _used_and_reserved(self, db: sqlite3.Connection) -> int:
        owners = [row[0] for row in db.execute("SELECT DISTINCT owner FROM reservations")]
        dead = [(owner,) for owner in owners if not owner_alive(owner)]
        db.executemany("DELETE FROM reservations WHERE owner = ?", dead)
        used, reserved = db.execute(
            "SELECT (SELECT COALESCE(SUM(size), 0) FROM blobs), "
            "(SELECT COALESCE(SUM(size), 0) FROM reservations)"
        ).fetchone()
        return int(used) + int(reserved)

    def release(self, size: int) -> None:
        """Disk I/O. Give back a reservation that will not be admitted."""
        if size <= 0:
            return
        with self.db.write() as db:
            self._release_into(db, size)

    def _release_into(self, db: sqlite3.Connection, size: int) -> None:
        db.execute(
            "DELETE FROM reservations WHERE id = "
            "(SELECT id FROM reservations WHERE owner = ? AND size = ? LIMIT 1)",
            (self.owner, size),
        )

    def delete_blobs(self, digests: list[str]) -> None:
        """Disk I/O. Delete blobs whatever uses them (they are known bad, or already evicted
        by ``reserve``/``expired``, in which case this changes nothing)."""
        if not digests:
            return
        with self.db.write() as db:
            known = [
                sha
                for sha in digests
                if db.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (sha,)).fetchone()
            ]
            self._delete_records(db, known)
        for sha in digests:
            with contextlib.suppress(FileNotFoundError):
                self.path_for(sha).unlink()
            self._forget(sha)

    def drop_missing(self, sha256: str) -> None:
        """Disk I/O. Forget a blob whose file is gone (deleted behind the cache's back)."""
        self._forget(sha256)
        if not self.path_for(sha256).exists():
            self.delete_blobs([sha256])

    # -- admission (disk I/O) -----------------------------------------------------------------

    def admit_file(
        self, tmp_path: Path, sha256: str, size: int, *, filename: str, upstream: str
    ) -> None:
        """Disk I/O. Move a verified temporary file into place (``admitted`` records it).

        Bytes already held under this digest stay as they are, and the temporary file goes:
        replacing them would swap the file under a process that pinned the old one.
        """
        del size, filename, upstream  # recorded by ``admitted``
        target = self.path_for(sha256)
        target.parent.mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.link(tmp_path, target)
        tmp_path.unlink()

    def write_blob(self, data: bytes, *, key: str, filename: str, upstream: str) -> str:
        """Disk I/O. Put small derived bytes (extracted metadata) in place; their digest."""
        sha = hashlib.sha256(data).hexdigest()
        tmp = self.staged_path(key)
        with open(tmp, "xb") as fh:
            fh.write(data)
        self.admit_file(tmp, sha, len(data), filename=filename, upstream=upstream)
        return sha

    def admitted(
        self,
        sha256: str,
        size: int,
        reserved: int,
        filename: str,
        *,
        upstream: str = "",
        key: str | None = None,
    ) -> None:
        """Disk I/O. Record a blob ``admit_file`` put in place, consuming its reservation,
        and (with ``key``) remember that key as an alias of it."""
        now = self._now()
        with self.db.write() as db:
            if reserved:
                self._release_into(db, reserved)
            db.execute(
                "INSERT INTO blobs (sha256, size, last_use, created, filename, upstream, "
                "verified_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sha256) DO UPDATE SET last_use = excluded.last_use, "
                "filename = IIF(filename = '', excluded.filename, filename), "
                "upstream = IIF(upstream = '', excluded.upstream, upstream)",
                (sha256, size, now, now, filename, upstream, now),
            )
            if filename:
                db.execute("INSERT OR IGNORE INTO blob_names VALUES (?, ?)", (sha256, filename))
            if key is not None and key != sha256:
                db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (key, sha256))
            db.execute(
                "INSERT INTO changes (at, kind, sha256, key, filename, owner) "
                "VALUES (?, 'admit', ?, ?, ?, ?)",
                (now, sha256, key or "", filename, self.owner),
            )
        self._remember(sha256, size, filename, upstream).last_use = now
        if key is not None and key != sha256:
            self._aliases[key] = sha256

    def record_alias(self, key: str, sha256: str) -> None:
        """Disk I/O. Remember that a file key without a published hash verified as ``sha256``."""
        with self.db.write() as db:
            db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (key, sha256))
            db.execute(
                "INSERT INTO changes (at, kind, sha256, key, owner) VALUES (?, 'alias', ?, ?, ?)",
                (time.time(), sha256, key, self.owner),
            )
        self._aliases[key] = sha256
