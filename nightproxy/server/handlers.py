"""HTTP handlers: thin adapters from requests to the index service and the file cache."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from email.utils import formatdate
from functools import lru_cache
from typing import BinaryIO
from urllib.parse import quote

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict, CIMultiDictProxy
from packaging.utils import InvalidName, NormalizedName, canonicalize_name
from yarl import URL

from nightproxy.cache.fill import Fill, FillError, read_span
from nightproxy.cache.keys import is_file_key, metadata_key
from nightproxy.cache.metadata import MetadataError, extract_metadata
from nightproxy.cache.store import CacheStore
from nightproxy.index.service import (
    AllUpstreamsFailedError,
    IndexView,
    ProjectView,
    Rendered,
)
from nightproxy.model import PublishedFile
from nightproxy.server import keys
from nightproxy.server.ops import setup_ops_routes
from nightproxy.simple_api.filenames import METADATA_SUFFIX, is_safe_filename, parse_dist_filename
from nightproxy.simple_api.negotiate import CONTENT_TYPES, Format, negotiate, weighted_list
from nightproxy.simple_api.parse import parse_upload_time
from nightproxy.upstreams.base import Download
from nightproxy.upstreams.http import UpstreamError

log = logging.getLogger(__name__)

FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
OCTET = "application/octet-stream"
METADATA_TYPE = "text/plain; charset=utf-8"
#: The route of a project page; the connection-level fast path answers the same pages.
PROJECT_PAGE = "/simple/{project}/"


def setup_routes(app: web.Application) -> None:
    setup_ops_routes(app)
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
    r.add_get("/files/{project}/{key}/{filename}", file_handler)
    r.add_get("/as-of/{as_of}/files/{project}/{key}/{filename}", file_handler)


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


def _format(request: web.Request) -> Format:
    fmt = negotiate(
        request.headers.get("Accept"),
        request.query.get("format") if request.query_string else None,
    )
    if fmt is None:
        raise web.HTTPNotAcceptable(
            text="this index serves application/vnd.pypi.simple.v1+json, "
            "application/vnd.pypi.simple.v1+html and text/html\n"
        )
    return fmt


#: Above this, a page body is sent in its own write rather than joined to the headers.
SEPARATE_WRITE = 64 * 1024


class _PageResponse(web.Response):
    """A prepared page body, sent without copying it.

    On Python < 3.12.9 aiohttp joins the header block and the body into one new bytes object
    per response (``writelines`` is unsafe there); for a 1 MB page that copy is a large part of
    the request. Flushing the headers on their own lets the body go out as it is.
    """

    async def _write_headers(self) -> None:
        await super()._write_headers()
        writer = self._payload_writer
        if writer is not None and isinstance(self.body, bytes) and len(self.body) > SEPARATE_WRITE:
            send_headers = getattr(writer, "send_headers", None)
            if send_headers is not None:
                send_headers()


def static_headers(
    page: ProjectView | IndexView, rendered: Rendered, fmt: Format, gzipped: bool
) -> Mapping[str, str]:
    """Everything but the freshness, fixed for the life of the representation: derived once."""
    static = rendered.headers
    if static is None:
        block = CIMultiDict(
            {
                "Content-Type": CONTENT_TYPES[fmt],
                "Vary": "Accept, Accept-Encoding",
                "ETag": rendered.etag,
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
        rendered.headers = static = CIMultiDictProxy(block)
    return static


def max_age(page: ProjectView | IndexView, now: float) -> str:
    return _max_age(max(0, int(page.fresh_until - now)))


async def _page_response(
    request: web.Request, page: ProjectView | IndexView, fmt: Format, gzipped: bool, now: float
) -> web.Response:
    rendered = page.rendered(fmt, gzipped)
    if rendered is None:
        rendered = await asyncio.to_thread(page.render, fmt, gzipped)
    headers = CIMultiDict(static_headers(page, rendered, fmt, gzipped))
    headers["Cache-Control"] = max_age(page, now)
    if etag_matches(request.headers.get("If-None-Match"), rendered.etag):
        return web.Response(status=304, headers=headers)
    if len(rendered.body) > SEPARATE_WRITE:
        return _PageResponse(body=rendered.body, headers=headers)
    return web.Response(body=rendered.body, headers=headers)


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


async def index_page(request: web.Request) -> web.Response:
    fmt = _format(request)
    gzipped = _wants_gzip(request)
    index = request.app[keys.INDEX]
    listing = await index.project_list()
    return await _page_response(request, listing, fmt, gzipped, index.clock())


async def _find_file(
    request: web.Request, project: NormalizedName, key: str
) -> PublishedFile | None:
    try:
        return await request.app[keys.INDEX].find_file(project, key)
    except AllUpstreamsFailedError as exc:
        raise web.HTTPBadGateway(text=f"{exc}\n") from None


async def project_page(request: web.Request) -> web.Response:
    raw = request.match_info["project"]
    project = canonical(raw)
    if project != raw:
        raise web.HTTPMovedPermanently(_page_location(request, _valid(raw)))
    _valid(raw)  # a canonical spelling can still be no name at all ("demo-")
    fmt = _format(request)
    as_of = _as_of(request)
    gzipped = _wants_gzip(request)
    index = request.app[keys.INDEX]
    view = index.fresh_view(project, as_of)
    if view is None or not (view.files or view.inputs):
        try:
            view = await index.view(project, as_of)
        except AllUpstreamsFailedError as exc:
            # A short plain-text 502, never an empty page that looks like "no files".
            raise web.HTTPBadGateway(text=f"{exc}\n") from None
        if view is None:
            raise web.HTTPNotFound(text=f"no upstream has a project named {project}\n")
    return await _page_response(request, view, fmt, gzipped, index.clock())


# -- files --------------------------------------------------------------------------------------


class _BlobResponse(web.FileResponse):
    """sendfile of a cached blob, pinned against eviction from the moment the handler chose it
    until it has been sent: the file is opened only in ``prepare``, after the handler returned,
    and an eviction in between would turn a listed file into a 404."""

    def __init__(self, store: CacheStore, sha: str, content_type: str) -> None:
        super().__init__(
            store.path_for(sha),
            chunk_size=256 * 1024,
            headers={
                "Content-Type": content_type,
                "Cache-Control": FILE_CACHE_CONTROL,
                "X-Nightproxy-Cache": "hit",
            },
        )
        self._store = store
        self._sha = sha
        store.pin(sha)
        # Released after sending, or when the response is dropped unsent (the request failed
        # between the handler and ``prepare``): a pin that outlived it would keep the blob
        # from eviction for good.
        self._unpin = weakref.finalize(self, store.unpin, sha)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)
        finally:
            self._unpin()
        if self.status == 404:
            # Pruned by another process: forget it so the next request fetches it again.
            self._store.vanished(self._sha)
        return writer


def _serve_cached(
    request: web.Request, sha: str, *, content_type: str = OCTET
) -> web.StreamResponse:
    store = request.app[keys.STORE]
    store.touch(sha)
    return _BlobResponse(store, sha, content_type)


async def _stream_fill(request: web.Request, fill: Fill) -> web.StreamResponse:
    """Tee a running fill to this client as the bytes arrive."""
    try:
        reader = await fill.open_reader()
    except FillError as exc:
        raise web.HTTPBadGateway(text=f"upstream download failed: {exc}\n") from None
    with reader:
        response = web.StreamResponse(
            headers={
                "Content-Type": OCTET,
                "Cache-Control": FILE_CACHE_CONTROL,
                "X-Nightproxy-Cache": "miss",
            }
        )
        if fill.size is not None:
            response.content_length = fill.size
        await response.prepare(request)
        try:
            if fill.size is not None:
                await _sendfile_spans(request, response, fill, reader)
            else:
                # No length: aiohttp frames the body in chunks, so it goes through writes.
                async for offset, length in fill.spans():
                    async for data in read_span(reader, offset, length):
                        await response.write(data)
        except FillError:
            # Headers are gone: the only honest signal left is to cut the connection, so the
            # client sees a short read rather than a complete-looking, unverified body.
            if request.transport is not None:
                request.transport.abort()
            return response
    await response.write_eof()
    return response


async def _sendfile_spans(
    request: web.Request, response: web.StreamResponse, fill: Fill, reader: BinaryIO
) -> None:
    """Each verified-so-far span straight from the page cache to the socket (no copies
    through Python, no thread hop per chunk), as ``web.FileResponse`` does for whole files."""
    loop = asyncio.get_running_loop()
    transport = request.transport
    native = True
    spans = fill.spans()
    try:
        async for offset, length in spans:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            if native:
                try:
                    # No asyncio fallback: it seeks, and the reader shares its file offset
                    # with the writer and every other reader of this fill.
                    sent = await loop.sendfile(transport, reader, offset, length, fallback=False)
                except (NotImplementedError, RuntimeError):
                    # TLS, another event loop, a file system without sendfile: copy instead.
                    native = False
                else:
                    if sent != length:
                        raise FillError(f"cache file ended {length - sent} bytes short")
                    continue
            async for data in read_span(reader, offset, length):
                await response.write(data)
    finally:
        await spans.aclose()


async def file_handler(request: web.Request) -> web.StreamResponse:
    project = canonicalize_name(request.match_info["project"])
    key = request.match_info["key"]
    filename = request.match_info["filename"]
    if not is_file_key(key) or not is_safe_filename(filename):
        raise web.HTTPNotFound(text="no such file\n")
    if filename.endswith(METADATA_SUFFIX):
        return await _metadata_handler(request, project, key, filename[: -len(METADATA_SUFFIX)])
    dist = parse_dist_filename(filename)
    if dist is None or dist.project != project:
        raise web.HTTPNotFound(text="no such file\n")
    store = request.app[keys.STORE]
    sha = await _cached(store, key, filename)
    if sha is not None and await _may_serve(request, project, key, filename, sha):
        return _serve_cached(request, sha)
    pub = await _find_file(request, project, key)
    if pub is None or pub.filename != filename or not _allowed(request, project, pub):
        raise web.HTTPNotFound(text=f"{filename} is not listed by any upstream of {project}\n")
    if request.method == "HEAD":
        # Never download for a HEAD: answer from what the index knows.
        # Ranges on an uncached file are answered once it is verified, so they are honest.
        headers = {"Content-Type": OCTET, "Accept-Ranges": "bytes", "X-Nightproxy-Cache": "miss"}
        if pub.source.size is not None:
            headers["Content-Length"] = str(pub.source.size)
        return web.Response(headers=headers)
    fill = _start_fill(request.app, project, key, pub)
    if request.headers.get("Range"):
        # Ranges are answered from the verified copy, so they can never have a wrong length.
        await fill.finished.wait()
        sha = store.resolve(key, filename)
        if sha is not None:
            return _serve_cached(request, sha)
        # Not kept (larger than the budget, or failed): answer the whole file, 200, honestly.
        fill = _start_fill(request.app, project, key, pub)
    return await _stream_fill(request, fill)


def _allowed(request: web.Request, project: NormalizedName, pub: PublishedFile) -> bool:
    return pub.source.upstream in request.app[keys.INDEX].upstreams_for(project)


async def _may_serve(
    request: web.Request, project: NormalizedName, key: str, filename: str, sha: str
) -> bool:
    """Whether a cached blob may answer for a file of ``project``.

    For a project pinned to some feeds (``projects:``), only if it came from one of them, or
    one of them publishes this file now: a cache kept across a config change, or filled from
    another feed before the pin, must not keep serving a feed the project is no longer
    allowed to come from (dependency confusion through old page URLs and lock files).
    """
    app = request.app
    store = app[keys.STORE]
    allowed = app[keys.INDEX].upstreams_for(project)
    if len(allowed) == len(app[keys.CONFIG].upstreams):
        return True
    source = store.upstream_of(sha)
    if source in allowed:
        return True
    # Pinned across the lookup, which may wait for an upstream: an eviction meanwhile would
    # turn the hit into a 404.
    with store.pinned(sha):
        try:
            pub = await _find_file(request, project, key)
        except web.HTTPBadGateway:
            # No allowed feed can answer now. A blob of unknown origin (imported, or found
            # without its record) is served, verified against its name as it is, rather than
            # failing a file already here; one known to come from another feed is not.
            return source == "" and store.has(sha)
    return (
        pub is not None
        and pub.filename == filename
        and _allowed(request, project, pub)
        and store.has(sha)
    )


async def _cached(store: CacheStore, key: str, filename: str) -> str | None:
    """The blob serving ``key`` under ``filename``, if it is really on disk.

    Another process (``nightproxy cache prune``) may have deleted it: then forget it, so the
    request fetches it again instead of failing.
    """
    sha = store.resolve(key, filename)
    if sha is None:
        return None
    # Pinned across the check: the age sweep or another fill's eviction must not delete it
    # between the check and the response, which touches and pins it in turn before anything
    # else can run.
    with store.pinned(sha):
        present = await asyncio.to_thread(store.path_for(sha).is_file)
    if present and store.has(sha):
        return sha
    store.vanished(sha)
    return None


def _start_fill(
    app: web.Application, project: NormalizedName, key: str, pub: PublishedFile
) -> Fill:
    upstream = app[keys.UPSTREAMS][pub.source.upstream]
    source = pub.source
    index = app[keys.INDEX]

    def done(fill: Fill) -> None:
        if fill.cached:
            # Stored and verified: metadata now comes from the wheel on disk.
            app[keys.REMOTE_METADATA].forget(key)
        if fill.cached and (source.sha256 is None or source.size is None):
            # The page can now publish the hash we verified, and the size, ourselves.
            index.invalidate(project)

    return app[keys.FILLS].start(
        key,
        lambda: upstream.open_file(source),
        expected_sha256=source.sha256,
        filename=source.filename,
        upstream=source.upstream,
        on_done=done,
    )


async def _metadata_handler(
    request: web.Request, project: NormalizedName, key: str, wheel: str
) -> web.StreamResponse:
    dist = parse_dist_filename(wheel)
    if dist is None or dist.project != project or not wheel.endswith(".whl"):
        raise web.HTTPNotFound(text="no such metadata\n")
    app = request.app
    store = app[keys.STORE]
    mkey = metadata_key(key)
    sha = await _cached(store, mkey, wheel + METADATA_SUFFIX)
    if sha is not None and await _may_serve(request, project, key, wheel, sha):
        return _serve_cached(request, sha, content_type=METADATA_TYPE)
    pub = await _find_file(request, project, key)
    if pub is None or pub.filename != wheel or not _allowed(request, project, pub):
        raise web.HTTPNotFound(text=f"{wheel} is not listed by any upstream of {project}\n")
    sha = await _upstream_metadata(app, project, key, pub)
    if sha is None and store.resolve(key) is None and app[keys.FILLS].get(key) is None:
        # Neither the wheel nor its download is here: a few byte ranges beat the whole wheel.
        ranged = await _ranged_metadata(app, key, pub)
        if ranged is not None:
            data, cache = ranged
            return web.Response(
                body=data,
                headers={
                    "Content-Type": METADATA_TYPE,
                    # Not verified against the wheel's hash: clients must not keep it for good.
                    "Cache-Control": "no-cache",
                    "X-Nightproxy-Cache": cache,
                },
            )
    if sha is None:
        sha = await _extracted_metadata(app, project, key, pub)
    return _serve_cached(request, sha, content_type=METADATA_TYPE)


async def _upstream_metadata(
    app: web.Application, project: NormalizedName, key: str, pub: PublishedFile
) -> str | None:
    """Fetch the feed's own PEP 658 file (verified) into the store; its digest, or None."""
    source = pub.source
    if source.core_metadata is False:
        return None
    store = app[keys.STORE]
    mkey = metadata_key(key)
    upstream = app[keys.UPSTREAMS][source.upstream]
    expected = (
        source.core_metadata.get("sha256") if not isinstance(source.core_metadata, bool) else None
    )

    def opener() -> AbstractAsyncContextManager[Download]:
        opened = upstream.open_metadata(source)
        assert opened is not None
        return opened

    fill = app[keys.FILLS].start(
        mkey,
        opener,
        expected_sha256=expected,
        filename=source.filename + METADATA_SUFFIX,
        upstream=source.upstream,
    )
    await fill.finished.wait()
    sha = store.resolve(mkey)
    if sha is not None:
        app[keys.INDEX].invalidate(project)
        return sha
    log.info("metadata of %s not available upstream; reading it from the wheel", source.filename)
    return None


