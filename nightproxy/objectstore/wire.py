"""S3's XML and headers: error bodies, listings, multipart answers, and object metadata."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from xml.sax.saxutils import escape

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: Object sizes fit in 20 decimal digits; int() of a longer string is slow or refused.
_MAX_DIGITS = 20


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object: its key relative to the client's prefix, size, ETag and modification time."""

    key: str
    size: int
    etag: str
    #: As the store wrote it (an HTTP date in headers, ISO 8601 in listings).
    last_modified: str | None = None
    #: User metadata (``x-amz-meta-<name>``, by lower-case name), from a HEAD or GET.
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: Seconds since the last write by the store's own clock, from a HEAD or GET (else None).
    age: float | None = None


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: str | None


def parse_xml(body: bytes) -> ET.Element | None:
    """The document's root, or None when the body is not XML."""
    try:
        # expat refuses entity bombs; the document comes from the configured store.
        return ET.fromstring(body)  # noqa: S314
    except ET.ParseError:
        return None


def find_text(element: ET.Element, name: str) -> str | None:
    """A child's text, with or without S3's namespace (stores differ)."""
    found = element.find(_NS + name)
    if found is None:
        found = element.find(name)
    return found.text if found is not None else None


def children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    yield from element.iter(_NS + name)
    yield from element.iter(name)


def local_name(element: ET.Element) -> str:
    return element.tag.rpartition("}")[2]


def error_code(body: bytes) -> tuple[str | None, str | None]:
    """``(Code, Message)`` of an S3 ``<Error>`` document, or Nones."""
    root = parse_xml(body) if body else None
    if root is None or local_name(root) != "Error":
        return None, None
    return find_text(root, "Code"), find_text(root, "Message")


def parse_size(text: str | None) -> int | None:
    if text and len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


META = "x-amz-meta-"


def store_age(headers: Mapping[str, str], fallback: float) -> float:
    """Seconds between the object's Last-Modified and the answer's Date, both the store's."""
    date = headers.get("Date")
    modified = headers.get("Last-Modified")
    if not date or not modified:
        return fallback
    try:
        return (parsedate_to_datetime(date) - parsedate_to_datetime(modified)).total_seconds()
    except (TypeError, ValueError):
        return fallback


def info_from_headers(key: str, headers: Mapping[str, str]) -> ObjectInfo:
    """An object's metadata from a HEAD or GET answer (a 206's size is the whole object's)."""
    size: int | None = None
    content_range = headers.get("Content-Range")
    if content_range and "/" in content_range:
        size = parse_size(content_range.rpartition("/")[2].strip())
    if size is None:
        size = parse_size(headers.get("Content-Length"))
    return ObjectInfo(
        key=key,
        size=size if size is not None else -1,
        etag=headers.get("ETag", ""),
        last_modified=headers.get("Last-Modified"),
        metadata={
            name.lower()[len(META) :]: value
            for name, value in headers.items()
            if name.lower().startswith(META)
        },
        age=store_age(headers, -1.0) if "Date" in headers else None,
    )


def listed_objects(root: ET.Element, strip: str) -> Iterator[ObjectInfo]:
    for item in children(root, "Contents"):
        key = find_text(item, "Key")
        if not key or not key.startswith(strip):
            continue
        size = parse_size(find_text(item, "Size"))
        yield ObjectInfo(
            key=key[len(strip) :],
            size=size if size is not None else -1,
            etag=find_text(item, "ETag") or "",
            last_modified=find_text(item, "LastModified"),
        )


def listed_uploads(root: ET.Element, strip: str) -> Iterator[UploadInfo]:
    for item in children(root, "Upload"):
        key = find_text(item, "Key")
        upload_id = find_text(item, "UploadId")
        if key and upload_id and key.startswith(strip):
            yield UploadInfo(key[len(strip) :], upload_id, find_text(item, "Initiated"))


def complete_body(etags: list[str]) -> bytes:
    """The ``CompleteMultipartUpload`` document naming parts 1..n by their ETags."""
    parts = "".join(
        f"<Part><PartNumber>{number}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
        for number, etag in enumerate(etags, start=1)
    )
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
