"""What a hosted feed lists as of one generation of its records, indexed for serving."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from packaging.utils import NormalizedName

from nightproxy.hosted.records import FileRecord


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The feed's live files as of one generation."""

    generation: int
    projects: Mapping[NormalizedName, tuple[FileRecord, ...]]
    #: Every live file and METADATA blob by sha256, to the file it belongs to.
    digests: Mapping[str, FileRecord] = field(default_factory=lambda: MappingProxyType({}))
    #: Files deleted so far, per reason.
    deletions: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(
        cls, generation: int, records: list[FileRecord], deletions: Mapping[str, int]
    ) -> Snapshot:
        projects: dict[NormalizedName, list[FileRecord]] = {}
        digests: dict[str, FileRecord] = {}
        for record in records:
            projects.setdefault(record.project, []).append(record)
            digests[record.sha256] = record
            if record.metadata_sha256 is not None:
                digests.setdefault(record.metadata_sha256, record)
        return cls(
            generation,
            MappingProxyType({name: tuple(files) for name, files in projects.items()}),
            MappingProxyType(digests),
            MappingProxyType(dict(deletions)),
        )

    def files(self) -> list[FileRecord]:
        return [record for files in self.projects.values() for record in files]
