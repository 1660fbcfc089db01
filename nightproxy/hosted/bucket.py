"""A hosted feed in an S3-compatible bucket, shareable by several servers.

Layout under the feed's prefix::

    <project>/<filename>                   what the feed lists (the layout the s3 kind reads)
    .nightproxy/projects/<project>.json    the project's records (``manifest``): the authority
    .nightproxy/metadata/<sha256>          extracted METADATA, by content
    .nightproxy/trash/<sha256>             the bytes of deleted and replaced files

A new filename is written with ``If-None-Match: *``, so of two servers taking the same upload
only one writes it; a manifest is only ever replaced with ``If-Match`` its ETag, so concurrent
changes to one project take turns. Every read of a file's bytes carries ``If-Match`` the ETag
its record holds: a link to replaced bytes fails, it never gives the new ones. Bytes move
to and from the trash by server-side copies.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from packaging.utils import NormalizedName

from nightproxy.hosted.manifest import Manifest, ManifestError, dumps, loads
from nightproxy.hosted.records import FileRecord, NewFile
from nightproxy.hosted.storage import (
    REASON_REPLACED,
    CommitResult,
    Outcome,
    RestoreConflictError,
    Staged,
    StaleError,
    Storage,
)
from nightproxy.objectstore import ObjectNotFoundError, ObjectStore, PreconditionFailedError
from nightproxy.objectstore.writer import ObjectWriter

log = logging.getLogger(__name__)

STATE = ".nightproxy/"
PROJECTS = STATE + "projects/"
#: How long a named object without a record may be an upload in progress on another server;
#: older, it is what a crash between writing the bytes and the record left, and is removed.
ORPHAN_AGE = timedelta(hours=1)
#: How long an upload that lost the race for a filename waits for the winner's record.
WINNER_WAIT = 10.0
#: Attempts at a manifest change while other servers change the same project.
CAS_ATTEMPTS = 8
READ_CHUNK = 1024 * 1024


def _named(project: str, filename: str) -> str:
    return f"{project}/{filename}"


def _trash_key(digest: str) -> str:
    return f"{STATE}trash/{digest}"


def _metadata_key(digest: str) -> str:
    return f"{STATE}metadata/{digest}"


def _manifest_key(project: str) -> str:
    return f"{PROJECTS}{project}.json"


class BucketStorage(Storage):
    def __init__(self, store: ObjectStore, staging_dir: Path) -> None:
        super().__init__(staging_dir)
        self.store = store
        #: project -> (manifest ETag, manifest) as last read.
        self._manifests: dict[NormalizedName, tuple[str, Manifest]] = {}
        self._listed: dict[NormalizedName, str] = {}

    # -- reading ---------------------------------------------------------------------------

    async def _list_manifests(self) -> dict[NormalizedName, str]:
        found: dict[NormalizedName, str] = {}
        async for info in self.store.list_objects(PROJECTS):
            name = info.key[len(PROJECTS) :].removesuffix(".json")
            found[NormalizedName(name)] = info.etag
        self._listed = found
        return found

    async def _read(self, project: NormalizedName) -> tuple[str | None, Manifest]:
        """The project's manifest as stored now (empty with no ETag when there is none)."""
        try:
            data, info = await self.store.get(_manifest_key(project))
        except ObjectNotFoundError:
            return None, Manifest(project)
        manifest = await asyncio.to_thread(loads, data, project)
        self._manifests[project] = (info.etag, manifest)
        return info.etag, manifest

    async def _current(self) -> list[Manifest]:
        listed = await self._list_manifests()
        manifests = []
        for project, etag in sorted(listed.items()):
            held = self._manifests.get(project)
            if held is None or held[0] != etag:
                try:
                    _etag, manifest = await self._read(project)
                except ManifestError as exc:
                    log.warning("hosted feed in %s: %s: left out", self.store.url(None), exc)
                    continue
                manifests.append(manifest)
            else:
                manifests.append(held[1])
        return manifests

    async def generation(self) -> int:
        listed = await self._list_manifests()
        text = "\n".join(f"{project} {etag}" for project, etag in sorted(listed.items()))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1

    async def live(self, project: NormalizedName | None = None) -> list[FileRecord]:
        return [
            e.record
            for m in await self._current()
            if project is None or m.project == project
            for e in m.live()
        ]

    async def trashed(self, project: NormalizedName | None = None) -> list[FileRecord]:
        return [
            e.record
            for m in await self._current()
            if project is None or m.project == project
            for e in m.trashed()
        ]

    async def deletions(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for manifest in await self._current():
            for reason, count in manifest.deleted.items():
                totals[reason] = totals.get(reason, 0) + count
        return totals

    def local_path(self, digest: str) -> Path | None:
        return None

    async def read_blob(self, digest: str) -> bytes:
        data, _info = await self.store.get(_metadata_key(digest))
        return data

    def open_bytes(self, record: FileRecord) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._open_bytes(record)

    @asynccontextmanager
    async def _open_bytes(self, record: FileRecord) -> AsyncIterator[AsyncIterator[bytes]]:
        held = self._manifests.get(record.project)
        entry = held[1].by_id(record.id) if held is not None else None
        if entry is None or entry.record.trashed_at is not None:
            raise ObjectNotFoundError(f"{record.filename}: no longer listed")
        key = _named(record.project, record.filename)
        async with self.store.open(key, if_match=entry.etag) as reader:
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

    async def _write(self, manifest: Manifest, etag: str | None) -> None:
        """Replace the manifest if it is still ``etag`` (``PreconditionFailedError`` if not)."""
        data = dumps(manifest)
        key = _manifest_key(manifest.project)
        if etag is None:
            new_etag = await self.store.put(key, data, if_none_match=True)
        else:
            new_etag = await self.store.put(key, data, if_match=etag)
        self._manifests[manifest.project] = (new_etag, manifest)

    async def _put_file(self, path: Path, key: str, *, if_none_match: bool) -> str:
        async with ObjectWriter(self.store, key) as writer:
            handle = await asyncio.to_thread(path.open, "rb")
            try:
                while chunk := await asyncio.to_thread(handle.read, writer.part_size):
                    await writer.write(chunk)
            finally:
                await asyncio.to_thread(handle.close)
            return await writer.commit(if_none_match=if_none_match)

    async def commit(self, staged: Staged, new: NewFile, *, overwrite: bool) -> CommitResult:
        project, key = new.project, _named(new.project, new.filename)
        etag, manifest = await self._read(project)
        existing = manifest.live_named(new.filename)
        if existing is not None and existing.record.sha256 == new.sha256:
            return CommitResult(Outcome.UNCHANGED, existing.record)
        if existing is not None and not overwrite:
            return CommitResult(Outcome.EXISTS, existing.record)
        if existing is None:
            try:
                object_etag = await self._put_file(staged.path, key, if_none_match=True)
            except PreconditionFailedError:
                return await self._lost_race(new)
        else:
            # The old bytes stay restorable, and links to them keep failing rather than
            # giving these new ones (their reads carry the old ETag).
            try:
                await self.store.copy(
                    key, _trash_key(existing.record.sha256), if_match=existing.etag
                )
            except PreconditionFailedError:
                raise StaleError(f"{new.filename} is being replaced by another upload") from None
            object_etag = await self._put_file(staged.path, key, if_none_match=False)
        if staged.metadata is not None and new.metadata_sha256 is not None:
            # Already there means the same bytes, stored for an earlier upload.
            with suppress(PreconditionFailedError):
                await self.store.put(
                    _metadata_key(new.metadata_sha256), staged.metadata, if_none_match=True
                )
        for _attempt in range(CAS_ATTEMPTS):
            replaced = manifest.live_named(new.filename)
            if replaced is not None:
                try:
                    trash_etag = (await self.store.head(_trash_key(replaced.record.sha256))).etag
                except ObjectNotFoundError:
                    trash_etag = ""  # replaced by a concurrent overwrite: not restorable
                manifest.trash(
                    replaced,
                    REASON_REPLACED,
                    f"replaced by {new.uploader}",
                    new.upload_time,
                    trash_etag,
                )
            record = manifest.add(new, object_etag)
            try:
                await self._write(manifest, etag)
            except PreconditionFailedError:
                etag, manifest = await self._read(project)
                continue
            outcome = Outcome.CREATED if replaced is None else Outcome.REPLACED
            return CommitResult(outcome, record, None if replaced is None else replaced.record)
        raise StaleError(f"{project}: its records kept changing; upload again")

    async def _lost_race(self, new: NewFile) -> CommitResult:
        """Another upload holds the filename: the answer is its record, once written."""
        deadline = asyncio.get_running_loop().time() + WINNER_WAIT
        while True:
            _etag, manifest = await self._read(new.project)
            winner = manifest.live_named(new.filename)
            if winner is not None:
                same = winner.record.sha256 == new.sha256
                return CommitResult(Outcome.UNCHANGED if same else Outcome.EXISTS, winner.record)
            if asyncio.get_running_loop().time() > deadline:
                raise StaleError(
                    f"{new.filename}: another upload of this name is still in progress"
                )
            await asyncio.sleep(0.2)

    async def trash(
        self,
        records: Collection[FileRecord],
        reason: str,
        detail: str | Mapping[int, str],
        now: datetime,
        *,
        if_generation: int | None = None,
    ) -> list[FileRecord]:
        if if_generation is not None and await self.generation() != if_generation:
            raise StaleError("the feed changed meanwhile")
        done: list[FileRecord] = []
        by_project: dict[NormalizedName, list[FileRecord]] = {}
        for record in records:
            by_project.setdefault(record.project, []).append(record)
        for project, chosen in sorted(by_project.items()):
            done += await self._trash_project(
                project, chosen, reason=reason, detail=detail, now=now, if_generation=if_generation
            )
        return done

    async def _trash_project(
        self,
        project: NormalizedName,
        chosen: list[FileRecord],
        *,
        reason: str,
        detail: str | Mapping[int, str],
        now: datetime,
        if_generation: int | None,
    ) -> list[FileRecord]:
        held = self._manifests.get(project)
        if if_generation is not None and held is not None:
            # As the plan saw it: a project changed since is planned again, not trashed.
            etag: str | None = held[0]
            manifest = loads(dumps(held[1]), project)
        else:
            etag, manifest = await self._read(project)
        entries = [e for r in chosen if (e := manifest.by_id(r.id)) and not e.record.trashed_at]
        named_etags = {e.record.id: e.etag for e in entries}
        copies = {}
        for entry in entries:
            named = _named(project, entry.record.filename)
            copies[entry.record.id] = await self.store.copy(
                named, _trash_key(entry.record.sha256), if_match=entry.etag
            )
        for entry in entries:
            text = detail if isinstance(detail, str) else detail.get(entry.record.id, "")
            manifest.trash(entry, reason, text, now, copies[entry.record.id])
        try:
            await self._write(manifest, etag)
        except PreconditionFailedError:
            if if_generation is not None:
                raise StaleError(f"{project} changed meanwhile") from None
            return await self._trash_project(
                project, chosen, reason=reason, detail=detail, now=now, if_generation=None
            )
        for entry in entries:
            # Only the bytes this record had: a new upload of the name may be there already.
            with suppress(PreconditionFailedError):
                await self.store.delete(
                    _named(project, entry.record.filename), if_match=named_etags[entry.record.id]
                )
        return [e.record for e in entries]

    async def restore(self, records: Collection[FileRecord], now: datetime) -> list[FileRecord]:
        restored: list[FileRecord] = []
        for project in sorted({r.project for r in records}):
            etag, manifest = await self._read(project)
            chosen = [r for r in records if r.project == project]
            entries = [e for r in chosen if (e := manifest.by_id(r.id)) and e.record.trashed_at]
            names = [e.record.filename for e in entries]
            for entry in entries:
                if (
                    manifest.live_named(entry.record.filename)
                    or names.count(entry.record.filename) > 1
                ):
                    raise RestoreConflictError(
                        f"{project}/{entry.record.filename}: a file of that name is listed; "
                        "delete it first"
                    )
            for entry in entries:
                named = _named(project, entry.record.filename)
                try:
                    new_etag = await self.store.copy(_trash_key(entry.record.sha256), named)
                except ObjectNotFoundError:
                    raise RestoreConflictError(
                        f"{entry.record.filename}: its bytes are gone"
                    ) from None
                manifest.restore(entry, now, new_etag)
            await self._write(manifest, etag)
            restored += [e.record for e in entries]
        return restored

    async def purge(self, records: Collection[FileRecord], protect: Collection[str]) -> int:
        removed = 0
        for project in sorted({r.project for r in records}):
            for _attempt in range(CAS_ATTEMPTS):
                etag, manifest = await self._read(project)
                gone = [
                    e
                    for r in records
                    if r.project == project
                    and (e := manifest.by_id(r.id))
                    and e.record.trashed_at
                    and e.record.sha256 not in protect
                ]
                for entry in gone:
                    manifest.forget(entry)
                try:
                    await self._write(manifest, etag)
                except PreconditionFailedError:
                    continue
                break
            else:
                continue
            for entry in gone:
                if not manifest.needs(entry.record.sha256, trashed=True):
                    await self.store.delete(_trash_key(entry.record.sha256))
                    removed += 1
                meta = entry.record.metadata_sha256
                if meta is not None and not manifest.needs(meta):
                    await self.store.delete(_metadata_key(meta))
                    removed += 1
        return removed


def _modified(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None
