"""HTTP handlers: the routes, and file requests as thin adapters to the file cache."""

from __future__ import annotations

import asyncio
import logging
import weakref
from contextlib import AbstractAsyncContextManager
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from packaging.utils import NormalizedName, canonicalize_name

from nightproxy.cache.fill import Fill, FillError, read_span
from nightproxy.cache.keys import is_file_key, metadata_key
from nightproxy.cache.metadata import MetadataError, extract_metadata
from nightproxy.cache.store import CacheStore
from nightproxy.index.service import AllUpstreamsFailedError
from nightproxy.model import PublishedFile
from nightproxy.server import keys
from nightproxy.server.errors import bad_gateway
from nightproxy.server.feeds import serve_hosted
from nightproxy.server.fleet import shared_filled, shared_opener
from nightproxy.server.ops import setup_ops_routes
from nightproxy.server.pages import setup_page_routes
from nightproxy.simple_api.filenames import METADATA_SUFFIX, is_safe_filename, parse_dist_filename
from nightproxy.upstreams.base import Download
from nightproxy.upstreams.http import UpstreamError

log = logging.getLogger(__name__)

FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
OCTET = "application/octet-stream"
METADATA_TYPE = "text/plain; charset=utf-8"


def setup_routes(app: web.Application) -> None:
    setup_ops_routes(app)
    # The pages first: aiohttp tries a prefix's resources in order, one regex each.
    setup_page_routes(app)
    r = app.router
    r.add_get("/files/{project}/{key}/{filename}", file_handler)
    r.add_get("/as-of/{as_of}/files/{project}/{key}/{filename}", file_handler)


async def _find_file(
    request: web.Request, project: NormalizedName, key: str
) -> PublishedFile | None:
    try:
        return await request.app[keys.INDEX].find_file(project, key)
    except AllUpstreamsFailedError as exc:
        raise bad_gateway(str(exc), summary=exc.summary) from None


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
        raise bad_gateway(f"upstream download failed: {exc}") from None
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
    hosted = await serve_hosted(request, pub)
    if hosted is not None:
        return hosted
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
        shared_filled(app, fill)
        if fill.cached:
            # Stored and verified: metadata now comes from the wheel on disk.
            app[keys.REMOTE_METADATA].forget(key)
        if fill.cached and (source.sha256 is None or source.size is None):
            # The page can now publish the hash we verified, and the size, ourselves.
            index.invalidate(project)

    return app[keys.FILLS].start(
        key,
        shared_opener(app, key, source.sha256, lambda: upstream.open_file(source)),
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
    hosted = await serve_hosted(request, pub, metadata=True)
    if hosted is not None:
        return hosted
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
            raise bad_gateway(f"could not fetch {source.filename} to read its metadata")
    try:
        with store.pinned(wheel_sha):
            data = await asyncio.to_thread(
                extract_metadata, store.path_for(wheel_sha), source.filename
            )
    except MetadataError as exc:
        raise bad_gateway(str(exc)) from None
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
