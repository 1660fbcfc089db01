"""Page requests: project pages and the project list, as HTTP responses.

The index hands over prepared bytes and their validators; the status, the headers and the
response are made here.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from functools import lru_cache
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from packaging.utils import InvalidName, NormalizedName, canonicalize_name
from yarl import URL

from nightproxy.index.prepared import Prepared
from nightproxy.index.service import AllUpstreamsFailedError, ListView, ProjectView
from nightproxy.server import keys
from nightproxy.server.errors import upstreams_failed
from nightproxy.simple_api.negotiate import CONTENT_TYPES, FORMATS, media, weighted_list
from nightproxy.simple_api.parse import parse_upload_time

#: The route of a project page.
PROJECT_PAGE = "/simple/{project}/"


def setup_page_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/simple", _add_slash)
    r.add_get("/simple/", index_page)
    # The page first: aiohttp tries a prefix's resources in order, one regex each.
    r.add_get(PROJECT_PAGE, project_page)
    r.add_get("/simple/{project}", _add_slash)
    r.add_get("/as-of/{as_of}/simple", _add_slash)
    r.add_get("/as-of/{as_of}/simple/", index_page)
    r.add_get("/as-of/{as_of}/simple/{project}/", project_page)
    r.add_get("/as-of/{as_of}/simple/{project}", _add_slash)


async def _add_slash(request: web.Request) -> web.Response:
    raw = request.match_info.get("project")
    raise web.HTTPMovedPermanently(_page_location(request, None if raw is None else _valid(raw)))


def _valid(raw: str) -> NormalizedName:
    """The canonical form of a project name from a path, or 404 for what is no name at all.

    A decoded segment may hold ``/``, ``?`` or ``#``; redirecting to it would turn them into
    delimiters and point at another page.
    """
    try:
        return canonicalize_name(raw, validate=True)
    except InvalidName:
        raise web.HTTPNotFound(text="no such project\n") from None


#: Characters an as-of time needs that are safe in a path segment as they are.
_AS_OF_SAFE = ":+"


def _page_location(request: web.Request, project: NormalizedName | None) -> URL:
    """Where a page's canonical URL is: rebuilt from parsed parts (percent-quoted), never from
    the decoded path, with the query string exactly as the client sent it."""
    as_of = request.match_info.get("as_of")
    location = "/simple/" if as_of is None else f"/as-of/{quote(as_of, safe=_AS_OF_SAFE)}/simple/"
    if project is not None:
        location += quote(project, safe="") + "/"
    # From the request target itself: even yarl's raw query string is requoted.
    query = request.raw_path.partition("?")[2]
    if query:
        location += "?" + query
    # Already encoded: a plain string would be requoted on its way into the header.
    return URL(location, encoded=True)


# -- pages --------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _canonical_memo(name: str) -> NormalizedName:
    return canonicalize_name(name)


def canonical(name: str) -> NormalizedName:
    # Memoised for names of a real project's length only: the memo is keyed by what clients
    # send, and a path segment may be kilobytes long.
    return _canonical_memo(name) if len(name) <= 128 else canonicalize_name(name)


@lru_cache(maxsize=256)
def accepts_gzip(header: str) -> bool:
    entries = weighted_list(header)
    named = [q for coding, q in entries if coding in {"gzip", "x-gzip"}]
    if named:
        return max(named) > 0
    return any(q > 0 for coding, q in entries if coding == "*")


def _wants_gzip(request: web.Request) -> bool:
    return accepts_gzip(request.headers.get("Accept-Encoding", ""))


def _as_of(request: web.Request) -> datetime | None:
    raw = request.match_info.get("as_of")
    if raw is None and request.query_string:
        raw = request.query.get("as_of")
        if raw is not None:
            raw = _plus_offset(raw)
    if raw is None:
        return None
    when = parse_upload_time(raw)
    if when is None:
        try:
            when = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise web.HTTPBadRequest(
                text=f"as_of: {raw!r} is not an ISO 8601 time such as 2026-11-20T00:00:00Z\n"
            ) from None
    return when


def _plus_offset(value: str) -> str:
    """A query's ``+hh:mm`` (or ``+hhmm``) offset, which form decoding turned into a space.

    ``?as_of=2030-01-01T00:00:00+01:00`` as typed arrives as ``...00:00:00 01:00``; a space
    can stand nowhere else at the end of an ISO 8601 time.
    """
    for width in (5, 4):  # "hh:mm", "hhmm"
        tail = value[-width:]
        if len(value) > width and value[-width - 1] == " " and tail.replace(":", "").isdigit():
            return f"{value[: -width - 1]}+{tail}"
    return value


def _media(request: web.Request) -> str:
    """The media type to answer with: the one the client asked for (a key of
    ``CONTENT_TYPES``)."""
    chosen = media(
        request.headers.get("Accept"),
        request.query.get("format") if request.query_string else None,
    )
    if chosen is None:
        raise web.HTTPNotAcceptable(
            text="this index serves application/vnd.pypi.simple.v1+json, "
            "application/vnd.pypi.simple.v1+html and text/html\n"
        )
    return chosen


#: The response headers of each prepared representation (per media type asked for) that do
#: not change per request, derived once: they live as long as the representation does.
_STATIC: weakref.WeakKeyDictionary[Prepared, dict[str, Mapping[str, str]]] = (
    weakref.WeakKeyDictionary()
)


def static_headers(
    page: ProjectView | ListView, prepared: Prepared, media_type: str, gzipped: bool
) -> Mapping[str, str]:
    """Everything but the freshness, fixed for the life of the representation."""
    known = _STATIC.get(prepared)
    if known is None:
        _STATIC[prepared] = known = {}
    static = known.get(media_type)
    if static is None:
        block = CIMultiDict(
            {
                "Content-Type": CONTENT_TYPES[media_type],
                "Vary": "Accept, Accept-Encoding",
                "ETag": prepared.etag,
                "Last-Modified": _http_date(page.built_at),
            }
        )
        if gzipped:
            block["Content-Encoding"] = "gzip"
        # How complete the page is.
        if page.missing:
            block["X-Nightproxy-Missing"] = ", ".join(page.missing)
        if page.stale:
            block["X-Nightproxy-Stale"] = ", ".join(page.stale)
        if isinstance(page, ProjectView) and page.retained:
            block["X-Nightproxy-Retained"] = str(page.retained)
        known[media_type] = static = CIMultiDictProxy(block)
    return static


def max_age(page: ProjectView | ListView, now: float) -> str:
    return _max_age(max(0, int(page.fresh_until - now)))


async def _page_response(
    request: web.Request, page: ProjectView | ListView, media_type: str, gzipped: bool, now: float
) -> web.StreamResponse:
    fmt = FORMATS[media_type]
    prepared = page.prepared.get(fmt, gzipped)
    if prepared is None:
        prepared = await asyncio.to_thread(page.prepared.make, fmt, gzipped)
    headers = CIMultiDict(static_headers(page, prepared, media_type, gzipped))
    headers["Cache-Control"] = max_age(page, now)
    if etag_matches(request.headers.get("If-None-Match"), prepared.etag):
        return web.Response(status=304, headers=headers)
    if prepared.inflate:
        return await _inflated(request, prepared, headers)
    return web.Response(body=prepared.body, headers=headers)


async def _inflated(
    request: web.Request, prepared: Prepared, headers: CIMultiDict[str]
) -> web.StreamResponse:
    """A big page kept compressed, sent to a client that does not take gzip: inflated a piece
    at a time as the client reads, never whole."""
    response = web.StreamResponse(headers=headers)
    response.content_length = prepared.length
    await response.prepare(request)
    if request.method != "HEAD":
        for piece in prepared.chunks():
            await response.write(piece)
            # A write returns at once while the socket takes the bytes: let the other
            # requests in between pieces.
            await asyncio.sleep(0)
    await response.write_eof()
    return response


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` value matches a current representation's (strong) ETag.

    RFC 9110 13.1.2: ``*`` matches any current representation; otherwise the weak comparison,
    so a client's ``W/"x"`` matches ``"x"``.
    """
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


