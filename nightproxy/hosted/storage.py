"""Where a hosted feed keeps its files: the storage interface, and what every backend shares.

A backend keeps the bytes of each file and its extracted METADATA by content (sha256), and
the feed's records (``records.RecordDB``) say which of them are listed. An upload body is
first streamed into a staging file (always on local disk: a wheel is checked as a whole before
it is kept), then ``commit`` makes it part of the feed in one step, or not at all.

Files sit in the layout the ``s3`` and ``directory`` kinds read, ``<root>/<project>/<filename>``,
so that another nightproxy can serve the same feed read-only.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import fcntl
import os
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from packaging.utils import NormalizedName

from nightproxy.hosted.records import FileRecord, NewFile

#: Trash reasons, also the ``reason`` label of the deletion metrics.
REASON_RETENTION = "retention"
REASON_MANUAL = "manual"
REASON_REPLACED = "replaced"
REASON_MISSING = "missing"


class Outcome(enum.Enum):
    CREATED = "created"
    #: The same filename with the same bytes: nothing changed.
    UNCHANGED = "unchanged"
    #: The same filename with other bytes, on a feed that allows overwrites.
    REPLACED = "replaced"
    #: The same filename with other bytes, refused.
    EXISTS = "exists"


@dataclass(frozen=True, slots=True)
class CommitResult:
    outcome: Outcome
    #: The live record of that filename after the commit (the existing one for ``EXISTS``).
    record: FileRecord
    #: The record the upload replaced, now in the trash.
    replaced: FileRecord | None = None


class StaleError(Exception):
    """The feed changed since the listing a change was planned from."""


class RestoreConflictError(Exception):
    """A trashed file cannot come back: a live file has its name, or its bytes are gone."""


@dataclass(frozen=True, slots=True)
class Staged:
    """An upload body being received: its file, and the METADATA checked from it."""

    path: Path
    metadata: bytes | None = None


class Storage(abc.ABC):
    """The bytes and records of one hosted feed."""

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir

    @abc.abstractmethod
    async def open(self, now: datetime) -> None:
        """Create what is missing and repair what a crash left half done."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def generation(self) -> int:
        """A number that changes whenever the feed changes, in any process."""

    @abc.abstractmethod
    async def live(self, project: NormalizedName | None = None) -> list[FileRecord]:
        """The files the feed lists (of one project, or all)."""

    @abc.abstractmethod
    async def trashed(self, project: NormalizedName | None = None) -> list[FileRecord]: ...

    @abc.abstractmethod
    async def deletions(self) -> dict[str, int]:
        """Files deleted so far, per reason."""

    @abc.abstractmethod
    async def commit(self, staged: Staged, new: NewFile, *, overwrite: bool) -> CommitResult:
        """Make a complete, checked upload part of the feed, or leave the feed as it was."""

    @abc.abstractmethod
    async def trash(
        self,
        records: Collection[FileRecord],
        reason: str,
        detail: str | Mapping[int, str],
        now: datetime,
        *,
        if_generation: int | None = None,
    ) -> list[FileRecord]:
        """Stop listing these files, keeping their bytes; the ones that were still live.

        ``detail`` is one text for all, or one per record id. With ``if_generation``, nothing
        changes (``StaleError``) if the feed changed since that generation: a plan made from
        an older listing is made again rather than applied to a feed it did not see.
        """

    @abc.abstractmethod
    async def restore(self, records: Collection[FileRecord], now: datetime) -> list[FileRecord]:
        """List trashed files again; raises ``RestoreConflictError`` (changing nothing)."""

    @abc.abstractmethod
    async def purge(self, records: Collection[FileRecord], protect: Collection[str]) -> int:
        """Forget trashed files and remove bytes nothing else needs, except ``protect``'s."""

    @abc.abstractmethod
    async def settle(self) -> None:
        """Finish what a change that failed part way left undone: names still pointing at
        deleted files, bytes nothing needs. Retention calls it before each run."""

    @abc.abstractmethod
    def local_path(self, digest: str) -> Path | None:
        """The local file holding these bytes, for ``FileResponse``; None if not local."""

    @abc.abstractmethod
    def open_bytes(self, record: FileRecord) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """A live file's bytes exactly as recorded, in chunks; an error rather than other bytes
        once the file was replaced or deleted."""

    @abc.abstractmethod
    async def read_blob(self, digest: str) -> bytes:
        """A small blob's bytes (METADATA)."""

    # -- staging: local files for bodies being received ----------------------------------------

    @asynccontextmanager
    async def staging(self) -> AsyncIterator[Staged]:
        """A fresh staging file, locked while it exists so no cleaner takes it, removed after."""
        path = self.staging_dir / f"{uuid.uuid4().hex}.part"
        fd = await asyncio.to_thread(_create_locked, path)
        try:
            yield Staged(path)
        finally:
            await asyncio.to_thread(_remove_unlocked, path, fd)

    def clean_staging(self) -> int:
        """Blocking. Remove staging files no live process holds (a crashed upload's)."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.staging_dir.iterdir():
            try:
                fd = os.open(leftover, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # an upload in progress in another process
            finally:
                # Closing drops the lock; a new upload never reuses a name.
                os.close(fd)
            with suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed


def _create_locked(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_unlocked(path: Path, fd: int) -> None:
    # Unlinked before the lock goes, so a cleaner never sees it unlocked.
    with suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


def fsync_file(path: Path) -> None:
    """Blocking. Put a file's bytes on disk before anything refers to them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Blocking. Put a folder's entries (a rename, a new link) on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
