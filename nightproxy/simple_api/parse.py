"""Pure parsers: upstream page bytes -> ``ProjectPage`` / project names.

Upstream pages are untrusted and come in many dialects (PEP 503 HTML, PEP 691 JSON, static
bucket trees, anaconda's root-relative links, Azure's GUID paths). The parsers keep what is a
distribution file, skip everything else with no exception, and raise ``PageParseError`` only
when the document as a whole is not an index page.
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html.parser import HTMLParser
from types import MappingProxyType
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from packaging.utils import NormalizedName, canonicalize_name

from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.simple_api.records import DistFile, ProjectPage

log = logging.getLogger(__name__)

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"

_HEX = frozenset(string.hexdigits.lower())
_KNOWN_HASHES = frozenset({"sha256", "sha384", "sha512", "sha224", "sha1", "md5", "blake2b"})


class PageParseError(ValueError):
    """The upstream answered with something that is not a simple-index page."""


def parse_upload_time(value: object) -> datetime | None:
    """An ISO 8601 timestamp as an aware UTC datetime, or None if it does not parse."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        # 9999-12-31T23:59:59-01:00 is a valid ISO time whose UTC value datetime cannot hold.
        return None


def _clean_hashes(items: Iterable[tuple[object, object]]) -> Mapping[str, str]:
    """Only well-formed hex digests of hash names we know: a digest is a promise we verify."""
    out: dict[str, str] = {}
    for name, digest in items:
        if not isinstance(name, str) or not isinstance(digest, str):
            continue
        key = name.lower()
        value = digest.lower()
        if key in _KNOWN_HASHES and value and set(value) <= _HEX:
            out[key] = value
    return MappingProxyType(out)


def _hash_from_fragment(fragment: str) -> Mapping[str, str]:
    name, sep, digest = fragment.partition("=")
    return _clean_hashes([(name, digest)]) if sep else MappingProxyType({})


