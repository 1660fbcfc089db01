"""Core metadata (PEP 658) from a wheel: on disk, or read by byte ranges from an upstream."""

from __future__ import annotations

import asyncio
import bisect
import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO

from packaging.utils import canonicalize_name

from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.upstreams.base import RangeFetch

#: METADATA is a few KiB; a huge one is a hostile archive, not a wheel.
MAX_METADATA_BYTES = 16 * 1024 * 1024
#: The first range read: the end of the archive. It holds the end-of-central-directory record
#: and, for most wheels, the whole central directory and the ``.dist-info`` members, which
#: wheel builders write last; one request then suffices.
TAIL_BYTES = 128 * 1024
#: The smallest later read: a member's local header is followed by its data, so asking for a
#: little more than the header saves a round trip.
MIN_FETCH = 64 * 1024
#: Past this many bytes or requests, downloading the wheel is the better deal. The biggest
#: wheels' central directories (tens of thousands of members) take a few MiB.
MAX_RANGE_BYTES = 8 * 1024 * 1024
MAX_RANGE_REQUESTS = 6
#: A central directory larger than this is not parsed from ranges: each entry costs a
#: ``ZipInfo`` in memory. The biggest real wheels' directories take one or two MiB.
MAX_CENTRAL_DIRECTORY = 4 * 1024 * 1024
_END_RECORD = b"PK\x05\x06"
#: What builders write. ``zipfile`` bounds inflation by the size asked for only for these:
#: a bzip2 or lzma member inflates a whole compressed chunk per read.
_BOUNDED = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
#: Compressed bytes per read of any other member (a bzip2 block or an lzma chunk from this
#: little input inflates to tens of MiB at most).
_SMALL_READ = 4096


class MetadataError(ValueError):
    pass


#: What ``zipfile`` raises on a damaged or hostile archive (bad structures, unsupported
#: compression or encryption, a bad CRC, a truncated deflate stream).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    zlib.error,
)