@lru_cache(maxsize=1024)
def _max_age(seconds: int) -> str:
    return f"max-age={seconds}"


@lru_cache(maxsize=1024)
def _http_date(when: float) -> str:
    return formatdate(when, usegmt=True)


async def index_page(request: web.Request) -> web.StreamResponse:
    media_type = _media(request)
    gzipped = _wants_gzip(request)
    index = request.app[keys.INDEX]
    listing = await index.project_list()
    return await _page_response(request, listing, media_type, gzipped, index.clock())


async def project_page(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["project"]
    project = canonical(raw)
    if project != raw:
        raise web.HTTPMovedPermanently(_page_location(request, _valid(raw)))
    _valid(raw)  # a canonical spelling can still be no name at all ("demo-")
    media_type = _media(request)
    as_of = _as_of(request)
    gzipped = _wants_gzip(request)
    index = request.app[keys.INDEX]
    view = index.fresh_view(project, as_of)
    if view is None or not (view.files or view.inputs):
        try:
            view = await index.view(project, as_of)
        except AllUpstreamsFailedError as exc:
            # A short plain-text 502, never an empty page that looks like "no files".
            raise upstreams_failed(exc) from None
        if view is None:
            raise web.HTTPNotFound(text=f"no upstream has a project named {project}\n")
    return await _page_response(request, view, media_type, gzipped, index.clock())
