"""A page's prepared bytes: rendered once per format and content-coding, with its ETag.

The index hands the server bytes and validators only; status lines, headers and responses
are the server's.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from nightproxy.simple_api.negotiate import Format

#: A representation: the page's format, and whether it is gzip-encoded.
Representation = tuple[Format, bool]


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Prepared:
    """One representation of a page: its bytes and its strong ETag."""

    body: bytes
    etag: str


@dataclass(slots=True)
class Representations:
    """The prepared representations of one page, each made at most once (give or take a race
    between two threads, which only renders twice)."""

    render: Callable[[Format], bytes]
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
            body = self.render(fmt)
            plain = Prepared(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
            self._made[(fmt, False)] = plain
        if not gzipped:
            return plain
        # A representation's strong ETag must differ per content-coding.
        packed = Prepared(
            gzip.compress(plain.body, compresslevel=6, mtime=0), plain.etag[:-1] + '-gz"'
        )
        self._made[(fmt, True)] = packed
        return packed
