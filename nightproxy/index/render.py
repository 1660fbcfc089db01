"""Pure renderers: published files -> PEP 503 HTML / PEP 691 JSON bytes, and negotiation.

Pages are rendered once per change of their inputs and served as bytes, so nothing here is on
the per-request hot path except ``negotiate``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from html import escape
from typing import Any, Literal

from packaging.utils import NormalizedName

from nightproxy.index.filenames import parse_dist_filename
from nightproxy.index.parse import HTML_TYPE, JSON_TYPE
from nightproxy.model import PublishedFile

API_VERSION = "1.1"

Format = Literal["json", "html"]

#: Media types we can produce, in our order of preference on a tie.
_OFFERS: tuple[tuple[str, Format], ...] = (
    (JSON_TYPE, "json"),
    (HTML_TYPE, "html"),
    ("text/html", "html"),
)
CONTENT_TYPES: Mapping[Format, str] = {"json": JSON_TYPE, "html": "text/html; charset=utf-8"}
#: PEP 691's meta-version: whatever version the server thinks best, which is always v1 here
#: (the response still names the concrete v1 type, as the PEP requires).
_LATEST: Mapping[str, str] = {
    "application/vnd.pypi.simple.latest+json": JSON_TYPE,
    "application/vnd.pypi.simple.latest+html": HTML_TYPE,
}
_FORMAT_ALIASES: Mapping[str, Format] = {
    JSON_TYPE: "json",
    HTML_TYPE: "html",
    "application/vnd.pypi.simple.latest+json": "json",
    "application/vnd.pypi.simple.latest+html": "html",
    "text/html": "html",
    "json": "json",
    "html": "html",
}


#: Which offer a wildcard at equal q gets: curl's and browsers' ``*/*`` gets HTML.
_WILDCARD_PREFERENCE: Mapping[str, int] = {"text/html": 2, JSON_TYPE: 1, HTML_TYPE: 0}


def weighted_list(header: str) -> list[tuple[str, float]]:
    """An HTTP list with q-values (Accept, Accept-Encoding) as lower-cased (token, q) pairs."""
    entries = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if not math.isfinite(q):
            q = 0.0
        entries.append((media.lower(), q))
    return entries


def _specificity(media_range: str, offer: str) -> int | None:
    """How specifically ``media_range`` names ``offer``: 2 exact, 1 ``type/*``, 0 ``*/*``."""
    if media_range == offer:
        return 2
    if media_range.endswith("/*") and offer.startswith(media_range[:-1]):
        return 1
    if media_range == "*/*":
        return 0
    return None


@lru_cache(maxsize=256)
def negotiate(accept: str | None, format_param: str | None = None) -> Format | None:
    """Pick the page format; None means nothing the client accepts (406).

    ``?format=`` wins over ``Accept`` (as the public index does). No Accept header means HTML,
    the PEP 503 default. q-values are honoured with and without spaces. As RFC 9110 says, an
    offer's quality is that of the most specific range naming it, so ``json;q=0, */*`` never
    picks JSON. At equal q an exact media type beats a wildcard, and a bare ``*/*`` (curl,
    browsers, old tools) gets HTML. PEP 691's ``latest`` types count as the v1 ones.
    """
    if format_param:
        return _FORMAT_ALIASES.get(format_param.strip().lower())
    if not accept or not accept.strip():
        return "html"
    entries = [(_LATEST.get(media, media), q) for media, q in weighted_list(accept)]
    best: tuple[float, int, int, Format] | None = None
    for rank, (offer, fmt) in enumerate(_OFFERS):
        matches = [
            (spec, q) for media, q in entries if (spec := _specificity(media, offer)) is not None
        ]
        if not matches:
            continue
        top = max(spec for spec, _q in matches)
        q = max(q for spec, q in matches if spec == top)
        if q <= 0:
            continue
        exact = top == 2
        candidate = (q, int(exact), -rank if exact else _WILDCARD_PREFERENCE[offer], fmt)
        if best is None or candidate[:3] > best[:3]:
            best = candidate
    return best[3] if best else None


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
