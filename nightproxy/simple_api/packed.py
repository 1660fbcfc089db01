"""Compact, immutable sequences of files: a page's records packed into a few large strings.

A page of 200,000 files held as 200,000 ``DistFile`` objects costs about 170 MB (an object, a
mapping of hashes, a datetime and several strings per file). Packed, each file is one
delimited record inside a shared string of a few thousand records: about a third of that,
in a few large blocks that go back to the system with the page. A record is decoded into a
``DistFile`` (or ``PublishedFile``) whenever it is read; readers of one field (the filename)
decode only that.

Records hold their fields separated by ``SEP``; no field may contain ``SEP`` or ``MARK``:
a file whose URL does is skipped (such a URL can be fetched by no client anyway), and free
text (a yank reason, a requires-python, a change marker) has them escaped (with ``ESC``).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Generic, TypeVar, cast, overload

from nightproxy.simple_api.records import DistFile

SEP = "\x1f"
#: Ends a URL field whose URL ends with the record's filename, which is not repeated.
MARK = "\x1e"
#: Records per segment: segments of about a megabyte.
SEGMENT = 4096
ESC = "\x1d"
_ESCAPE = str.maketrans({ESC: ESC + "0", MARK: ESC + "1", SEP: ESC + "2"})
_UNESCAPE = {"0": ESC, "1": MARK, "2": SEP}
_EMPTY: Mapping[str, str] = MappingProxyType({})
_DIST_FIELDS = 11

_T = TypeVar("_T")


class SequenceEquality:
    """Equality of the packed sequences: equal to any sequence (not text) with equal items, as
    a list of the decoded records would be; hashed by identity."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return sequences_equal(cast(Sequence[object], self), other)

    def __hash__(self) -> int:
        return id(self)


def sequences_equal(packed: Sequence[object], other: Sequence[object]) -> bool:
    if len(packed) != len(other):
        return False
    return all(a == b for a, b in zip(packed, other, strict=True))


class Records:
    """Immutable strings (records) stored as a few large strings and their ends."""

    __slots__ = ("_count", "_ends", "_segments")

    def __init__(self, segments: tuple[str, ...], ends: array[int], count: int) -> None:
        self._segments = segments
        self._ends = ends
        self._count = count

    def __len__(self) -> int:
        return self._count

    def record(self, index: int) -> str:
        if not 0 <= index < self._count:
            raise IndexError(index)
        segment = self._segments[index // SEGMENT]
        start = self._ends[index - 1] if index % SEGMENT else 0
        return segment[start : self._ends[index]]

    def __iter__(self) -> Iterator[str]:
        ends = self._ends
        for number, segment in enumerate(self._segments):
            start = 0
            base = number * SEGMENT
            for index in range(base, min(base + SEGMENT, self._count)):
                end = ends[index]
                yield segment[start:end]
                start = end

    def segments(self) -> tuple[str, ...]:
        return self._segments

    @property
    def ends(self) -> array[int]:
        """Where each record ends within its segment."""
        return self._ends

    @property
    def size(self) -> int:
        """Characters held."""
        return sum(len(s) for s in self._segments)

    @classmethod
    def build(cls, records: Iterable[str]) -> Records:
        builder = RecordsBuilder()
        for record in records:
            builder.add(record)
        return builder.build()


class RecordsBuilder:
    __slots__ = ("_ends", "_pending", "_segments")

    def __init__(self) -> None:
        self._segments: list[str] = []
        self._pending: list[str] = []
        self._ends: array[int] = array("L")

    def add(self, record: str) -> None:
        pending = self._pending
        self._ends.append((self._ends[-1] if pending else 0) + len(record))
        pending.append(record)
        if len(pending) == SEGMENT:
            self._segments.append("".join(pending))
            pending.clear()

    def __len__(self) -> int:
        return len(self._ends)

    def build(self) -> Records:
        if self._pending:
            self._segments.append("".join(self._pending))
            self._pending.clear()
        return Records(tuple(self._segments), self._ends, len(self._ends))


class _Packed(SequenceEquality, Sequence[_T], Generic[_T]):
    """A sequence of records decoded on access; equal to any sequence of equal items."""

    __slots__ = ("records",)

    def __init__(self, records: Records) -> None:
        self.records = records

    def _decode(self, record: str) -> _T:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> _T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[_T]: ...
    def __getitem__(self, index: int | slice) -> _T | Sequence[_T]:
        if isinstance(index, slice):
            return [self._decode(self.records.record(i)) for i in range(len(self))[index]]
        if index < 0:
            index += len(self)
        return self._decode(self.records.record(index))

    def __iter__(self) -> Iterator[_T]:
        decode = self._decode
        for record in self.records:
            yield decode(record)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)}>"

    def filenames(self) -> Iterator[str]:
        """Every record's filename (its first field), without decoding the rest."""
        for record in self.records:
            yield record[: record.index(SEP)]


