"""A project's records in a bucket: one JSON manifest per project, changed by conditional
writes (``If-Match`` its ETag), so that several servers over one bucket take turns.

Pure: reading and writing the manifest's bytes, and the changes a storage makes to it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from packaging.utils import NormalizedName

from nightproxy.hosted.records import FileRecord, NewFile

FORMAT = 1


class ManifestError(ValueError):
    """A manifest this version cannot read; its project is left as it is, never rewritten."""


@dataclass(slots=True)
class Entry:
    """A record, and the ETag of the object holding its bytes (named while live, in the
    trash when trashed): a read with ``If-Match`` that ETag never gets other bytes."""

    record: FileRecord
    etag: str
    #: For a trashed record: the ETag of its named object, still to be removed (a deletion
    #: that failed part way leaves it for the next retention run).
    unlink: str | None = None


@dataclass(slots=True)
class Manifest:
    project: NormalizedName
    entries: list[Entry] = field(default_factory=list)
    #: Files deleted so far, per reason.
    deleted: dict[str, int] = field(default_factory=dict)

    def live(self) -> list[Entry]:
        return [e for e in self.entries if e.record.trashed_at is None]

    def trashed(self) -> list[Entry]:
        return [e for e in self.entries if e.record.trashed_at is not None]

    def live_named(self, filename: str) -> Entry | None:
        return next((e for e in self.live() if e.record.filename == filename), None)

    def by_id(self, record_id: int) -> Entry | None:
        return next((e for e in self.entries if e.record.id == record_id), None)

    def add(self, new: NewFile, etag: str) -> FileRecord:
        record = FileRecord(
            id=record_id(new.project, new.filename, new.sha256, new.upload_time),
            project=new.project,
            filename=new.filename,
            sha256=new.sha256,
            blake2_256=new.blake2_256,
            size=new.size,
            upload_time=new.upload_time,
            aged_from=new.upload_time,
            uploader=new.uploader,
            metadata_sha256=new.metadata_sha256,
            requires_python=new.requires_python,
        )
        self.entries.append(Entry(record, etag))
        return record

    def trash(
        self,
        entry: Entry,
        reason: str,
        detail: str,
        now: datetime,
        etag: str,
        *,
        unlink: str | None = None,
    ) -> None:
        entry.record = replace(
            entry.record, trashed_at=now, trash_reason=reason, trash_detail=detail
        )
        entry.etag = etag
        entry.unlink = unlink
        self.deleted[reason] = self.deleted.get(reason, 0) + 1

    def restore(self, entry: Entry, now: datetime, etag: str) -> None:
        entry.record = replace(
            entry.record, trashed_at=None, trash_reason=None, trash_detail=None, aged_from=now
        )
        entry.etag = etag
        entry.unlink = None

    def unlinking(self) -> list[Entry]:
        """Trashed entries whose named object is still to be removed."""
        return [e for e in self.trashed() if e.unlink is not None]

    def forget(self, entry: Entry) -> None:
        self.entries.remove(entry)

    def needs(self, digest: str, *, trashed: bool | None = None) -> bool:
        """Whether any entry (of the given state) refers to these bytes or METADATA."""
        return any(
            digest in (e.record.sha256, e.record.metadata_sha256)
            for e in self.entries
            if trashed is None or (e.record.trashed_at is not None) == trashed
        )


def record_id(project: str, filename: str, sha256: str, upload_time: datetime) -> int:
    """A stable id (63 bits) for a record that only a manifest holds."""
    text = f"{project}\n{filename}\n{sha256}\n{upload_time.timestamp()}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _stamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def dumps(manifest: Manifest) -> bytes:
    files = []
    for entry in manifest.entries:
        r = entry.record
        files.append(
            {
                "id": r.id,
                "filename": r.filename,
                "sha256": r.sha256,
                "blake2_256": r.blake2_256,
                "size": r.size,
                "upload_time": _stamp(r.upload_time),
                "aged_from": _stamp(r.aged_from),
                "uploader": r.uploader,
                "metadata_sha256": r.metadata_sha256,
                "requires_python": r.requires_python,
                "trashed_at": _stamp(r.trashed_at),
                "trash_reason": r.trash_reason,
                "trash_detail": r.trash_detail,
                "etag": entry.etag,
                **({"unlink": entry.unlink} if entry.unlink is not None else {}),
            }
        )
    document = {
        "format": FORMAT,
        "project": manifest.project,
        "files": files,
        "deleted": manifest.deleted,
    }
    return json.dumps(document, sort_keys=True).encode()


def loads(data: bytes, project: NormalizedName) -> Manifest:
    try:
        document = json.loads(data)
        if document.get("format") != FORMAT or document.get("project") != project:
            raise ManifestError(f"{project}: manifest of another format or project")
        entries = [_entry(item, project) for item in document["files"]]
        deleted = {str(k): int(v) for k, v in dict(document.get("deleted", {})).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{project}: unreadable manifest ({exc})") from None
    return Manifest(project, entries, deleted)


def _entry(item: dict[str, Any], project: NormalizedName) -> Entry:
    upload_time = _time(float(item["upload_time"]))
    aged_from = _time(float(item["aged_from"]))
    assert upload_time is not None
    assert aged_from is not None
    record = FileRecord(
        id=int(item["id"]),
        project=project,
        filename=str(item["filename"]),
        sha256=str(item["sha256"]),
        blake2_256=str(item["blake2_256"]),
        size=int(item["size"]),
        upload_time=upload_time,
        aged_from=aged_from,
        uploader=str(item["uploader"]),
        metadata_sha256=item.get("metadata_sha256"),
        requires_python=item.get("requires_python"),
        trashed_at=_time(item.get("trashed_at")),
        trash_reason=item.get("trash_reason"),
        trash_detail=item.get("trash_detail"),
    )
    unlink = item.get("unlink")
    return Entry(record, str(item["etag"]), None if unlink is None else str(unlink))
