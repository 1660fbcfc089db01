"""A project page's published files, packed: each a record of an upstream's packed list
(referred to, not copied) and a short record of what the proxy publishes of it."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import cast, overload

from nightproxy.simple_api.packed import (
    SEP,
    Records,
    SequenceEquality,
    decode_hashes,
    decode_meta,
    decode_time,
    dist_of_fields,
    encode_hashes,
    encode_meta,
    encode_time,
)
from nightproxy.simple_api.records import BuildTimeSource, PublishedFile


def encode_extras(pub: PublishedFile, key: str) -> str:
    """What the proxy publishes of a file beyond its upstream's record: the key (empty when
    it is the file's own sha256), the hashes (``=``: the upstream's), the metadata, the build
    time and where it came from, the size of the cached copy."""
    src = pub.source
    return SEP.join(
        (
            "" if key == src.sha256 else key,
            "=" if pub.hashes == src.hashes else encode_hashes(pub.hashes),
            encode_meta(pub.core_metadata),
            encode_time(pub.build_time),
            pub.build_time_source or "",
            "" if pub.cached_size is None else str(pub.cached_size),
        )
    )


def _sha256_of(record: str) -> str:
    """The sha256 in a file record's hashes field ("" if none)."""
    hashes = record.split(SEP, 4)[3]
    for item in hashes.split(","):
        if item.startswith("sha256="):
            return item[7:]
    return ""


class PackedPublished(SequenceEquality, Sequence[PublishedFile]):
    """A project page's published files: each a file of an upstream's packed list (referred
    to, not copied) and a short record of what the proxy publishes of it, with an index of
    their keys. The proxy's URL of a file is made from its key and filename by ``url_of``.
    """

    __slots__ = ("_extras", "_lists", "_table", "_where", "url_of")

    def __init__(
        self,
        lists: Sequence[Records],
        where: array[int],
        extras: Records,
        url_of: Callable[[str, str], str],
    ) -> None:
        self._lists = tuple(lists)
        #: Per file: its list's number (high 32 bits) and its index in that list.
        self._where = where
        self._extras = extras
        self.url_of = url_of
        # Open addressing over the keys' hashes: 4 bytes a file where a dict would take ~100.
        size = 8
        while size < 2 * len(extras):
            size *= 2
        mask = size - 1
        table = array("i", [-1]) * size
        for index in range(len(extras)):
            slot = hash(self.key(index)) & mask
            while table[slot] != -1:
                slot = (slot + 1) & mask
            table[slot] = index
        self._table = table

    def _source(self, index: int) -> str:
        at = self._where[index]
        return self._lists[at >> 32].record(at & 0xFFFFFFFF)

    def key(self, index: int) -> str:
        extras = self._extras.record(index)
        return extras[: extras.index(SEP)] or _sha256_of(self._source(index))

    def __len__(self) -> int:
        return len(self._extras)

    def _decode(self, index: int) -> PublishedFile:
        source = dist_of_fields(self._source(index).split(SEP))
        key, hashes, meta, when, origin, cached = self._extras.record(index).split(SEP)
        return PublishedFile(
            source=source,
            url=self.url_of(key or cast(str, source.sha256), source.filename),
            hashes=source.hashes if hashes == "=" else decode_hashes(hashes),
            core_metadata=decode_meta(meta),
            build_time=decode_time(when),
            build_time_source=cast(BuildTimeSource, origin) if origin else None,
            cached_size=int(cached) if cached else None,
        )

    @overload
    def __getitem__(self, index: int) -> PublishedFile: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[PublishedFile]: ...
    def __getitem__(self, index: int | slice) -> PublishedFile | Sequence[PublishedFile]:
        if isinstance(index, slice):
            return [self._decode(i) for i in range(len(self))[index]]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._decode(index)

    def __iter__(self) -> Iterator[PublishedFile]:
        for index in range(len(self)):
            yield self._decode(index)

    def filenames(self) -> Iterator[str]:
        for index in range(len(self)):
            record = self._source(index)
            yield record[: record.index(SEP)]

    def find(self, key: str) -> PublishedFile | None:
        """The file published under ``key``, if any."""
        table = self._table
        mask = len(table) - 1
        slot = hash(key) & mask
        while (index := table[slot]) != -1:
            if self.key(index) == key:
                return self._decode(index)
            slot = (slot + 1) & mask
        return None
