"""A page's prepared bytes: rendered once per format and content-coding, with its ETag.

The index hands the server bytes and validators only; status lines, headers and responses
are the server's.

A big page (the project list of a public index, a project with 200,000 files) is rendered in
pieces that are hashed and gzip-compressed as they come, and only the compressed bytes are
kept: they answer clients that take gzip as they are, and the others inflated a piece at a
time as they are sent. Such a page never exists uncompressed.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from nightproxy.simple_api.negotiate import Format

#: A representation: the page's format, and whether it is gzip-encoded.
Representation = tuple[Format, bool]
#: Pages larger than this (uncompressed) are kept compressed only.
BIG = 4 * 1024 * 1024
#: Bytes handed out per piece when a compressed page is inflated.
INFLATE_PIECE = 256 * 1024
_GZIP = 31  # zlib's wbits for a gzip wrapper


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Prepared:
    """One representation of a page: its bytes and its strong ETag.

    ``length`` is the representation's size. With ``inflate`` set, ``body`` is its gzip form
    (shared with the gzip representation): send ``chunks()``.
    """

    body: bytes
    etag: str
    length: int
    inflate: bool = False

    def chunks(self) -> Iterator[bytes]:
        """The representation's bytes, a piece at a time."""
        if not self.inflate:
            yield self.body
            return
        inflater = zlib.decompressobj(_GZIP)
        data = self.body
        while data:
            piece = inflater.decompress(data, INFLATE_PIECE)
            data = inflater.unconsumed_tail
            if piece:
                yield piece
        if rest := inflater.flush():
            yield rest


def _etag(digest: str, gzipped: bool) -> str:
    # A representation's strong ETag must differ per content-coding.
    return '"' + digest[:32] + ('-gz"' if gzipped else '"')


def _gzip(body: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, _GZIP)
    return packer.compress(body) + packer.flush()


@dataclass(slots=True)
class Representations:
    """The prepared representations of one page, each made at most once (give or take a race
    between two threads, which only renders twice)."""

    render: Callable[[Format], Iterable[bytes]]
    _made: dict[Representation, Prepared] = field(default_factory=dict)

    def get(self, fmt: Format, gzipped: bool) -> Prepared | None:
        return self._made.get((fmt, gzipped))

    def make(self, fmt: Format, gzipped: bool) -> Prepared:
        """CPU work: call from a thread."""
        made = self._made.get((fmt, gzipped))
        if made is not None:
            return made
        plain = self._made.get((fmt, False))
        if plain is None:
            plain, packed = _prepare(self.render(fmt))
            if packed is not None:
                self._made[(fmt, True)] = packed
            self._made[(fmt, False)] = plain
        if not gzipped:
            return plain
        packed = self._made.get((fmt, True))
        if packed is None:
            body = _gzip(plain.body)
            packed = Prepared(body, plain.etag[:-1] + '-gz"', len(body))
            self._made[(fmt, True)] = packed
        return packed


def _prepare(pieces: Iterable[bytes]) -> tuple[Prepared, Prepared | None]:
    """The plain representation; and, for a big page, the gzip one (which the plain one then
    holds its bytes in)."""
    digest = hashlib.sha256()
    held: list[bytes] = []
    size = 0
    packer = None
    packed: list[bytes] = []
    for piece in pieces:
        digest.update(piece)
        size += len(piece)
        if packer is None:
            held.append(piece)
            if size > BIG:
                packer = zlib.compressobj(6, zlib.DEFLATED, _GZIP)
                packed.extend(packer.compress(p) for p in held)
                held.clear()
        else:
            packed.append(packer.compress(piece))
    etag = digest.hexdigest()
    if packer is None:
        return Prepared(b"".join(held), _etag(etag, False), size), None
    packed.append(packer.flush())
    body = b"".join(packed)
    return (
        Prepared(body, _etag(etag, False), size, inflate=True),
        Prepared(body, _etag(etag, True), len(body)),
    )
