"""The shared record of downloads in progress: one row per key, in ``state.sqlite``.

The process holding a key's lock (``locks.KeyLock``) writes the row: which temporary file
(``token``, and its inode) the download writes, the size the upstream announced once it
answered (``ready``), and how it ended. Other processes follow that file by reading the row
and the file's size; a row that says "running" while nobody holds the lock belongs to a
process that died, and whoever takes the lock next resumes its file.

Every function does disk I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nightproxy.cache.db import Database

RUNNING = "running"
VERIFIED = "verified"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FillRow:
    token: str
    owner: str
    ino: int
    size: int | None
    ready: bool
    state: str
    sha256: str
    cached: bool
    error: str


def read(db: Database, key: str) -> FillRow | None:
    with db.read() as conn:
        row = conn.execute(
            "SELECT token, owner, ino, size, ready, state, sha256, cached, error "
            "FROM fills WHERE key = ?",
            (key,),
        ).fetchone()
    if row is None:
        return None
    token, owner, ino, size, ready, state, sha, cached, error = row
    return FillRow(token, owner, ino, size, bool(ready), state, sha, bool(cached), error)


def begin(db: Database, key: str, token: str, *, owner: str, ino: int, size: int | None) -> None:
    """This process downloads ``key`` into the file ``ino`` (``size``: what an interrupted
    download of it announced)."""
    with db.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO fills (key, token, owner, ino, size, ready, state, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, token, owner, ino, size, 0, RUNNING, time.time()),
        )


def answered(db: Database, key: str, token: str, size: int | None) -> None:
    """The upstream answered: followers may start their responses."""
    with db.write() as conn:
        conn.execute(
            "UPDATE fills SET size = ?, ready = 1, updated = ? WHERE key = ? AND token = ?",
            (size, time.time(), key, token),
        )


def finish(
    db: Database, key: str, token: str, *, sha256: str = "", cached: bool = False, error: str = ""
) -> None:
    state = FAILED if error else VERIFIED
    with db.write() as conn:
        conn.execute(
            "UPDATE fills SET state = ?, sha256 = ?, cached = ?, error = ?, updated = ? "
            "WHERE key = ? AND token = ?",
            (state, sha256, int(cached), error, time.time(), key, token),
        )


def purge(db: Database, older_than: float) -> None:
    """Forget ended downloads nobody can still be following."""
    with db.write() as conn:
        conn.execute(
            "DELETE FROM fills WHERE state != ? AND updated < ?",
            (RUNNING, time.time() - older_than),
        )
