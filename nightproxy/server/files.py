"""File requests in the cache service's terms: pinned hits, downloads joined, policy."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from aiohttp import web
from packaging.utils import NormalizedName

from nightproxy.cache.fill import FillError, FillRestartedError
from nightproxy.cache.owner import Source
from nightproxy.cache.service import CacheUnavailableError, ServedBlob
from nightproxy.index.service import AllUpstreamsFailedError
from nightproxy.model import PublishedFile
from nightproxy.server import keys
from nightproxy.server.errors import bad_gateway, download_failed, try_again, upstreams_failed
from nightproxy.server.fleet import shared_opener
from nightproxy.server.streaming import OCTET, BlobResponse, stream_fill, wanted_range
from nightproxy.simple_api.filenames import METADATA_SUFFIX
from nightproxy.upstreams.base import Download

#: Times a request joins a download again after the one it joined was started over.
JOIN_ATTEMPTS = 3


async def find_file(
    request: web.Request, project: NormalizedName, key: str
) -> PublishedFile | None:
    try:
        return await request.app[keys.INDEX].find_file(project, key)
    except AllUpstreamsFailedError as exc:
        raise upstreams_failed(exc) from None


def allowed(request: web.Request, project: NormalizedName, pub: PublishedFile) -> bool:
    return pub.source.upstream in request.app[keys.INDEX].upstreams_for(project)


async def listed(
    request: web.Request, project: NormalizedName, key: str, filename: str
) -> PublishedFile:
    """The published file behind a URL, or 404 when no allowed upstream lists it so."""
    pub = await find_file(request, project, key)
    if pub is None or pub.filename != filename or not allowed(request, project, pub):
        raise web.HTTPNotFound(text=f"{filename} is not listed by any upstream of {project}\n")
    return pub


def unavailable(exc: CacheUnavailableError) -> web.HTTPServiceUnavailable:
    return try_again(str(exc))


async def cached_for(
    request: web.Request, project: NormalizedName, key: str, filename: str, cache_key: str
) -> ServedBlob | None:
    """The pinned blob answering for ``key`` under ``filename``, if it may answer."""
    try:
        blob = await request.app[keys.CACHE].open_cached(cache_key, filename)
    except CacheUnavailableError as exc:
        raise unavailable(exc) from None
    if blob is None:
        return None
    try:
        if await _may_serve(request, project, key, filename.removesuffix(METADATA_SUFFIX), blob):
            return blob
    except BaseException:
        blob.release()
        raise
    blob.release()
    return None


async def _may_serve(
    request: web.Request, project: NormalizedName, key: str, filename: str, blob: ServedBlob
) -> bool:
    """Whether a cached blob may answer for a file of ``project``.

    For a project pinned to some feeds (``projects:``), only if it came from one of them, or
    one of them publishes this file now: a cache kept across a config change, or filled from
    another feed before the pin, must not keep serving a feed the project is no longer
    allowed to come from (dependency confusion through old page URLs and lock files).
    """
    app = request.app
    permitted = app[keys.INDEX].upstreams_for(project)
    if len(permitted) == len(app[keys.CONFIG].upstreams) or blob.upstream in permitted:
        return True
    try:
        pub = await find_file(request, project, key)
    except web.HTTPBadGateway:
        # No allowed feed can answer now. A blob of unknown origin (imported, or found
        # without its record) is served, verified against its name as it is, rather than
        # failing a file already here; one known to come from another feed is not.
        return blob.upstream == ""
    return pub is not None and pub.filename == filename and allowed(request, project, pub)


def file_source(app: web.Application, key: str, pub: PublishedFile) -> Source:
    """Where the download of a published file comes from: its upstream, or the fleet's shared
    tier in front of it."""
    source = pub.source
    upstream = app[keys.UPSTREAMS][source.upstream]

    def opener() -> AbstractAsyncContextManager[Download]:
        return upstream.open_file(source)

    return Source(
        shared_opener(app, key, source.sha256, opener),
        source.sha256,
        source.filename,
        source.upstream,
    )


async def download(request: web.Request, key: str, source: Source) -> web.StreamResponse:
    """The file as its download runs (or from the cache, if another process got it first)."""
    cache = request.app[keys.CACHE]
    for _attempt in range(JOIN_ATTEMPTS):
        async with cache.filling(key, source) as fill:
            try:
                await fill.wait_started()
                if fill.hit is not None:
                    blob = await cache.open_blob(fill.hit)
                    if blob is None:
                        continue
                    return BlobResponse(blob, OCTET)
                return await stream_fill(request, fill, wanted_range(request, fill.size))
            except FillRestartedError:
                continue  # nothing was sent: join the download that replaced it
            except CacheUnavailableError as exc:
                raise unavailable(exc) from None
            except FillError as exc:
                raise download_failed(exc) from None
    raise bad_gateway("upstream download kept being started over")