def extract_metadata(wheel: Path, filename: str) -> bytes:
    """Blocking. The ``<name>-<version>.dist-info/METADATA`` member of a wheel."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return metadata_from_archive(archive, filename)
    except MetadataError:
        raise
    except _ZIP_ERRORS as exc:
        raise MetadataError(f"{filename}: not a readable wheel ({exc})") from exc


def metadata_from_archive(
    archive: zipfile.ZipFile, filename: str, *, verified: bool = True
) -> bytes:
    """Blocking. The METADATA member of an open wheel archive (CRC-checked by ``zipfile``).

    ``verified=False`` (bytes an upstream sent by ranges, not covered by the wheel's hash)
    refuses members in compressions whose inflation cannot be bounded; the caller then
    downloads the wheel and reads it verified.
    """
    dist = parse_dist_filename(filename)
    if dist is None:
        raise MetadataError(f"{filename} is not a wheel filename")
    try:
        candidates = [
            info
            for info in archive.infolist()
            if info.filename.count("/") == 1 and info.filename.endswith(".dist-info/METADATA")
        ]
        # Prefer the dist-info directory named after the project; wheels have exactly one.
        for info in candidates:
            dirname = info.filename.split("/", 1)[0][: -len(".dist-info")]
            if canonicalize_name(dirname.rsplit("-", 1)[0]) == dist.project:
                return _read(archive, info, verified)
        if len(candidates) == 1:
            return _read(archive, candidates[0], verified)
    except MetadataError:
        raise
    except _ZIP_ERRORS as exc:
        raise MetadataError(f"{filename}: not a readable wheel ({exc})") from exc
    raise MetadataError(f"{filename}: no .dist-info/METADATA")


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, verified: bool) -> bytes:
    if info.file_size > MAX_METADATA_BYTES:
        raise MetadataError("METADATA too large")
    step = MAX_METADATA_BYTES + 1
    if info.compress_type not in _BOUNDED:
        if not verified:
            raise MetadataError(f"METADATA compressed with method {info.compress_type}")
        step = _SMALL_READ
    # Bounded: the sizes in the directory are the archive's word, and a bomb lies about them.
    parts: list[bytes] = []
    size = 0
    with archive.open(info) as member:
        while part := member.read(step):
            parts.append(part)
            size += len(part)
            if size > MAX_METADATA_BYTES:
                raise MetadataError("METADATA too large")
    return b"".join(parts)


# -- by byte ranges ---------------------------------------------------------------------------


class _NeedBytes(Exception):  # noqa: N818 - a signal, not an error
    """Raised through ``zipfile`` when it reads bytes not fetched yet.

    Deliberately not an ``OSError``: ``zipfile`` treats some of those as "not a zip file".
    """

    def __init__(self, offset: int, length: int) -> None:
        super().__init__(offset, length)
        self.offset = offset
        self.length = length


class SparseFile(io.RawIOBase):
    """A read-only file of known size of which only some spans are present."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._starts: list[int] = []
        self._spans: list[bytes] = []
        self._pos = 0

    def add(self, start: int, data: bytes) -> None:
        """Keep ``data`` at ``start``, merging it with the spans it touches."""
        if not data:
            return
        end = start + len(data)
        i = bisect.bisect_left(self._starts, start)
        # Swallow a left neighbour that reaches ``start``.
        if i > 0 and self._starts[i - 1] + len(self._spans[i - 1]) >= start:
            i -= 1
            prev_start, prev = self._starts[i], self._spans[i]
            data = prev[: start - prev_start] + data + prev[end - prev_start :]
            start = prev_start
            end = start + len(data)
            del self._starts[i], self._spans[i]
        while i < len(self._starts) and self._starts[i] <= end:
            nxt_start, nxt = self._starts[i], self._spans[i]
            data = data + nxt[end - nxt_start :]
            end = start + len(data)
            del self._starts[i], self._spans[i]
        self._starts.insert(i, start)
        self._spans.insert(i, data)

    def missing(self, start: int, end: int) -> tuple[int, int] | None:
        """The first absent span in ``[start, end)``, or None when all of it is present."""
        if end <= start:
            return None
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0 and self._starts[i] + len(self._spans[i]) >= end:
            return None
        if i >= 0 and self._starts[i] + len(self._spans[i]) > start:
            start = self._starts[i] + len(self._spans[i])
        nxt = i + 1
        stop = min(end, self._starts[nxt]) if nxt < len(self._starts) else end
        return start, stop - start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the file")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self._pos + size, self.size)
        if end <= self._pos:
            return b""
        gap = self.missing(self._pos, end)
        if gap is not None:
            raise _NeedBytes(*gap)
        i = bisect.bisect_right(self._starts, self._pos) - 1
        offset = self._pos - self._starts[i]
        data = self._spans[i][offset : offset + end - self._pos]
        self._pos = end
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _metadata_from_sparse(sparse: SparseFile, filename: str) -> bytes:
    """Blocking. Raises ``_NeedBytes`` for the first span it lacks."""
    sparse.seek(0)
    try:
        archive = zipfile.ZipFile(_as_binary(sparse))
    except _ZIP_ERRORS as exc:
        raise MetadataError(f"{filename}: not a readable wheel ({exc})") from exc
    return metadata_from_archive(archive, filename, verified=False)


def _as_binary(raw: SparseFile) -> IO[bytes]:
    return raw  # type: ignore[return-value]  # a RawIOBase is what ZipFile reads from


def _directory_too_big(tail: bytes) -> bool:
    """Whether the end record in ``tail`` announces a central directory too big to parse."""
    at = tail.rfind(_END_RECORD)
    if at < 0 or at + 22 > len(tail):
        return False  # zipfile will say what is wrong
    (size,) = struct.unpack_from("<I", tail, at + 12)
    # 0xFFFFFFFF defers to the zip64 record; MAX_RANGE_BYTES bounds that case.
    return bool(size != 0xFFFFFFFF and size > MAX_CENTRAL_DIRECTORY)


async def read_remote_metadata(fetch: RangeFetch, filename: str) -> bytes | None:
    """A wheel's METADATA read from its upstream in a few byte ranges, or None.

    None means "download the wheel instead": the upstream ignores ranges, the file is not the
    one listed or changed between two reads, or the archive would need too many bytes or
    requests. A malformed archive is None too: the full, hash-verified download then gives the
    definitive answer. The member's CRC-32 is checked; the wheel's own hash cannot be, which
    is why callers keep what this returns out of the content-addressed store.
    """
    first = await fetch(None, TAIL_BYTES)
    if first is None or _directory_too_big(first.data):
        return None
    sparse = SparseFile(first.total)
    sparse.add(first.start, first.data)
    fetched = len(first.data)
    requests = 1
    while True:
        try:
            # Parsing a big central directory is real CPU work: off the loop.
            return await asyncio.to_thread(_metadata_from_sparse, sparse, filename)
        except _NeedBytes as need:
            length = min(max(need.length, MIN_FETCH), sparse.size - need.offset)
            fetched += length
            if requests >= MAX_RANGE_REQUESTS or fetched > MAX_RANGE_BYTES:
                return None
            body = await fetch(need.offset, length)
            requests += 1
            if body is None or body.total != sparse.size or body.start != need.offset:
                return None
            sparse.add(body.start, body.data)
        except MetadataError:
            return None
