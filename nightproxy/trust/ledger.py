"""What trusted publishing must remember across restarts and worker processes: the ``jti`` of
every accepted OIDC token until it expires, and the minted upload tokens (as sha256 only).

One small SQLite file in WAL mode: every worker process opens it, and a ``jti`` is claimed by
an INSERT, so two workers cannot both accept the same token. The methods block; callers on
the event loop run them in a thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from nightproxy.trust.claims import Grant

#: The file's name in ``cache.dir``.
FILENAME = "trust.sqlite3"
#: How long a writer waits for another process's write to finish.
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_jti (
    jti TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS minted (
    digest TEXT PRIMARY KEY,
    grants TEXT NOT NULL,
    publisher TEXT NOT NULL,
    issued REAL NOT NULL,
    expires REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS seen_jti_expires ON seen_jti (expires);
CREATE INDEX IF NOT EXISTS minted_expires ON minted (expires);
"""


@dataclass(frozen=True, slots=True)
class MintedRecord:
    grants: tuple[Grant, ...]
    publisher: str
    issued: float
    expires: float
    revoked: bool


class TrustLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        # One connection shared by the threads ``asyncio.to_thread`` picks.
        self._lock = threading.Lock()

    def open(self) -> None:
        db = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # WAL with NORMAL survives a process crash; a power loss may forget the last
            # accepted jti, whose token lives minutes at most.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the trust ledger is not open")
        return self._db

    def claim_jti(self, jti: str, expires: float, now: float) -> bool:
        """Remember ``jti`` until ``expires``; False if it was already remembered (a replay)."""
        with self._lock:
            db = self._conn()
            db.execute("DELETE FROM seen_jti WHERE expires < ?", (now,))
            try:
                db.execute("INSERT INTO seen_jti (jti, expires) VALUES (?, ?)", (jti, expires))
            except sqlite3.IntegrityError:
                return False
            return True

    def add_minted(
        self, digest: str, grants: tuple[Grant, ...], publisher: str, issued: float, expires: float
    ) -> None:
        encoded = json.dumps([[g.feed, g.project] for g in grants])
        with self._lock:
            db = self._conn()
            # Expired tokens are useless; their rows go as new ones come.
            db.execute("DELETE FROM minted WHERE expires < ?", (issued,))
            db.execute(
                "INSERT INTO minted (digest, grants, publisher, issued, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (digest, encoded, publisher, issued, expires),
            )

    def minted(self, digest: str) -> MintedRecord | None:
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "SELECT grants, publisher, issued, expires, revoked FROM minted "
                    "WHERE digest = ?",
                    (digest,),
                )
                .fetchone()
            )
        if row is None:
            return None
        grants, publisher, issued, expires, revoked = row
        return MintedRecord(
            tuple(Grant(feed, project) for feed, project in json.loads(grants)),
            publisher,
            issued,
            expires,
            bool(revoked),
        )

    def revoke(self, digest: str) -> bool:
        """Mark the token revoked; False if no such token was minted."""
        with self._lock:
            cursor = self._conn().execute(
                "UPDATE minted SET revoked = 1 WHERE digest = ?", (digest,)
            )
            return cursor.rowcount > 0
