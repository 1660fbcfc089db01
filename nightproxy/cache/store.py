"""The content-addressed file store: verified blobs on disk, their index in SQLite.

Layout under ``cache.dir``::

    blobs/<aa>/<sha256>   verified bytes, named by their own digest
    tmp/                  fills in progress; all deleted when the server starts
    state.sqlite          size, last use, source of each blob; aliases; last good pages

A blob is only ever created by renaming a complete, verified temporary file into place, so
whatever is under ``blobs/`` may be served once start-up found its size to be the recorded one.
The in-memory LRU order is the source of truth while the server runs; last-use times are
flushed to SQLite in batches so that recency survives a restart without reading any blob's
bytes.

All methods are synchronous and cheap except the ones documented as doing disk I/O, which
callers on the event loop run in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

log = logging.getLogger(__name__)

#: Blobs without a database row are hashed at start-up up to this many (crash leftovers);
#: more mean a lost database, and are kept at their size.
ROWLESS_HASH_LIMIT = 100
#: How long after a failed write (a full disk) the cache counts as not writable.
WRITE_ERROR_WINDOW = 60.0

_SCHEMA = """
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


def is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class BlobRecord(TypedDict):
    sha256: str
    size: int
    last_use: float
    filename: str
    upstream: str


@dataclass(slots=True)
class Entry:
    size: int
    last_use: float
    #: The distribution (or ``<wheel>.metadata``) filename the blob was fetched as; "" if the
    #: index was rebuilt from the directory alone.
    filename: str = ""
    #: Other names the same bytes were fetched under: platform wheels of one release usually
    #: have identical METADATA, so one metadata blob serves several wheels.
    also: tuple[str, ...] = ()
    #: The upstream whose download the blob was admitted from; "" when not known (rebuilt from
    #: the directory, or imported from an archive, which cannot vouch for it).
    upstream: str = ""

    def add_name(self, filename: str) -> None:
        if not self.filename:
            self.filename = filename
        elif filename and filename != self.filename and filename not in self.also:
            self.also += (filename,)

    def named(self, filename: str) -> bool:
        return filename == self.filename or filename in self.also


@dataclass(frozen=True, slots=True)
class Stats:
    files: int
    bytes: int
    budget: int
    oldest_use: float | None
    newest_use: float | None


