"""Pure renderers: published files -> PEP 503 HTML / PEP 691 JSON bytes.

Pages are rendered once per change of their inputs and served as bytes, so nothing here is on
the per-request hot path (negotiation is in ``negotiate``). Each page can be had in pieces
(``iter_*``), so that a big one is compressed and hashed as it is made, never held whole as
text, and no single call holds the GIL for long.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from packaging.utils import NormalizedName
from packaging.version import Version

from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.simple_api.records import PublishedFile

API_VERSION = "1.1"
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def format_upload_time(value: datetime) -> str:
    """PEP 700's form: ISO 8601 in UTC with a ``Z`` (uv rejects anything else)."""
    # isoformat, not strftime: strftime does not pad years before 1000 to four digits.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _hash_fragment(hashes: Mapping[str, str]) -> str:
    for name in ("sha256", "sha384", "sha512"):
        if name in hashes:
            return f"#{name}={hashes[name]}"
    return ""


def _metadata_attr(value: bool | Mapping[str, str]) -> str | None:
    if value is False:
        return None
    if isinstance(value, Mapping) and "sha256" in value:
        return f"sha256={value['sha256']}"
    return "true"


#: Rendered text is handed over in pieces of about this many characters.
PIECE = 256 * 1024


def _pieces(head: str, items: Iterable[str], tail: str) -> Iterator[bytes]:
    """``head``, the items and ``tail`` as UTF-8, in pieces of about ``PIECE`` characters."""
    out = [head]
    size = len(head)
    for item in items:
        out.append(item)
        size += len(item)
        if size >= PIECE:
            yield "".join(out).encode()
            out = []
            size = 0
    out.append(tail)
    yield "".join(out).encode()


def _html_link(pub: PublishedFile) -> str:
    src = pub.source
    attrs = [f'href="{escape(pub.url + _hash_fragment(pub.hashes))}"']
    if src.requires_python:
        attrs.append(f'data-requires-python="{escape(src.requires_python)}"')
    if src.yanked is not False:
        reason = src.yanked if isinstance(src.yanked, str) else ""
        attrs.append(f'data-yanked="{escape(reason)}"')
    meta = _metadata_attr(pub.core_metadata)
    if meta is not None:
        attrs.append(f'data-dist-info-metadata="{meta}" data-core-metadata="{meta}"')
    if src.upload_time is not None:
        attrs.append(f'data-upload-time="{format_upload_time(src.upload_time)}"')
    return f"<a {' '.join(attrs)}>{escape(src.filename)}</a><br>\n"


def iter_project_html(name: NormalizedName, files: Iterable[PublishedFile]) -> Iterator[bytes]:
    """A PEP 503 project page, in pieces."""
    head = (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"<title>Links for {escape(name)}</title>\n</head>\n<body>\n"
        f"<h1>Links for {escape(name)}</h1>\n"
    )
    return _pieces(head, map(_html_link, files), "</body>\n</html>\n")


def render_project_html(name: NormalizedName, files: Sequence[PublishedFile]) -> bytes:
    return b"".join(iter_project_html(name, files))


def file_entry(pub: PublishedFile, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    src = pub.source
    entry: dict[str, Any] = {"filename": src.filename, "url": pub.url, "hashes": dict(pub.hashes)}
    if src.requires_python:
        entry["requires-python"] = src.requires_python
    if src.yanked is not False:
        entry["yanked"] = src.yanked
    if pub.core_metadata is not False:
        meta: bool | dict[str, str] = (
            dict(pub.core_metadata) if isinstance(pub.core_metadata, Mapping) else True
        )
        entry["core-metadata"] = meta
        # Never "dist-info-metadata" in JSON: pip 22.3 to 23.1 (Debian 12's pip among them)
        # crash on it, which is why PEP 714 renamed it. The public index's old misspelling
        # is kept, as that index does: those pips ignore it and some tools read it.
        entry["data-dist-info-metadata"] = meta
    if pub.size is not None:
        entry["size"] = pub.size
    if src.upload_time is not None:
        entry["upload-time"] = format_upload_time(src.upload_time)
    nightproxy: dict[str, Any] = {"upstream": src.upstream}
    if src.retained:
        nightproxy["retained"] = True
    if pub.build_time is not None:
        nightproxy["build-time"] = format_upload_time(pub.build_time)
        nightproxy["build-time-source"] = pub.build_time_source
    if extra:
        nightproxy.update(extra)
    entry["_nightproxy"] = nightproxy
    return entry


def _versions(filenames: Iterable[str]) -> list[str]:
    # Keyed by version, each spelled as its last file spells it ("1.0" and "1.0.0" are equal).
    seen: dict[Version, Version] = {}
    for filename in filenames:
        dist = parse_dist_filename(filename)
        if dist is not None:
            seen[dist.version] = dist.version
    return [str(seen[v]) for v in sorted(seen)]


def iter_project_json(
    name: NormalizedName, files: Iterable[PublishedFile], filenames: Iterable[str]
) -> Iterator[bytes]:
    """A PEP 691 project page, in pieces; ``filenames`` (those of ``files``) are read first,
    for the page's list of versions."""
    doc = {"meta": {"api-version": API_VERSION}, "name": name, "versions": _versions(filenames)}
    head = json.dumps(doc, separators=(",", ":"))
    entries = (_COMPACT.encode(file_entry(pub)) for pub in files)
    return _pieces(head[:-1] + ',"files":[', _commas(entries), "]}")


def _commas(items: Iterable[str]) -> Iterator[str]:
    first = True
    for item in items:
        yield item if first else "," + item
        first = False


def render_project_json(name: NormalizedName, files: Sequence[PublishedFile]) -> bytes:
    return b"".join(iter_project_json(name, files, (pub.filename for pub in files)))


def iter_index_html(names: Iterable[NormalizedName]) -> Iterator[bytes]:
    head = (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "<title>Simple index</title>\n</head>\n<body>\n"
    )
    links = (f'<a href="{escape(n)}/">{escape(n)}</a><br>\n' for n in names)
    return _pieces(head, links, "</body>\n</html>\n")


def render_index_html(names: Iterable[NormalizedName]) -> bytes:
    return b"".join(iter_index_html(names))


def iter_index_json(names: Iterable[NormalizedName]) -> Iterator[bytes]:
    head = json.dumps({"meta": {"api-version": API_VERSION}}, separators=(",", ":"))
    entries = (json.dumps({"name": n}) for n in names)
    return _pieces(head[:-1] + ',"projects":[', _commas(entries), "]}")


def render_index_json(names: Iterable[NormalizedName]) -> bytes:
    return b"".join(iter_index_json(names))