# -- DistFile -------------------------------------------------------------------------------


def _text(value: str) -> str:
    return value.translate(_ESCAPE) if SEP in value or MARK in value or ESC in value else value


def _untext(text: str) -> str:
    if ESC not in text:
        return text
    head, *rest = text.split(ESC)
    return head + "".join(_UNESCAPE[part[:1]] + part[1:] for part in rest)


def encode_hashes(value: Mapping[str, str]) -> str:
    # Names and digests are known names and hex: nothing to escape (the parser drops others).
    return ",".join(f"{k}={v}" for k, v in value.items())


def decode_hashes(text: str) -> Mapping[str, str]:
    if not text:
        return _EMPTY
    return MappingProxyType(dict(item.split("=", 1) for item in text.split(",")))


def encode_meta(value: bool | Mapping[str, str]) -> str:
    if isinstance(value, bool):
        return "T" if value else ""
    return "H" + encode_hashes(value)


def decode_meta(text: str) -> bool | Mapping[str, str]:
    if not text:
        return False
    return True if text == "T" else decode_hashes(text[1:])


def encode_time(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def decode_time(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def encode_dist(file: DistFile) -> str | None:
    """One file's record; None when it cannot be packed (a URL holding a separator)."""
    url = file.url
    if SEP in url or MARK in url or SEP in file.filename or MARK in file.filename:
        return None
    if url.endswith(file.filename):
        url = url[: len(url) - len(file.filename)] + MARK
    yanked = file.yanked
    return SEP.join(
        (
            file.filename,
            url,
            _text(file.upstream),
            encode_hashes(file.hashes),
            "" if file.requires_python is None else "P" + _text(file.requires_python),
            ("T" if yanked else "") if isinstance(yanked, bool) else "R" + _text(yanked),
            "" if file.size is None else str(file.size),
            encode_time(file.upload_time),
            encode_meta(file.core_metadata),
            "" if file.change_marker is None else "M" + _text(file.change_marker),
            "R" if file.retained else "",
        )
    )


def dist_of_fields(fields: list[str]) -> DistFile:
    filename, url = fields[0], fields[1]
    if url.endswith(MARK):
        url = url[:-1] + filename
    rp, yanked, size = fields[4], fields[5], fields[6]
    marker = fields[9]
    yank: bool | str = False if not yanked else True if yanked == "T" else _untext(yanked[1:])
    return DistFile(
        filename=filename,
        url=url,
        upstream=_untext(fields[2]),
        hashes=decode_hashes(fields[3]),
        requires_python=_untext(rp[1:]) if rp else None,
        yanked=yank,
        size=int(size) if size else None,
        upload_time=decode_time(fields[7]),
        core_metadata=decode_meta(fields[8]),
        change_marker=_untext(marker[1:]) if marker else None,
        retained=fields[10] == "R",
    )


def decode_dist(record: str) -> DistFile:
    return dist_of_fields(record.split(SEP))


class PackedFiles(_Packed[DistFile]):
    """A page's files, packed."""

    __slots__ = ()

    def _decode(self, record: str) -> DistFile:
        return decode_dist(record)

    @classmethod
    def of(cls, files: Iterable[DistFile]) -> PackedFiles:
        """``files`` packed (as they are if packed already); a file that cannot be is left out."""
        if isinstance(files, PackedFiles):
            return files
        builder = RecordsBuilder()
        for file in files:
            record = encode_dist(file)
            if record is not None:
                builder.add(record)
        return cls(builder.build())

    def chain(self, more: Sequence[DistFile]) -> PackedFiles:
        """These files, then ``more``."""
        if not more:
            return self
        return PackedFiles(Records.build([*self.records, *PackedFiles.of(more).records]))
