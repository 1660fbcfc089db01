"""Start-up: the database reconciled with the blobs on disk, and leftovers of dead processes.

The database is the truth about a blob's size, the directory about which blobs exist. A blob
is named by its own digest, so a size on disk other than the recorded one can only be a torn
write: it is deleted, or it would be served as a hit forever. Only the size is checked here,
not the bytes (on ext4's default data=ordered mode a file's size grows only once its data is
written, so a crash leaves a blob short); each process verifies a blob's bytes the first time
it serves it, and the scrub goes through all of them (``scrub.py``).

Blobs without a record are crash leftovers (a crash between the rename into ``blobs/`` and the
insert) and are hashed, a few of them; many mean the database was lost, and hashing them all
would read the whole cache before the server listens, so they are taken at their size.
Every function does disk I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nightproxy.cache.layout import Layout, is_sha256, owner_alive, staged_owner
from nightproxy.cache.locks import KeyLock

if TYPE_CHECKING:
    from nightproxy.cache.store import CacheStore

log = logging.getLogger(__name__)


def clean_tmp(layout: Layout, *, idle_for: float = 0.0) -> None:
    """Delete what no live process owns in ``tmp/``: downloads nobody holds the lock of,
    staged files of dead processes, and anything else (files of older versions).

    With ``idle_for``, only files unchanged for that many seconds: a running server's
    cleaning leaves a just-interrupted download for a follower to resume.
    """
    cutoff = time.time() - idle_for
    for leftover in layout.tmp_dir.iterdir():
        name = leftover.name
        if idle_for:
            try:
                if leftover.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
        if name.endswith(".fill"):
            lock = KeyLock(layout.lock_dir / (name[: -len(".fill")] + ".lock"))
            try:
                if not lock.try_acquire():
                    continue
                with contextlib.suppress(OSError):
                    leftover.unlink()
            finally:
                lock.release(remove=True)
            continue
        owner = staged_owner(name)
        if owner is not None and owner_alive(owner):
            continue
        with contextlib.suppress(OSError):
            leftover.unlink()


def reconcile(store: CacheStore, *, rowless_limit: int, rebuilt: str | None) -> int:
    """Make the records match the blobs on disk; how many blobs are kept."""
    with store.db.read() as db:
        known = dict(db.execute("SELECT sha256, size FROM blobs").fetchall())
    on_disk = _scan(store.layout)
    missing = [sha for sha in known if sha not in on_disk]
    corrupt: list[str] = []
    adopted: list[tuple[str, int, float, float]] = []
    rowless = [sha for sha in on_disk if sha not in known]
    check_rowless = len(rowless) <= rowless_limit
    if not check_rowless and rebuilt is None:
        log.warning(
            "%d cached files have no record (state.sqlite lost or new): kept without "
            "checking their bytes until each is first served",
            len(rowless),
        )
    for sha, (size, mtime) in on_disk.items():
        recorded = known.get(sha)
        if recorded is not None:
            if recorded != size:
                log.warning(
                    "cached %s is %d bytes on disk, %d when it was stored: deleted as corrupt",
                    sha,
                    size,
                    recorded,
                )
                corrupt.append(sha)
            continue
        # No record: nothing vouches for the size, so (for a few) the bytes must.
        if not check_rowless:
            adopted.append((sha, size, mtime, 0.0))
        elif store._digest_matches(sha):
            adopted.append((sha, size, mtime, time.time()))
        else:
            corrupt.append(sha)
    for sha in corrupt:
        with contextlib.suppress(OSError):
            store.path_for(sha).unlink()
    with store.db.write() as db:
        store._delete_records(db, missing + corrupt)
        db.executemany(
            "INSERT OR IGNORE INTO blobs (sha256, size, last_use, created, verified_at) "
            "VALUES (?, ?, ?, ?3, ?)",
            adopted,
        )
    return len(on_disk) - len(corrupt)


def digest_matches(path: Path, sha256: str) -> bool:
    """Whether a blob's bytes hash to its name; a vanished or unreadable one does not."""
    try:
        with open(path, "rb") as fh:
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


def _scan(layout: Layout) -> dict[str, tuple[int, float]]:
    found: dict[str, tuple[int, float]] = {}
    with os.scandir(layout.blob_dir) as shards:
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            with os.scandir(shard.path) as blobs:
                for blob in blobs:
                    if is_sha256(blob.name) and blob.is_file(follow_symlinks=False):
                        st = blob.stat(follow_symlinks=False)
                        found[blob.name] = (st.st_size, st.st_mtime)
    return found
