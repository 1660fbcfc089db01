"""Locks the kernel releases when a process dies: ``flock`` on files of the cache directory.

``flock`` locks belong to an open file description, so they exclude each other between
processes and between two opens in one process alike, and a crashed process can never leave
one held. Every function here does disk I/O: callers on the event loop use a thread.

Two uses:

* a *key lock* (``KeyLock``): who downloads a file. Its holder owns ``tmp/<key>.fill``;
  everyone else follows that file as it grows.
* a *blob pin* (``pin_blob``): a shared lock on a blob while it is served. Eviction takes
  an exclusive lock (``claim_blob``) before deleting, so a blob being served by any process is
  skipped, and a blob being deleted is never handed out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


class KeyLock:
    """An exclusive, non-blocking lock on one lock file; re-tried by polling.

    Its holder may delete the lock file on release; a waiter holding the deleted file's old
    descriptor then finds that the path names another file and opens the path again, so that
    two processes never both believe they hold the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.held = False

    def try_acquire(self) -> bool:
        """Disk I/O. Take the lock if nobody holds it."""
        if self.held:
            return True
        for _attempt in range(3):
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _BUSY:
                    return False
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.held = True
                return True
            # The last holder deleted this file: ours is a lock nobody else will look at.
            self._close()
        return False

    def release(self, *, remove: bool = False) -> None:
        """Disk I/O. Give the lock up; with ``remove``, delete the lock file first."""
        if self.held and remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.held = False
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock with the open file description
            self._fd = None


class BlobGoneError(Exception):
    """The blob was deleted (or is being deleted) by someone: treat it as not cached."""


def pin_blob(path: Path) -> int:
    """Disk I/O. A descriptor holding a shared lock on a blob; close it to unpin.

    Raises ``BlobGoneError`` if the blob is gone or being evicted, and ``OSError`` for
    anything else (out of descriptors: the blob is still there).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BlobGoneError(str(path)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _BUSY:
                raise BlobGoneError(str(path)) from None
            raise
        if os.fstat(fd).st_nlink == 0:
            # Evicted between our open and our lock.
            raise BlobGoneError(str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def claim_blob(path: Path) -> int | None:
    """Disk I/O. An exclusive lock on a blob about to be deleted, or None while it is pinned.

    Raises ``FileNotFoundError`` when the blob is already gone. Delete the file before closing
    the descriptor, so that no reader can pin it in between.
    """
    return _exclusive_or_none(os.open(path, os.O_RDONLY | os.O_CLOEXEC))


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Disk I/O. Hold a blocking exclusive lock on ``path`` (start-up's database checks)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def try_exclusive(path: Path) -> int | None:
    """Disk I/O. A descriptor holding an exclusive lock on ``path``, None if someone has it."""
    return _exclusive_or_none(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _exclusive_or_none(fd: int) -> int | None:
    """``fd`` holding an exclusive lock, or None (``fd`` closed) while someone else has one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in _BUSY:
            return None
        raise
    return fd
