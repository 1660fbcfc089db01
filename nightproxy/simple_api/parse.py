"""Pure parsers: upstream page bytes -> ``ProjectPage``.

Upstream pages are untrusted and come in many dialects (PEP 503 HTML, PEP 691 JSON, static
bucket trees, anaconda's root-relative links, Azure's GUID paths). The parsers keep what is a
distribution file, skip everything else with no exception, and raise ``PageParseError`` only
when the document as a whole is not an index page.

A page of 200,000 links is read a slice at a time and each file packed as soon as it is
read (``packed``): the page never exists as text and as objects at once.
"""

from __future__ import annotations

import codecs
import logging
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from html.parser import HTMLParser
from types import MappingProxyType
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from packaging.utils import NormalizedName

from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.simple_api.jsonstream import ArrayMember, JsonStreamError
from nightproxy.simple_api.packed import PackedFiles, RecordsBuilder, encode_dist
from nightproxy.simple_api.records import DistFile, ProjectPage

log = logging.getLogger(__name__)

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"

_HEX = frozenset(string.hexdigits.lower())
_KNOWN_HASHES = frozenset({"sha256", "sha384", "sha512", "sha224", "sha1", "md5", "blake2b"})


#: Bytes of a page decoded (and parsed) at a time.
SLICE = 1024 * 1024
#: What keeps an absolute URL from being its own join: a query, parameters, characters
#: ``urlsplit`` strips or drops, anything that is not plain ASCII.
_NEEDS_JOIN = re.compile(r"[?;]|[^\x21-\x7e]|^https?://[^/]*$")


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
    plain = url.partition("#")[0]
    if plain.startswith(("https://", "http://")) and not _NEEDS_JOIN.search(plain):
        # An absolute URL that joining and splitting would give back as it is (no query,
        # parameters, blanks or controls): what ``urljoin`` and ``urldefrag`` would make of it
        # is its part before the fragment. Most links of a big page are of this kind.
        absolute = plain
        parts = urlsplit(absolute)
    else:
        absolute = urljoin(base_url, url)
        parts = urlsplit(absolute)
        if "#" in absolute:
            # As ``urldefrag`` does, from the parts in hand.
            absolute = urlunsplit(parts._replace(fragment=""))
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return None
    # Raises for a port that is not a number or out of range: better here, where the link is
    # skipped, than at download time.
    _port = parts.port
    filename = unquote(parts.path.rsplit("/", 1)[-1])
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


class _Files:
    """A page's files as they are parsed: the first of each filename, packed."""

    def __init__(self, upstream: str, project: NormalizedName) -> None:
        self.upstream = upstream
        self.project = project
        self._records = RecordsBuilder()
        self._seen: set[str] = set()
        self.skipped = 0

    def add(self, file: DistFile | None) -> None:
        if file is None or file.filename in self._seen:
            return
        record = encode_dist(file)
        if record is None:
            self.skipped += 1
            return
        self._seen.add(file.filename)
        self._records.add(record)

    def page(self) -> ProjectPage:
        log_skipped(self.upstream, f"the page of {self.project}", self.skipped)
        return ProjectPage(name=self.project, files=PackedFiles(self._records.build()))


def text_slices(body: bytes, size: int = SLICE) -> Iterator[str]:
    """``body`` as UTF-8 text (bad bytes replaced), a slice at a time: a big page is never
    one string as well as its bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    view = memoryview(body)
    for start in range(0, len(body), size):
        yield decoder.decode(view[start : start + size])
    yield decoder.decode(b"", final=True)


class _AnchorReader(HTMLParser):
    """Each ``<a>`` start tag to ``on_anchor`` as it is read, and the first ``<base href>``
    (which, in a page as HTML requires, comes before the links it applies to)."""

    def __init__(self, on_anchor: Callable[[dict[str, str | None], str | None], None]) -> None:
        super().__init__(convert_charrefs=True)
        self.on_anchor = on_anchor
        self.base_href: str | None = None
        self.saw_html = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.on_anchor(dict(attrs), self.base_href)
        elif tag == "base" and self.base_href is None:
            self.base_href = dict(attrs).get("href")
        if tag in {"html", "body", "a", "head", "title", "h1"}:
            self.saw_html = True


def read_anchors(
    body: bytes, on_anchor: Callable[[dict[str, str | None], str | None], None]
) -> None:
    reader = _AnchorReader(on_anchor)
    try:
        for text in text_slices(body):
            reader.feed(text)
        reader.close()
    except PageParseError:
        raise
    except Exception as exc:  # HTMLParser can raise on pathological input
        raise PageParseError(f"unparsable HTML: {type(exc).__name__}") from exc
    if not reader.saw_html:
        raise PageParseError("response is not an HTML index page")


def parse_project_html(
    body: bytes, base_url: str, upstream: str, project: NormalizedName
) -> ProjectPage:
    """Parse a PEP 503 project page (any of the dialects static trees and channels produce)."""
    files = _Files(upstream, project)
    bases: dict[str | None, str] = {None: base_url}

    def on_anchor(attrs: dict[str, str | None], base_href: str | None) -> None:
        base = bases.get(base_href)
        if base is None:
            try:
                base = urljoin(base_url, base_href)
            except ValueError:
                log.warning(
                    "%s: ignoring an unusable <base href> on the page of %s", upstream, project
                )
                base = base_url
            bases[base_href] = base
        try:
            files.add(_html_file(attrs, base, upstream, project))
        except ValueError:
            files.skipped += 1

    read_anchors(body, on_anchor)
    return files.page()


def log_skipped(upstream: str, where: str, skipped: int) -> None:
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
    _url, _sep, fragment = href.partition("#")
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


def read_json_member(
    body: bytes, key: str, on_element: Callable[[object], None]
) -> dict[str, object]:
    """Each element of the array ``key`` of the JSON object in ``body`` to ``on_element``, one
    at a time; the object's other members are returned. PageParseError when ``body`` is no
    JSON object with such an array."""
    reader = ArrayMember(key, on_element)
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    view = memoryview(body)
    try:
        for start in range(0, len(body), SLICE):
            reader.feed(decoder.decode(view[start : start + SLICE]))
        reader.feed(decoder.decode(b"", final=True))
        reader.close()
    except (JsonStreamError, UnicodeDecodeError) as exc:
        raise PageParseError("invalid JSON") from exc
    if not reader.found:
        raise PageParseError(f"JSON page has no {key!r} list")
    return reader.others


def parse_project_json(
    body: bytes, base_url: str, upstream: str, project: NormalizedName
) -> ProjectPage:
    """Parse a PEP 691 JSON project page."""
    files = _Files(upstream, project)

    def on_entry(entry: object) -> None:
        try:
            files.add(_json_file(entry, base_url, upstream, project))
        except ValueError:
            files.skipped += 1

    read_json_member(body, "files", on_entry)
    return files.page()


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
        hashes=hashes or _hash_from_fragment(entry["url"].partition("#")[2]),
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