class CacheStore:
    def __init__(self, root: Path, max_size: int, max_age: float) -> None:
        self.root = root
        self.max_size = max_size
        self.max_age = max_age
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._aliases: dict[str, str] = {}
        self._bytes = 0
        self._reserved = 0
        self._pins: Counter[str] = Counter()
        self._dirty: set[str] = set()
        #: When a write to the cache last failed (``note_write_error``), None if never.
        self.last_write_error: float | None = None
        #: ``flush`` takes the set in a thread while the event loop adds to it.
        self._dirty_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.evictions = 0

    # -- start-up and shutdown (disk I/O: run in a thread) -------------------------------------

    def open(self, *, clean_tmp: bool = True) -> None:
        """Create the layout, drop crash leftovers, and load the index.

        Only the server cleans ``tmp/``: the cache commands run beside a live server, whose
        fills in progress live there.
        """
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if clean_tmp:
            for leftover in self.tmp_dir.iterdir():
                with contextlib.suppress(OSError):
                    leftover.unlink()
        db = sqlite3.connect(self.root / "state.sqlite", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db
        self._load()

    def _load(self) -> None:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT sha256, size, last_use, filename, upstream FROM blobs"
        ).fetchall()
        known = {
            sha: Entry(size, last_use, filename, upstream=upstream)
            for sha, size, last_use, filename, upstream in rows
        }
        for sha, filename in self._db.execute("SELECT sha256, filename FROM blob_names"):
            entry = known.get(sha)
            if entry is not None:
                entry.add_name(filename)
        on_disk = self._scan_blobs()
        # The database is the truth about a blob's size, the directory about which blobs exist.
        # A blob is named by its own digest, so a size on disk other than the recorded one can
        # only be corruption (a torn write): delete it, or it would be served as a hit forever
        # (every request touches it, so LRU never takes it). Only the size is checked, not the
        # bytes: on ext4's default data=ordered mode a file's size grows only once its data is
        # written, so a crash leaves a blob short.
        # (An fsync of every blob before admitting it would stall the last byte of every cold
        # download; rehashing every blob here would read the whole cache at each start.)
        missing = [sha for sha in known if sha not in on_disk]
        corrupt: list[str] = []
        rowless = sum(1 for sha in on_disk if sha not in known)
        # A handful of blobs without a row are crash leftovers: hash them. Many mean the
        # database itself was lost or replaced; hashing them all would read the whole cache
        # before the server listens (minutes for tens of GB, past a liveness probe), so they
        # are taken at their size, as a fresh database would have to.
        check_rowless = rowless <= ROWLESS_HASH_LIMIT
        if not check_rowless:
            log.warning(
                "%d cached files have no record (state.sqlite lost or new): kept without "
                "checking their bytes",
                rowless,
            )
        for sha, (size, mtime) in on_disk.items():
            entry = known.get(sha)
            if entry is not None:
                if entry.size != size:
                    log.warning(
                        "cached %s is %d bytes on disk, %d when it was stored: deleted as corrupt",
                        sha,
                        size,
                        entry.size,
                    )
                    corrupt.append(sha)
                continue
            # No row: a crash between the rename into blobs/ and the insert, or a live server's
            # admission between those two steps when a cache command opens the store. Nothing
            # recorded vouches for the size, so the bytes must.
            if not check_rowless or self._digest_matches(sha):
                known[sha] = Entry(size, mtime)
                self._dirty.add(sha)
            else:
                corrupt.append(sha)
        for sha in corrupt:
            with contextlib.suppress(OSError):
                self.path_for(sha).unlink()
        gone = [(sha,) for sha in missing + corrupt]
        for (sha,) in gone:
            known.pop(sha, None)
        with self._db_lock, self._db:
            self._db.executemany("DELETE FROM blobs WHERE sha256 = ?", gone)
            self._db.executemany("DELETE FROM blob_names WHERE sha256 = ?", gone)
            self._db.executemany("DELETE FROM aliases WHERE sha256 = ?", gone)
        for sha, entry in sorted(known.items(), key=lambda item: item[1].last_use):
            self._entries[sha] = entry
            self._bytes += entry.size
        self._aliases = dict(self._db.execute("SELECT key, sha256 FROM aliases").fetchall())
        self.flush()

    def _digest_matches(self, sha256: str) -> bool:
        """Disk I/O. Whether a blob's bytes hash to its name; a vanished one does not."""
        try:
            with open(self.path_for(sha256), "rb") as fh:
                actual = hashlib.file_digest(fh, "sha256").hexdigest()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cached %s cannot be read (%s): deleted", sha256, exc)
            return False
        if actual != sha256:
            log.warning("cached %s has sha256 %s: deleted as corrupt", sha256, actual)
            return False
        return True

    def _scan_blobs(self) -> dict[str, tuple[int, float]]:
        found: dict[str, tuple[int, float]] = {}
        with os.scandir(self.blob_dir) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as blobs:
                    for blob in blobs:
                        if is_sha256(blob.name) and blob.is_file(follow_symlinks=False):
                            st = blob.stat(follow_symlinks=False)
                            found[blob.name] = (st.st_size, st.st_mtime)
        return found

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            with self._db_lock:
                self._db.close()
            self._db = None

    # -- lookups (memory only) ------------------------------------------------------------------

    def path_for(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return sha256 in self._entries

    def resolve(self, key: str, filename: str | None = None) -> str | None:
        """The sha256 of a file key: the key itself, or what an alias key was verified as.

        With ``filename``, only a blob fetched under that very name answers: a key is a
        content address, but a URL must not serve one project's bytes under another's name.
        """
        sha = key if is_sha256(key) else self._aliases.get(key)
        if sha is None:
            return None
        entry = self._entries.get(sha)
        if entry is None or (filename is not None and not entry.named(filename)):
            return None
        return sha

    def alias(self, key: str) -> str | None:
        return self._aliases.get(key)

    def touch(self, sha256: str, now: float | None = None) -> None:
        entry = self._entries.get(sha256)
        if entry is None:
            return
        entry.last_use = time.time() if now is None else now
        self._entries.move_to_end(sha256)
        with self._dirty_lock:
            self._dirty.add(sha256)

    @contextlib.contextmanager
    def pinned(self, sha256: str) -> Iterator[None]:
        """Keep a blob from eviction while it is being served."""
        self.pin(sha256)
        try:
            yield
        finally:
            self.unpin(sha256)

    def pin(self, sha256: str) -> None:
        """Keep a blob from eviction until ``unpin`` (for holds that span a context)."""
        self._pins[sha256] += 1

    def unpin(self, sha256: str) -> None:
        self._pins[sha256] -= 1
        if self._pins[sha256] <= 0:
            del self._pins[sha256]

    @property
    def used_bytes(self) -> int:
        return self._bytes

    @property
    def file_count(self) -> int:
        return len(self._entries)

    def stats(self) -> Stats:
        uses = [e.last_use for e in self._entries.values()]
        return Stats(
            files=len(self._entries),
            bytes=self._bytes,
            budget=self.max_size,
            oldest_use=min(uses) if uses else None,
            newest_use=max(uses) if uses else None,
        )

    # -- admission and eviction -----------------------------------------------------------------

    def reserve(self, size: int) -> list[str] | None:
        """Make room for ``size`` more bytes by evicting least recently used blobs.

        Returns the evicted digests (whose files the caller deletes with ``delete_blobs``), or
        None when the space cannot be made (the file is larger than the budget, or what would
        have to go is in use). The reservation holds until ``release`` or ``admit``.
        """
        if size > self.max_size:
            return None
        victims: list[str] = []
        need = self._bytes + self._reserved + size - self.max_size
        if need > 0:
            for sha, entry in self._entries.items():
                if need <= 0:
                    break
                if self._pins.get(sha):
                    continue
                victims.append(sha)
                need -= entry.size
            if need > 0:
                return None
        for sha in victims:
            self._forget(sha)
        self.evictions += len(victims)
        self._reserved += size
        return victims

    def release(self, size: int) -> None:
        self._reserved = max(0, self._reserved - size)

    def _forget(self, sha256: str) -> None:
        entry = self._entries.pop(sha256)
        self._bytes -= entry.size
        with self._dirty_lock:
            self._dirty.discard(sha256)
        for key in [k for k, v in self._aliases.items() if v == sha256]:
            del self._aliases[key]

    def expired(self, now: float | None = None) -> list[str]:
        """Forget blobs unused for longer than ``max_age`` and return them for deletion."""
        cutoff = (time.time() if now is None else now) - self.max_age
        victims = [
            sha
            for sha, entry in self._entries.items()
            if entry.last_use < cutoff and not self._pins.get(sha)
        ]
        for sha in victims:
            self._forget(sha)
        self.evictions += len(victims)
        return victims

    def admit_file(
        self, tmp_path: Path, sha256: str, size: int, *, filename: str, upstream: str
    ) -> None:
        """Disk I/O. Rename a verified temporary file into the store and record it."""
        target = self.path_for(sha256)
        target.parent.mkdir(exist_ok=True)
        os.replace(tmp_path, target)
        now = time.time()
        with self._db_lock, self._db_conn() as db:
            db.execute(
                "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                (sha256, size, now, now, filename, upstream),
            )
            if filename:
                db.execute("INSERT OR IGNORE INTO blob_names VALUES (?, ?)", (sha256, filename))

    def write_blob(self, data: bytes, *, key: str, filename: str, upstream: str) -> str:
        """Disk I/O. Store small derived bytes (extracted metadata) and return their digest."""
        sha = hashlib.sha256(data).hexdigest()
        tmp = self.temp_path(key.replace(":", "_"))
        with open(tmp, "xb") as fh:
            fh.write(data)
        self.admit_file(tmp, sha, len(data), filename=filename, upstream=upstream)
        return sha

    def admitted(
        self, sha256: str, size: int, reserved: int, filename: str, *, upstream: str = ""
    ) -> None:
        """Memory: account a blob that ``admit_file`` put in place, consuming its reservation."""
        self.release(reserved)
        entry = self._entries.get(sha256)
        if entry is not None:
            # Another name for bytes already here: remember both, or each name's request would
            # miss in turn and fetch the same bytes again.
            entry.add_name(filename)
            self.touch(sha256)
            return
        self._entries[sha256] = Entry(size, time.time(), filename, upstream=upstream)
        self._bytes += size

    def note_write_error(self) -> None:
        """Memory: a write to the cache failed (a full disk): readiness says so for a while."""
        self.last_write_error = time.time()

    def write_failing(self, window: float = WRITE_ERROR_WINDOW) -> bool:
        """Whether a write to the cache failed within the last ``window`` seconds."""
        return self.last_write_error is not None and time.time() - self.last_write_error < window

    def size_of(self, sha256: str) -> int | None:
        """A held blob's size (it was verified before it was admitted), None if not held."""
        entry = self._entries.get(sha256)
        return entry.size if entry is not None else None

    def upstream_of(self, sha256: str) -> str:
        """The upstream a blob was downloaded from, "" if not known."""
        entry = self._entries.get(sha256)
        return entry.upstream if entry is not None else ""

    def record_alias(self, key: str, sha256: str) -> None:
        """Disk I/O. Remember that a file key without a published hash verified as ``sha256``."""
        self._aliases[key] = sha256
        with self._db_lock, self._db_conn() as db:
            db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (key, sha256))

    def delete_blobs(self, digests: list[str]) -> None:
        """Disk I/O. Remove evicted blobs' files and rows."""
        for sha in digests:
            with contextlib.suppress(FileNotFoundError):
                self.path_for(sha).unlink()
        if digests:
            with self._db_lock, self._db_conn() as db:
                rows = [(s,) for s in digests]
                db.executemany("DELETE FROM blobs WHERE sha256 = ?", rows)
                db.executemany("DELETE FROM blob_names WHERE sha256 = ?", rows)
                db.executemany("DELETE FROM aliases WHERE sha256 = ?", rows)

    def vanished(self, sha256: str) -> None:
        """Memory: a blob's file is gone (pruned by another process); stop offering it."""
        if sha256 in self._entries:
            self._forget(sha256)

    def flush(self) -> None:
        """Disk I/O. Persist last-use times changed since the previous flush."""
        if not self._dirty or self._db is None:
            return
        # This runs in a thread while the event loop keeps touching blobs: iterating the live
        # set failed when it grew, and touches between reading it and replacing it were lost.
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        rows = []
        for sha in dirty:
            entry = self._entries.get(sha)
            if entry is not None:
                rows.append((sha, entry.size, entry.last_use))
        try:
            with self._db_lock, self._db_conn() as db:
                db.executemany(
                    "INSERT INTO blobs (sha256, size, last_use, created) VALUES (?, ?, ?, ?3) "
                    "ON CONFLICT(sha256) DO UPDATE SET last_use = excluded.last_use",
                    rows,
                )
        except BaseException:
            with self._dirty_lock:
                self._dirty |= dirty  # written next time, not forgotten
            raise

    @contextlib.contextmanager
    def _db_conn(self) -> Iterator[sqlite3.Connection]:
        if self._db is None:
            raise RuntimeError("cache store is not open")
        with self._db:
            yield self._db

    def snapshot(self) -> tuple[list[BlobRecord], dict[str, str]]:
        """Disk I/O. Every blob's record and every alias, for export."""
        with self._db_lock, self._db_conn() as db:
            rows = db.execute("SELECT sha256, filename, upstream FROM blobs").fetchall()
        names = {sha: (filename, upstream) for sha, filename, upstream in rows}
        blobs: list[BlobRecord] = []
        for sha, entry in self._entries.items():
            filename, upstream = names.get(sha, ("", ""))
            blobs.append(
                {
                    "sha256": sha,
                    "size": entry.size,
                    "last_use": entry.last_use,
                    "filename": filename,
                    "upstream": upstream,
                }
            )
        return blobs, dict(self._aliases)

    # -- small persistent facts -----------------------------------------------------------------

    def first_seen(self, keys: list[str], now: float) -> dict[str, float]:
        """Disk I/O. When each key was first seen, recording ``now`` for new ones."""
        if not keys:
            return {}
        with self._db_lock, self._db_conn() as db:
            db.executemany(
                "INSERT OR IGNORE INTO first_seen VALUES (?, ?)", [(k, now) for k in keys]
            )
            found: dict[str, float] = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    db.execute(f"SELECT key, at FROM first_seen WHERE key IN ({marks})", chunk)  # noqa: S608
                )
            return found

    def save_page(self, upstream: str, project: str, fetched_at: float, body: str) -> None:
        """Disk I/O. Keep an upstream's last good page for stale-if-error across restarts."""
        with self._db_lock, self._db_conn() as db:
            db.execute(
                "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?)",
                (upstream, project, fetched_at, body),
            )

    def save_retained(self, upstream: str, project: str, body: str) -> None:
        """Disk I/O. The keep_missing state of one upstream's project."""
        with self._db_lock, self._db_conn() as db:
            db.execute(
                "INSERT OR REPLACE INTO retained VALUES (?, ?, ?)", (upstream, project, body)
            )

    def load_retained(self, upstream: str, project: str) -> str | None:
        """Disk I/O."""
        with self._db_lock, self._db_conn() as db:
            row = db.execute(
                "SELECT body FROM retained WHERE upstream = ? AND project = ?", (upstream, project)
            ).fetchone()
        return str(row[0]) if row else None

    def touch_page(self, upstream: str, project: str, fetched_at: float) -> None:
        """Disk I/O. The upstream confirmed its page (304): it is good as of now."""
        with self._db_lock, self._db_conn() as db:
            db.execute(
                "UPDATE pages SET fetched_at = ? WHERE upstream = ? AND project = ?",
                (fetched_at, upstream, project),
            )

    def load_page(self, upstream: str, project: str) -> tuple[float, str] | None:
        """Disk I/O."""
        with self._db_lock, self._db_conn() as db:
            row = db.execute(
                "SELECT fetched_at, body FROM pages WHERE upstream = ? AND project = ?",
                (upstream, project),
            ).fetchone()
        return (float(row[0]), str(row[1])) if row else None

    def temp_path(self, key: str) -> Path:
        return self.tmp_dir / f"{key}.{os.getpid()}.{time.monotonic_ns()}.part"
