"""Deleting from a bucket-stored hosted feed: trash, restore, purge, and the named objects
left to unlink.

A file goes to the trash by a server-side copy of its bytes to ``.nightproxy/trash/<sha256>``
(If-Match the ETag its record names), then its record says so, and only then does its named
object go (If-Match the same ETag: a new upload of the name may be there). A named object that
cannot go at once stays to do in the manifest, for ``settle``. A restore copies the bytes back
on a condition on the name, like every write of a name (``bucket``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from contextlib import suppress
from datetime import datetime

from packaging.utils import NormalizedName

from nightproxy.hosted.bucket_manifests import (
    CAS_ATTEMPTS,
    BucketManifests,
    metadata_key,
    named_key,
    sha_of,
    trash_key,
)
from nightproxy.hosted.manifest import Entry, dumps, loads
from nightproxy.hosted.records import FileRecord
from nightproxy.hosted.storage import RestoreConflictError, StaleError
from nightproxy.objectstore import ObjectNotFoundError, PreconditionFailedError, StoreError

log = logging.getLogger(__name__)


class BucketTrash(BucketManifests):
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
        copies: dict[int, tuple[str, str | None]] = {}
        for entry in entries:
            copies[entry.record.id] = await self._to_trash(project, entry)
        for entry in entries:
            text = detail if isinstance(detail, str) else detail.get(entry.record.id, "")
            trash_etag, unlink = copies[entry.record.id]
            # The named object goes after the record says so: until then it is listed.
            manifest.trash(entry, reason, text, now, trash_etag, unlink=unlink)
        try:
            await self._write(manifest, etag)
        except PreconditionFailedError:
            if if_generation is not None:
                raise StaleError(f"{project} changed meanwhile") from None
            return await self._trash_project(
                project, chosen, reason=reason, detail=detail, now=now, if_generation=None
            )
        await self._unlink(project, entries)
        return [e.record for e in entries]

    async def _to_trash(self, project: NormalizedName, entry: Entry) -> tuple[str, str | None]:
        """Copy a listed file's bytes to the trash: the copy's ETag, and the named object to
        unlink once the record says so (None: the name no longer holds these bytes)."""
        named = named_key(project, entry.record.filename)
        try:
            copied = await self.store.copy(
                named, trash_key(entry.record.sha256), if_match=entry.etag
            )
        except (PreconditionFailedError, ObjectNotFoundError):
            # An upload that recorded nothing wrote over the name, after copying these bytes
            # to the trash (``bucket``): they are there, and the named object is not ours.
            try:
                return (await self.store.head(trash_key(entry.record.sha256))).etag, None
            except ObjectNotFoundError:
                return "", None  # the bytes are gone: trashed, not restorable
        return copied, entry.etag

    async def _unlink(self, project: NormalizedName, entries: list[Entry]) -> bool:
        """Remove trashed entries' named objects; one that cannot go now stays to do (in the
        manifest) for ``settle``. Whether any went."""
        went = False
        for entry in entries:
            if entry.unlink is None:
                continue
            try:
                # Only the bytes this record had: a new upload of the name may be there.
                await self.store.delete(
                    named_key(project, entry.record.filename), if_match=entry.unlink
                )
            except PreconditionFailedError:
                pass
            except StoreError as exc:
                log.warning(
                    "hosted feed: %s/%s stays named for now: %s",
                    project,
                    entry.record.filename,
                    exc,
                )
                continue
            entry.unlink = None
            went = True
        return went

    async def settle(self) -> None:
        for manifest in await self._current():
            if await self._unlink(manifest.project, manifest.unlinking()):
                held = self._manifests.get(manifest.project)
                if held is not None and held[1] is manifest:
                    # Otherwise the next change of the project writes it.
                    with suppress(PreconditionFailedError):
                        await self._write(manifest, held[0])

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
                manifest.restore(entry, now, await self._restore_bytes(project, entry))
            await self._write(manifest, etag)
            restored += [e.record for e in entries]
        return restored

    async def _restore_bytes(self, project: NormalizedName, entry: Entry) -> str:
        """Copy a trashed file's bytes back to its name; their new ETag.

        On a condition, like every write of a name: over nothing, or over this file's own
        bytes still waiting to be unlinked, never over an upload of the name in flight.
        """
        named = named_key(project, entry.record.filename)
        try:
            info = await self.store.head(named)
        except ObjectNotFoundError:
            present = None
        else:
            present = info.etag
            if sha_of(info) == entry.record.sha256:
                return present  # these very bytes (a restore that failed after its copy)
        if present is not None and present != entry.unlink:
            raise RestoreConflictError(
                f"{project}/{entry.record.filename}: a file of that name is being uploaded"
            )
        try:
            return await self.store.copy(
                trash_key(entry.record.sha256),
                named,
                target_if_none_match=present is None,
                target_if_match=present,
            )
        except ObjectNotFoundError:
            raise RestoreConflictError(f"{entry.record.filename}: its bytes are gone") from None
        except PreconditionFailedError:
            raise RestoreConflictError(
                f"{project}/{entry.record.filename}: a file of that name is being uploaded"
            ) from None

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
                # Forgotten only once no named object is left to stand for it.
                await self._unlink(project, gone)
                gone = [e for e in gone if e.unlink is None]
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
                # Any record's: a listed file whose name an unrecorded upload wrote over is
                # served from its trash copy.
                if not manifest.needs(entry.record.sha256):
                    await self.store.delete(trash_key(entry.record.sha256))
                    removed += 1
                meta = entry.record.metadata_sha256
                if meta is not None and not manifest.needs(meta):
                    await self.store.delete(metadata_key(meta))
                    removed += 1
        return removed