async def _ranged_metadata(
    app: web.Application, key: str, pub: PublishedFile
) -> tuple[bytes, str] | None:
    """METADATA read by byte ranges (held in memory) and whether it was held; None: no ranges."""
    remote = app[keys.REMOTE_METADATA]
    held = remote.held(key)
    if held is not None:
        return held, "hit"
    source = pub.source
    reader = app[keys.UPSTREAMS][source.upstream].range_reader(source)
    if reader is None:
        return None
    try:
        data = await remote.read(key, reader, source.filename)
    except UpstreamError as exc:
        # A cut or slow range read says little about a whole download: try that instead.
        log.info(
            "metadata of %s by byte ranges failed (%s); downloading the wheel", source.filename, exc
        )
        return None
    return None if data is None else (data, "miss")


async def _extracted_metadata(
    app: web.Application, project: NormalizedName, key: str, pub: PublishedFile
) -> str:
    """Extract METADATA from the (downloaded, verified) wheel into the store; its digest."""
    store = app[keys.STORE]
    mkey = metadata_key(key)
    source = pub.source
    wheel_sha = store.resolve(key)
    if wheel_sha is None:
        fill = _start_fill(app, project, key, pub)
        await fill.finished.wait()
        wheel_sha = store.resolve(key)
        if wheel_sha is None:
            raise web.HTTPBadGateway(
                text=f"could not fetch {source.filename} to read its metadata\n"
            )
    try:
        with store.pinned(wheel_sha):
            data = await asyncio.to_thread(
                extract_metadata, store.path_for(wheel_sha), source.filename
            )
    except MetadataError as exc:
        raise web.HTTPBadGateway(text=f"{exc}\n") from None
    victims = store.reserve(len(data))
    if victims is None:
        raise web.HTTPInsufficientStorage(text="no room in the cache for metadata\n")
    await asyncio.to_thread(store.delete_blobs, victims)
    sha = await asyncio.to_thread(
        store.write_blob,
        data,
        key=mkey,
        filename=source.filename + METADATA_SUFFIX,
        upstream=source.upstream,
    )
    store.admitted(
        sha, len(data), len(data), source.filename + METADATA_SUFFIX, upstream=source.upstream
    )
    await asyncio.to_thread(store.record_alias, mkey, sha)
    app[keys.INDEX].invalidate(project)
    return sha
