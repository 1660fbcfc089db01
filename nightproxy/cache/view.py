"""One process's view of what the cache holds: lookups on the event loop, no I/O.

``CacheStore`` (``store.py``) fills this view from the database and keeps it in step; the view
itself never decides anything that other processes depend on (budget, eviction), it only
answers "is this here, under which name, how big" quickly, and records this process's uses
and pins.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from nightproxy.cache.layout import Layout, is_sha256

#: How long after a failed write (a full disk) the cache counts as not writable.
WRITE_ERROR_WINDOW = 60.0


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
    #: record was rebuilt from the directory alone.
    filename: str = ""
    #: Other names the same bytes were fetched under: platform wheels of one release usually
    #: have identical METADATA, so one metadata blob serves several wheels.
    also: tuple[str, ...] = ()
    #: The upstream whose download the blob was admitted from; "" when not known.
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


class CacheView:
    def __init__(self, root: Path, max_size: int, max_age: float) -> None:
        self.layout = Layout(root)
        self.root = root
        self.max_size = max_size
        self.max_age = max_age
        self.blob_dir = self.layout.blob_dir
        self.tmp_dir = self.layout.tmp_dir
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._bytes = 0
        self._pins: Counter[str] = Counter()
        #: Uses not yet written: sha -> (time, whether the time was given explicitly).
        self._dirty: dict[str, tuple[float, bool]] = {}
        #: The store writes the uses in a thread while the event loop adds to them.
        self._dirty_lock = threading.Lock()
        self._last_now = 0.0
        #: When a write to the cache last failed (``note_write_error``), None if never.
        self.last_write_error: float | None = None

    def path_for(self, sha256: str) -> Path:
        return self.layout.path_for(sha256)

    def has(self, sha256: str) -> bool:
        return sha256 in self._entries

    def resolve(self, key: str, filename: str | None = None) -> str | None:
        """The sha256 of a file key as far as this process knows: the key itself, or what an
        alias key was verified as.

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

    def size_of(self, sha256: str) -> int | None:
        """A held blob's size (it was verified before it was admitted), None if not held."""
        entry = self._entries.get(sha256)
        return entry.size if entry is not None else None

    def upstream_of(self, sha256: str) -> str:
        """The upstream a blob was downloaded from, "" if not known."""
        entry = self._entries.get(sha256)
        return entry.upstream if entry is not None else ""

    def _now(self) -> float:
        # Strictly increasing within a process, so that two uses in one clock tick keep order.
        now = max(time.time(), self._last_now + 1e-6)
        self._last_now = now
        return now

    def touch(self, sha256: str, now: float | None = None) -> None:
        """A use: kept in memory until the store writes it (``flush``, or the next decision
        that depends on recency)."""
        entry = self._entries.get(sha256)
        if entry is None:
            return
        when = self._now() if now is None else now
        entry.last_use = when
        with self._dirty_lock:
            self._dirty[sha256] = (when, now is not None)

    @contextlib.contextmanager
    def pinned(self, sha256: str) -> Iterator[None]:
        """Keep a blob from this process's evictions (others respect ``locks.pin_blob``)."""
        self.pin(sha256)
        try:
            yield
        finally:
            self.unpin(sha256)

    def pin(self, sha256: str) -> None:
        self._pins[sha256] += 1

    def unpin(self, sha256: str) -> None:
        self._pins[sha256] -= 1
        if self._pins[sha256] <= 0:
            del self._pins[sha256]

    def vanished(self, sha256: str) -> None:
        """A blob's file is gone: stop offering it (``CacheStore.drop_missing`` fixes its
        record)."""
        self._forget(sha256)

    def _forget(self, sha256: str) -> None:
        entry = self._entries.pop(sha256, None)
        if entry is not None:
            self._bytes -= entry.size
        with self._dirty_lock:
            self._dirty.pop(sha256, None)
        for key in [k for k, v in self._aliases.items() if v == sha256]:
            del self._aliases[key]

    def _remember(self, sha256: str, size: int, filename: str, upstream: str) -> Entry:
        entry = self._entries.get(sha256)
        if entry is None:
            entry = self._entries[sha256] = Entry(size, self._now(), filename, upstream=upstream)
            self._bytes += size
        else:
            entry.add_name(filename)
        return entry

    def _replace(self, entries: dict[str, Entry], aliases: dict[str, str]) -> None:
        self._entries, self._aliases = entries, aliases
        self._bytes = sum(e.size for e in entries.values())

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

    def note_write_error(self) -> None:
        """A write to the cache failed (a full disk): readiness says so for a while."""
        self.last_write_error = time.time()

    def write_failing(self, window: float = WRITE_ERROR_WINDOW) -> bool:
        """Whether a write to the cache failed within the last ``window`` seconds."""
        return self.last_write_error is not None and time.time() - self.last_write_error < window
