"""A hosted feed in a local folder.

Layout, under the feed's ``path``::

    <project>/<filename>              what the feed lists, for anything that reads the folder
    .nightproxy/feed.sqlite           the records (``records.RecordDB``): the authority
    .nightproxy/blobs/<ab>/<sha256>   every file's and METADATA's bytes, by content
    .nightproxy/staging/              upload bodies being received

``<project>/<filename>`` is a hard link to its blob. The server serves the blob, never the
named path: a link to the old bytes keeps meaning the old bytes after an overwrite replaced
the named file, and an open download keeps reading the bytes it opened when they are
deleted. A blob appears only by renaming a complete, fsynced file, inside the write
transaction that records it, so a crash leaves either the old feed or the new one; the named
links are brought in line with the records when the feed opens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from packaging.utils import NormalizedName

from nightproxy.hosted.records import SCHEMA_VERSION, FileRecord, NewFile, RecordDB, Writer
from nightproxy.hosted.storage import (
    REASON_MISSING,
    REASON_REPLACED,
    CommitResult,
    Outcome,
    RestoreConflictError,
    Staged,
    StaleError,
    Storage,
    fsync_dir,
    fsync_file,
)

log = logging.getLogger(__name__)

STATE_DIR = ".nightproxy"
READ_CHUNK = 1024 * 1024


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / STATE_DIR
        self.blob_dir = self.state_dir / "blobs"
        super().__init__(self.state_dir / "staging")
        self._db: RecordDB | None = None
        #: Blobs a purge forgot but could not remove; ``settle`` tries again (and ``open``
        #: removes every blob no record needs).
        self._doomed: set[str] = set()

    @property
    def db(self) -> RecordDB:
        if self._db is None:
            raise RuntimeError(f"the feed in {self.root} is not open")
        return self._db

    def blob(self, digest: str) -> Path:
        return self.blob_dir / digest[:2] / digest

    def named(self, project: str, filename: str) -> Path:
        return self.root / project / filename

    # -- opening and repair ------------------------------------------------------------------

    async def open(self, now: datetime) -> None:
        await asyncio.to_thread(self._open, now)

    def _open(self, now: datetime) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.clean_staging()
        self._db = RecordDB(self.state_dir / "feed.sqlite")
        with self.db.write() as writer:
            self._repair(writer, now)

    def _repair(self, writer: Writer, now: datetime) -> None:
        """Bring the links and the blobs in line with the records after a crash.

        Only the files a change left unsettled (``pending``) can have a link out of line;
        every file's is checked once, when the records come from before that was kept.
        """
        full = 0 < self.db.migrated_from < SCHEMA_VERSION
        records = (self.db.trashed() + self.db.live()) if full else writer.pending()
        # Trashed first: a trashed file may share its name and bytes with a live one.
        records.sort(key=lambda r: r.trashed_at is None)
        on_disk = {
            blob.name
            for folder in self.blob_dir.iterdir()
            if folder.is_dir()
            for blob in folder.iterdir()
        }
        for record in self.db.live():
            if record.sha256 not in on_disk:
                log.error(
                    "%s/%s: its bytes are missing from %s: moved to the trash",
                    record.project,
                    record.filename,
                    self.blob_dir,
                )
                writer.trash(record, REASON_MISSING, "bytes missing from storage", now)
                records.append(dataclasses.replace(record, trashed_at=now))
        changed: set[Path] = set()
        for record in records:
            if record.trashed_at is not None:
                self._unlink_named(record)
            elif (folder := self._link_named(record, sync=False)) is not None:
                changed.add(folder)
        for folder in changed:
            fsync_dir(folder)
        writer.settle_all()
        needed = writer.all_digests()
        for digest in on_disk - needed:
            # Stored by an upload whose transaction never committed.
            self.blob(digest).unlink()

    def _link_named(self, record: FileRecord, *, sync: bool = True) -> Path | None:
        """Make ``<project>/<filename>`` the record's bytes, replacing whatever is there; the
        folder changed, which ``sync=False`` leaves to the caller to fsync (once per folder)."""
        blob = self.blob(record.sha256)
        named = self.named(record.project, record.filename)
        with suppress(FileNotFoundError):
            if os.path.samestat(named.stat(), blob.stat()):
                return None
        named.parent.mkdir(exist_ok=True)
        spare = named.parent / f".{uuid.uuid4().hex}.link"
        os.link(blob, spare)
        os.replace(spare, named)
        if sync:
            fsync_dir(named.parent)
        return named.parent

    def _unlink_named(self, record: FileRecord) -> None:
        """Remove ``<project>/<filename>`` if it still is this record's bytes."""
        named = self.named(record.project, record.filename)
        try:
            if not os.path.samestat(named.stat(), self.blob(record.sha256).stat()):
                return
        except FileNotFoundError:
            return
        named.unlink()
        with suppress(OSError):
            named.parent.rmdir()  # only when that was the project's last file

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    # -- reading -------------------------------------------------------------------------------

    async def generation(self) -> int:
        return await asyncio.to_thread(self.db.generation)

    async def live(self, project: NormalizedName | None = None) -> list[FileRecord]:
        return await asyncio.to_thread(self.db.live, project)

    async def trashed(self, project: NormalizedName | None = None) -> list[FileRecord]:
        return await asyncio.to_thread(self.db.trashed, project)

    async def deletions(self) -> dict[str, int]:
        return await asyncio.to_thread(self.db.deletions)

    def local_path(self, digest: str) -> Path | None:
        return self.blob(digest)

    def open_bytes(self, record: FileRecord) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._open_bytes(record)

    @asynccontextmanager
    async def _open_bytes(self, record: FileRecord) -> AsyncIterator[AsyncIterator[bytes]]:
        # By content: an overwrite or a deletion of the name never changes these bytes.
        handle = await asyncio.to_thread(open, self.blob(record.sha256), "rb")
        try:
            yield _chunks(handle)
        finally:
            await asyncio.to_thread(handle.close)

    async def read_blob(self, digest: str) -> bytes:
        return await asyncio.to_thread(self.blob(digest).read_bytes)

    # -- changing --------------------------------------------------------------------------------

    async def commit(self, staged: Staged, new: NewFile, *, overwrite: bool) -> CommitResult:
        return await asyncio.to_thread(self._commit, staged, new, overwrite)

    def _commit(self, staged: Staged, new: NewFile, overwrite: bool) -> CommitResult:
        fsync_file(staged.path)
        metadata_tmp: Path | None = None
        if staged.metadata is not None:
            metadata_tmp = staged.path.with_suffix(".metadata")
            with open(metadata_tmp, "wb") as handle:
                handle.write(staged.metadata)
                handle.flush()
                os.fsync(handle.fileno())
        try:
            with self.db.write() as writer:
                existing = writer.live_named(new.project, new.filename)
                if existing is not None and existing.sha256 == new.sha256:
                    return CommitResult(Outcome.UNCHANGED, existing)
                if existing is not None and not overwrite:
                    return CommitResult(Outcome.EXISTS, existing)
                if existing is not None:
                    writer.trash(
                        existing, REASON_REPLACED, f"replaced by {new.uploader}", new.upload_time
                    )
                    writer.unsettled([existing.id])
                self._place(staged.path, new.sha256)
                if metadata_tmp is not None and new.metadata_sha256 is not None:
                    self._place(metadata_tmp, new.metadata_sha256)
                record = writer.insert(new)
                writer.unsettled([record.id])
        finally:
            if metadata_tmp is not None:
                with suppress(FileNotFoundError):
                    metadata_tmp.unlink()
        # After the commit: the records are the truth, and a crash here is repaired on open.
        self._link_named(record)
        self.db.settled([record.id] + ([existing.id] if existing is not None else []))
        outcome = Outcome.CREATED if existing is None else Outcome.REPLACED
        return CommitResult(outcome, record, replaced=existing)

    def _place(self, source: Path, digest: str) -> None:
        """Move a complete file into the blob of its digest (kept if that is there already)."""
        blob = self.blob(digest)
        if blob.is_file():
            return
        blob.parent.mkdir(exist_ok=True)
        os.replace(source, blob)
        fsync_dir(blob.parent)

    async def trash(
        self,
        records: Collection[FileRecord],
        reason: str,
        detail: str | Mapping[int, str],
        now: datetime,
        *,
        if_generation: int | None = None,
    ) -> list[FileRecord]:
        return await asyncio.to_thread(self._trash, records, reason, detail, now, if_generation)

    def _trash(
        self,
        records: Collection[FileRecord],
        reason: str,
        detail: str | Mapping[int, str],
        now: datetime,
        if_generation: int | None,
    ) -> list[FileRecord]:
        with self.db.write() as writer:
            if if_generation is not None and writer.generation() != if_generation:
                raise StaleError(f"the feed in {self.root} changed meanwhile")
            current = [r for r in writer.by_ids([r.id for r in records]) if r.trashed_at is None]
            for record in current:
                text = detail if isinstance(detail, str) else detail.get(record.id, "")
                writer.trash(record, reason, text, now)
            writer.unsettled([r.id for r in current])
        # The records are the truth from here: a link that cannot go now stays pending.
        self.db.settled(self._align([dataclasses.replace(r, trashed_at=now) for r in current]))
        return current

    async def restore(self, records: Collection[FileRecord], now: datetime) -> list[FileRecord]:
        return await asyncio.to_thread(self._restore, records, now)

    def _restore(self, records: Collection[FileRecord], now: datetime) -> list[FileRecord]:
        with self.db.write() as writer:
            current = [r for r in writer.by_ids([r.id for r in records]) if r.trashed_at]
            names: set[tuple[str, str]] = set()
            for record in current:
                key = (record.project, record.filename)
                if writer.live_named(record.project, record.filename) is not None or key in names:
                    raise RestoreConflictError(
                        f"{record.project}/{record.filename}: a file of that name is listed; "
                        "delete it first"
                    )
                if not self.blob(record.sha256).is_file():
                    raise RestoreConflictError(f"{record.filename}: its bytes are gone")
                names.add(key)
                writer.restore(record, now)
            restored = writer.by_ids([r.id for r in current])
            writer.unsettled([r.id for r in restored])
        self.db.settled(self._align(restored))
        return restored

    async def purge(self, records: Collection[FileRecord], protect: Collection[str]) -> int:
        return await asyncio.to_thread(self._purge, records, protect)

    def _purge(self, records: Collection[FileRecord], protect: Collection[str]) -> int:
        with self.db.write() as writer:
            # A file being downloaded stays in the trash until the next purge.
            current = [
                r
                for r in writer.by_ids([r.id for r in records])
                if r.trashed_at and r.sha256 not in protect
            ]
            # A link a failed deletion left behind would keep the bytes and name them: such
            # a file is forgotten once its link is gone.
            unlinked = set(self._align(current))
            current = [r for r in current if r.id in unlinked]
            for record in current:
                writer.forget(record)
            digests = {r.sha256 for r in current} | {
                r.metadata_sha256 for r in current if r.metadata_sha256 is not None
            }
            # Never raises: a failure here would roll back the records of bytes already gone.
            return self._remove_blobs(writer, digests)

    def _remove_blobs(self, writer: Writer, digests: Collection[str]) -> int:
        """Remove the blobs no record needs; one that cannot go is tried again later."""
        removed = 0
        for digest in sorted(digests):
            self._doomed.discard(digest)
            if writer.referenced(digest):
                continue
            try:
                # An open download keeps reading the unlinked bytes to the end.
                self.blob(digest).unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("%s: cannot remove blob %s yet: %s", self.root, digest, exc)
                self._doomed.add(digest)
        return removed

    def _align(self, records: Collection[FileRecord]) -> list[int]:
        """Bring these files' links in line with their records; the ids now in line (the
        others stay pending, for ``settle`` or the next ``open``)."""
        done = []
        # Trashed first: a trashed file may share its name and bytes with a live one.
        for record in sorted(records, key=lambda r: r.trashed_at is None):
            try:
                if record.trashed_at is not None:
                    self._unlink_named(record)
                else:
                    self._link_named(record)
            except OSError as exc:
                log.warning(
                    "%s/%s: link not brought in line yet: %s", record.project, record.filename, exc
                )
                continue
            done.append(record.id)
        return done

    async def settle(self) -> None:
        await asyncio.to_thread(self._settle)

    def _settle(self) -> None:
        with self.db.write(change=False) as writer:
            pending = writer.pending()
            if pending:
                writer.settle(self._align(pending))
            if self._doomed:
                self._remove_blobs(writer, set(self._doomed))


async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
        yield chunk