def _metadata_attr(value: object) -> bool | Mapping[str, str]:
    """PEP 658/714 availability: ``true``, ``"sha256=..."`` or a JSON mapping of hashes."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, Mapping):
        hashes = _clean_hashes(value.items())
        return hashes or True
    if isinstance(value, str):
        if value.lower() == "true":
            return True
        hashes = _hash_from_fragment(value)
        return hashes or True
    return False


def _filename_from_url(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path.rsplit("/", 1)[-1])


def _make_file(
    *,
    url: str,
    base_url: str,
    upstream: str,
    project: NormalizedName,
    filename_hint: str | None,
    hashes: Mapping[str, str],
    requires_python: object,
    yanked: bool | str,
    size: object,
    upload_time: object,
    core_metadata: bool | Mapping[str, str],
) -> DistFile | None:
    absolute = urljoin(base_url, url)
    parts = urlsplit(absolute)
    if parts.scheme not in {"http", "https"}:
        return None
    # Raises for a port that is not a number or out of range: better here, where the link is
    # skipped, than at download time.
    _port = parts.port
    absolute, _frag = urldefrag(absolute)
    filename = _filename_from_url(absolute)
    if filename_hint and filename_hint != filename and parse_dist_filename(filename_hint):
        # JSON pages name the file explicitly; prefer that over the URL's last segment.
        filename = filename_hint
    dist = parse_dist_filename(filename)
    if dist is None:
        if filename.endswith((".whl", ".tar.gz", ".zip")):
            # Looks like a distribution but is not a valid (or safe) name: say so, skip it.
            log.warning("%s: skipping invalid distribution filename %r", upstream, filename[:200])
        return None
    if dist.project != project:
        log.debug("%s: skipping %s, not a file of %s", upstream, filename, project)
        return None
    rp = requires_python if isinstance(requires_python, str) and requires_python else None
    return DistFile(
        filename=filename,
        url=absolute,
        upstream=upstream,
        hashes=hashes,
        requires_python=rp,
        yanked=yanked,
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        upload_time=parse_upload_time(upload_time),
        core_metadata=core_metadata,
    )


class _AnchorCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []
        self.base_href: str | None = None
        self.saw_html = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))
        elif tag == "base" and self.base_href is None:
            self.base_href = dict(attrs).get("href")
        if tag in {"html", "body", "a", "head", "title", "h1"}:
            self.saw_html = True


def _collect(body: bytes) -> _AnchorCollector:
    collector = _AnchorCollector()
    try:
        collector.feed(body.decode("utf-8", errors="replace"))
        collector.close()
    except Exception as exc:  # HTMLParser can raise on pathological input
        raise PageParseError(f"unparsable HTML: {type(exc).__name__}") from exc
    if not collector.saw_html:
        raise PageParseError("response is not an HTML index page")
    return collector


def parse_project_html(
    body: bytes, base_url: str, upstream: str, project: NormalizedName
) -> ProjectPage:
    """Parse a PEP 503 project page (any of the dialects static trees and channels produce)."""
    collector = _collect(body)
    base = base_url
    if collector.base_href:
        try:
            base = urljoin(base_url, collector.base_href)
        except ValueError:
            log.warning("%s: ignoring an unusable <base href> on the page of %s", upstream, project)
    files: dict[str, DistFile] = {}
    skipped = 0
    for attrs in collector.anchors:
        try:
            dist = _html_file(attrs, base, upstream, project)
        except ValueError:
            skipped += 1
            continue
        if dist is not None:
            files.setdefault(dist.filename, dist)
    _log_skipped(upstream, f"the page of {project}", skipped)
    return ProjectPage(name=project, files=tuple(files.values()))


def _log_skipped(upstream: str, where: str, skipped: int) -> None:
    # One line per page, and never the links themselves: a link can carry user-info.
    if skipped:
        log.warning("%s: skipped %d unusable link(s) on %s", upstream, skipped, where)


def _html_file(
    attrs: Mapping[str, str | None], base: str, upstream: str, project: NormalizedName
) -> DistFile | None:
    """One anchor as a file; ValueError for a link ``urllib`` cannot take."""
    href = attrs.get("href")
    if not href:
        return None
    _url, fragment = urldefrag(href)
    yanked_attr = attrs.get("data-yanked", False) if "data-yanked" in attrs else False
    yanked: bool | str = (yanked_attr or True) if yanked_attr is not False else False
    metadata = _metadata_attr(
        attrs.get("data-core-metadata") or attrs.get("data-dist-info-metadata")
    )
    return _make_file(
        url=href,
        base_url=base,
        upstream=upstream,
        project=project,
        filename_hint=None,
        hashes=_hash_from_fragment(fragment),
        requires_python=attrs.get("data-requires-python"),
        yanked=yanked,
        size=None,
        upload_time=attrs.get("data-upload-time"),
        core_metadata=metadata,
    )


def _yanked_json(value: object) -> bool | str:
    if isinstance(value, str):
        return value or True
    return bool(value) if isinstance(value, bool) else False


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        # RecursionError: a few hundred thousand nested brackets, from a hostile upstream.
        raise PageParseError("invalid JSON") from exc


def parse_project_json(
    body: bytes, base_url: str, upstream: str, project: NormalizedName
) -> ProjectPage:
    """Parse a PEP 691 JSON project page."""
    data = _load_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise PageParseError("JSON page has no 'files' list")
    files: dict[str, DistFile] = {}
    skipped = 0
    for entry in data["files"]:
        try:
            dist = _json_file(entry, base_url, upstream, project)
        except ValueError:
            skipped += 1
            continue
        if dist is not None:
            files.setdefault(dist.filename, dist)
    _log_skipped(upstream, f"the page of {project}", skipped)
    return ProjectPage(name=project, files=tuple(files.values()))


def _json_file(
    entry: object, base_url: str, upstream: str, project: NormalizedName
) -> DistFile | None:
    """One ``files`` entry as a file; ValueError for a URL ``urllib`` cannot take."""
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        return None
    raw_hashes = entry.get("hashes")
    hashes = _clean_hashes(raw_hashes.items()) if isinstance(raw_hashes, dict) else None
    metadata = _metadata_attr(
        entry.get(
            "core-metadata",
            entry.get("dist-info-metadata", entry.get("data-dist-info-metadata")),
        )
    )
    hint = entry.get("filename")
    return _make_file(
        url=entry["url"],
        base_url=base_url,
        upstream=upstream,
        project=project,
        filename_hint=hint if isinstance(hint, str) else None,
        hashes=hashes or _hash_from_fragment(urldefrag(entry["url"])[1]),
        requires_python=entry.get("requires-python"),
        yanked=_yanked_json(entry.get("yanked")),
        size=entry.get("size"),
        upload_time=entry.get("upload-time"),
        core_metadata=metadata,
    )


def parse_project_page(
    body: bytes, content_type: str, base_url: str, upstream: str, project: NormalizedName
) -> ProjectPage:
    """Dispatch on the response's media type; unknown types are sniffed, not trusted."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in (JSON_TYPE, "application/json"):
        return parse_project_json(body, base_url, upstream, project)
    if media in {HTML_TYPE, "text/html", "application/xhtml+xml"}:
        return parse_project_html(body, base_url, upstream, project)
    if body.lstrip()[:1] == b"{":
        return parse_project_json(body, base_url, upstream, project)
    return parse_project_html(body, base_url, upstream, project)


def parse_project_list(body: bytes, content_type: str) -> frozenset[NormalizedName]:
    """The project names of a ``/simple/`` page, canonicalized."""
    return frozenset(parse_project_links(body, content_type, ""))


def parse_project_links(
    body: bytes, content_type: str, base_url: str, upstream: str = "upstream"
) -> dict[NormalizedName, str | None]:
    """Canonical project name -> where the ``/simple/`` page links it, resolved on ``base_url``.

    The link is kept only where its last path segment is not the canonical name already: a
    static tree links ``zope.interface/``, which is where its page is, while an index that
    follows PEP 503 links the canonical name and needs no map (on a list of 600,000 projects
    the map would cost more than it says). JSON lists carry no links: None for every name.
    Links ``urllib`` cannot take are skipped.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    links: dict[NormalizedName, str | None] = {}
    if media in {JSON_TYPE, "application/json"} or body.lstrip()[:1] == b"{":
        data = _load_json(body)
        projects = data.get("projects") if isinstance(data, dict) else None
        if not isinstance(projects, list):
            raise PageParseError("JSON project list has no 'projects' list")
        for entry in projects:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                links.setdefault(canonicalize_name(entry["name"]), None)
        return links
    collector = _collect(body)
    skipped = 0
    for attrs in collector.anchors:
        href = attrs.get("href")
        if not href:
            continue
        try:
            segment = unquote(urlsplit(href).path.rstrip("/").rsplit("/", 1)[-1])
            if not segment or segment in {".", ".."}:
                continue
            name = canonicalize_name(segment)
            link = None if segment == name else urldefrag(urljoin(base_url, href))[0]
        except ValueError:
            skipped += 1
            continue
        links.setdefault(name, link)
    _log_skipped(upstream, "the project list", skipped)
    return links
