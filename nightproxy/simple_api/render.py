"""Pure renderers: published files -> PEP 503 HTML / PEP 691 JSON bytes.

Pages are rendered once per change of their inputs and served as bytes, so nothing here is on
the per-request hot path (negotiation is in ``negotiate``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from packaging.utils import NormalizedName

from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.simple_api.records import PublishedFile

API_VERSION = "1.1"


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


def render_project_html(name: NormalizedName, files: Sequence[PublishedFile]) -> bytes:
    out = [
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"<title>Links for {escape(name)}</title>\n</head>\n<body>\n"
        f"<h1>Links for {escape(name)}</h1>\n"
    ]
    for pub in files:
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
        out.append(f"<a {' '.join(attrs)}>{escape(src.filename)}</a><br>\n")
    out.append("</body>\n</html>\n")
    return "".join(out).encode()


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


def _versions(files: Iterable[PublishedFile]) -> list[str]:
    seen = {}
    for pub in files:
        dist = parse_dist_filename(pub.source.filename)
        if dist is not None:
            seen[dist.version] = str(dist.version)
    return [seen[v] for v in sorted(seen)]


def render_project_json(name: NormalizedName, files: Sequence[PublishedFile]) -> bytes:
    doc = {
        "meta": {"api-version": API_VERSION},
        "name": name,
        "versions": _versions(files),
        "files": [file_entry(pub) for pub in files],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def render_index_html(names: Iterable[NormalizedName]) -> bytes:
    out = [
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "<title>Simple index</title>\n</head>\n<body>\n"
    ]
    out.extend(f'<a href="{escape(n)}/">{escape(n)}</a><br>\n' for n in names)
    out.append("</body>\n</html>\n")
    return "".join(out).encode()


def render_index_json(names: Iterable[NormalizedName]) -> bytes:
    doc = {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]}
    return json.dumps(doc, separators=(",", ":")).encode()
