"""A hosted feed in an S3-compatible bucket, shareable by several servers.

Layout under the feed's prefix::

    <project>/<filename>                   what the feed lists (the layout the s3 kind reads)
    .nightproxy/projects/<project>.json    the project's records (``manifest``): the authority
    .nightproxy/metadata/<sha256>          extracted METADATA, by content
    .nightproxy/trash/<sha256>             the bytes of deleted and replaced files

A new filename is written with ``If-None-Match: *`` and a replacement with ``If-Match`` the
ETag its record names, so of two servers writing one name only one writes it; a manifest is
only ever replaced with ``If-Match`` its ETag, so concurrent changes to one project take turns.
Every read of a file's bytes carries ``If-Match`` the ETag its record holds: a link to
replaced bytes never gives the new ones (it is served from the trash, where the bytes of a
replaced file go first, or fails). Bytes move to and from the trash by server-side copies.

Every named object carries its sha256 as user metadata, which settles what a conditional write
alone cannot: a write whose answer was lost (the retry then loses its own condition) is known
for this upload's by its sha256, and a named object no record lists after ``STRAY_AGE`` (a
server died between writing bytes and record) is written over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from packaging.utils import NormalizedName

from nightproxy.hosted.bucket_manifests import (
    CAS_ATTEMPTS,
    SHA_META,
    STATE,
    metadata_key,
    named_key,
    sha_of,
    trash_key,
)
from nightproxy.hosted.bucket_trash import BucketTrash
from nightproxy.hosted.records import FileRecord, NewFile
from nightproxy.hosted.storage import (
    REASON_REPLACED,
    CommitResult,
    Outcome,
    Staged,
    StaleError,
    Storage,
)
from nightproxy.objectstore import (
    ObjectNotFoundError,
    ObjectStore,
    PreconditionFailedError,
)
from nightproxy.objectstore.writer import ObjectWriter

log = logging.getLogger(__name__)

#: How long a named object without a record may be an upload in progress on another server;
#: older, it is what a crash between writing the bytes and the record left, and is removed.
ORPHAN_AGE = timedelta(hours=1)
#: Seconds (by the store's clock) after which a named object no record lists is taken for the
#: bytes of an upload that died before writing its record: an upload writes its record right
#: after its bytes.
STRAY_AGE = 10.0
#: How long an upload that lost the race for a filename waits for the winner's record.
WINNER_WAIT = 10.0
READ_CHUNK = 1024 * 1024


class BucketStorage(BucketTrash, Storage):
    def __init__(self, store: ObjectStore, staging_dir: Path) -> None:
        Storage.__init__(self, staging_dir)
        BucketTrash.__init__(self, store)

    def local_path(self, digest: str) -> Path | None:
        return None

    async def read_blob(self, digest: str) -> bytes:
        data, _info = await self.store.get(metadata_key(digest))
        return data

    def open_bytes(self, record: FileRecord) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._open_bytes(record)

    @asynccontextmanager
    async def _open_bytes(self, record: FileRecord) -> AsyncIterator[AsyncIterator[bytes]]:
        held = self._manifests.get(record.project)
        entry = held[1].by_id(record.id) if held is not None else None
        if entry is None or entry.record.trashed_at is not None:
            raise ObjectNotFoundError(f"{record.filename}: no longer listed")
        key = named_key(record.project, record.filename)
        async with AsyncExitStack() as stack:
            try:
                reader = await stack.enter_async_context(self.store.open(key, if_match=entry.etag))
            except PreconditionFailedError:
                # Overwritten by an upload that has not written (or never wrote) its record:
                # the listed bytes were copied to the trash before that write.
                reader = await stack.enter_async_context(self.store.open(trash_key(record.sha256)))
            yield reader.chunks(READ_CHUNK)

    # -- opening ---------------------------------------------------------------------------

    async def open(self, now: datetime) -> None:
        await asyncio.to_thread(self.clean_staging)
        manifests = {m.project: m for m in await self._current()}
        async for info in self.store.list_objects(""):
            parts = info.key.split("/")
            if info.key.startswith(STATE) or len(parts) != 2:
                continue
            manifest = manifests.get(NormalizedName(parts[0]))
            entry = manifest.live_named(parts[1]) if manifest is not None else None
            if entry is not None:
                continue
            modified = _modified(info.last_modified)
            if modified is not None and now - modified > ORPHAN_AGE:
                # Written by an upload that never recorded it, or trashed before a crash.
                log.warning("hosted feed: removing %s, which no record lists", info.key)
                await self.store.delete(info.key, if_match=info.etag)

    async def close(self) -> None:
        self._manifests.clear()

    # -- changing --------------------------------------------------------------------------

    async def _put_file(
        self,
        path: Path,
        key: str,
        sha256: str,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        async with ObjectWriter(self.store, key, metadata={SHA_META: sha256}) as writer:
            handle = await asyncio.to_thread(path.open, "rb")
            try:
                while chunk := await asyncio.to_thread(handle.read, writer.part_size):
                    await writer.write(chunk)
            finally:
                await asyncio.to_thread(handle.close)
            return await writer.commit(if_none_match=if_none_match, if_match=if_match)

    async def commit(self, staged: Staged, new: NewFile, *, overwrite: bool) -> CommitResult:
        orphan: _Stray | None = None
        for _attempt in range(CAS_ATTEMPTS):
            try:
                return await self._commit(staged, new, overwrite=overwrite, orphan=orphan)
            except _OvertakenError as lost:
                # Another upload of this name wrote its bytes first: once its record is
                # written, this one is the same bytes, refused, or (overwrite) replaces it.
                orphan = await self._next_record(new, lost.expected)
        raise StaleError(f"{new.filename}: other uploads of this name kept winning; upload again")

    async def _commit(
        self, staged: Staged, new: NewFile, *, overwrite: bool, orphan: _Stray | None = None
    ) -> CommitResult:
        """``orphan``: a named object no record lists (its upload died), which this one
        writes over while the name's record is still the one it was found beside."""
        project, key = new.project, named_key(new.project, new.filename)
        etag, manifest = await self._read(project)
        existing = manifest.live_named(new.filename)
        if orphan is not None and orphan.beside != (None if existing is None else existing.etag):
            orphan = None  # the record changed since: go by it
        if existing is not None and existing.record.sha256 == new.sha256:
            return CommitResult(Outcome.UNCHANGED, existing.record)
        if existing is not None and not overwrite:
            return CommitResult(Outcome.EXISTS, existing.record)
        # The named object is only ever written on a condition: absent for a new name, else
        # still the ETag the record names. So of two servers writing one name at once exactly
        # one wins, and a record never names bytes another upload replaced. (AWS S3, R2,
        # MinIO and SeaweedFS honour If-None-Match and If-Match on PUT and on
        # CompleteMultipartUpload.)
        expected = None if existing is None else existing.etag
        if orphan is not None:
            pass  # the bytes the record names went to the trash before the orphan's write
        elif existing is None:
            # A deleted file of this name whose named object a failure left behind.
            await self._unlink(
                project, [e for e in manifest.unlinking() if e.record.filename == new.filename]
            )
        else:
            # The old bytes stay restorable, and links to them keep failing rather than
            # giving these new ones (their reads carry the old ETag).
            try:
                await self.store.copy(
                    key, trash_key(existing.record.sha256), if_match=existing.etag
                )
            except (PreconditionFailedError, ObjectNotFoundError):
                raise _OvertakenError(expected) from None
        object_etag: str | None
        try:
            object_etag = await self._put_file(
                staged.path,
                key,
                new.sha256,
                if_none_match=existing is None and orphan is None,
                if_match=orphan.etag if orphan is not None else expected,
            )
        except (PreconditionFailedError, ObjectNotFoundError):
            # Lost to another write, unless the write that won was this one's (its answer was
            # lost, and the retry lost to it) or of these very bytes.
            object_etag = await self._holding(key, new.sha256)
        if object_etag is None:
            raise _OvertakenError(expected)
        if staged.metadata is not None and new.metadata_sha256 is not None:
            # Already there means the same bytes, stored for an earlier upload.
            with suppress(PreconditionFailedError):
                await self.store.put(
                    metadata_key(new.metadata_sha256), staged.metadata, if_none_match=True
                )
        for _attempt in range(CAS_ATTEMPTS):
            replaced = manifest.live_named(new.filename)
            if replaced is not None and replaced.etag != expected:
                # Listed meanwhile by a change that did not see these bytes (a restore):
                # its record names the object as it is now, this upload's bytes are gone.
                raise _OvertakenError(expected)
            if replaced is not None:
                try:
                    trash_etag = (await self.store.head(trash_key(replaced.record.sha256))).etag
                except ObjectNotFoundError:
                    trash_etag = ""  # its trash copy went meanwhile: not restorable
                manifest.trash(
                    replaced,
                    REASON_REPLACED,
                    f"replaced by {new.uploader}",
                    new.upload_time,
                    trash_etag,
                )
            for entry in manifest.unlinking():
                if entry.unlink == object_etag:
                    # A deleted file's leftover that this upload adopted (the same bytes,
                    # ``_holding``): they are the new record's now, not to be removed.
                    entry.unlink = None
            record = manifest.add(new, object_etag)
            try:
                await self._write(manifest, etag)
            except PreconditionFailedError:
                etag, manifest = await self._read(project)
                continue
            outcome = Outcome.CREATED if replaced is None else Outcome.REPLACED
            return CommitResult(outcome, record, None if replaced is None else replaced.record)
        raise StaleError(f"{project}: its records kept changing; upload again")

    async def _holding(self, key: str, sha256: str) -> str | None:
        """The named object's ETag if it holds the bytes ``sha256`` names, else None."""
        try:
            info = await self.store.head(key)
        except ObjectNotFoundError:
            return None
        return info.etag if sha_of(info) == sha256 else None

    async def _next_record(self, new: NewFile, expected: str | None) -> _Stray | None:
        """Wait until the name's record no longer names ``expected`` (None: no bytes), which
        the upload that won the name writes next; None once it does.

        When it does not within ``WINNER_WAIT`` and the named object was written over
        ``STRAY_AGE`` ago (by the store's clock), the upload that wrote it died before its
        record, or is very slow: its bytes are copied to the trash (so that, should its
        record come after all, the record's reads find them there) and the object is
        returned, to write over.
        """
        key = named_key(new.project, new.filename)
        deadline = asyncio.get_running_loop().time() + WINNER_WAIT
        while True:
            _etag, manifest = await self._read(new.project)
            live = manifest.live_named(new.filename)
            if (None if live is None else live.etag) != expected:
                return None
            if asyncio.get_running_loop().time() > deadline:
                with suppress(ObjectNotFoundError, PreconditionFailedError):
                    info = await self.store.head(key)
                    sha = sha_of(info)
                    if info.etag != expected and (info.age or 0.0) > STRAY_AGE and sha:
                        await self.store.copy(key, trash_key(sha), if_match=info.etag)
                        log.warning(
                            "hosted feed: %s was written by an upload that recorded nothing; "
                            "writing over it (its bytes kept in the trash)",
                            key,
                        )
                        return _Stray(info.etag, beside=expected)
                raise StaleError(
                    f"{new.filename}: another upload of this name is still in progress; "
                    "upload again"
                )
            await asyncio.sleep(0.2)


@dataclass(frozen=True, slots=True)
class _Stray:
    """A named object no record lists: its ETag, and the ETag the name's record had (None:
    no record) when it was found."""

    etag: str
    beside: str | None


class _OvertakenError(Exception):
    """Another change wrote the named object first; ``expected`` is the ETag (None: no
    object) this upload's write was conditioned on."""

    def __init__(self, expected: str | None) -> None:
        super().__init__(expected)
        self.expected = expected


def _modified(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None
