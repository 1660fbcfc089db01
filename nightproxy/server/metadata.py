"""``<wheel>.metadata`` (PEP 658): the feed's own file, a few byte ranges, or the wheel's."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager

from aiohttp import web
from packaging.utils import NormalizedName

from nightproxy.cache.keys import metadata_key
from nightproxy.cache.metadata import MetadataError, extract_metadata
from nightproxy.cache.owner import Source
from nightproxy.cache.service import CacheUnavailableError, NoRoomError
from nightproxy.model import PublishedFile
from nightproxy.server import keys
from nightproxy.server.errors import bad_gateway
from nightproxy.server.feeds import serve_hosted
from nightproxy.server.files import cached_for, file_source, listed, unavailable
from nightproxy.server.streaming import BlobResponse
from nightproxy.simple_api.filenames import METADATA_SUFFIX
from nightproxy.upstreams.base import Download
from nightproxy.upstreams.http import UpstreamError

log = logging.getLogger(__name__)

METADATA_TYPE = "text/plain; charset=utf-8"


async def metadata_response(
    request: web.Request, project: NormalizedName, key: str, wheel: str
) -> web.StreamResponse:
    app = request.app
    cache = app[keys.CACHE]
    mkey = metadata_key(key)
    blob = await cached_for(request, project, key, wheel + METADATA_SUFFIX, mkey)
    if blob is not None:
        return BlobResponse(blob, METADATA_TYPE)
    pub = await listed(request, project, key, wheel)
    hosted = await serve_hosted(request, pub, metadata=True)
    if hosted is not None:
        return hosted
    sha = await _upstream_metadata(app, key, pub)
    if sha is None and cache.store.resolve(key) is None and cache.fills.get(key) is None:
        # Neither the wheel nor its download is here: a few byte ranges beat the whole wheel.
        ranged = await _ranged_metadata(app, key, pub)
        if ranged is not None:
            data, hit = ranged
            return web.Response(
                body=data,
                headers={
                    "Content-Type": METADATA_TYPE,
                    # Not verified against the wheel's hash: clients must not keep it for good.
                    "Cache-Control": "no-cache",
                    "X-Nightproxy-Cache": hit,
                },
            )
    if sha is None:
        sha = await _extracted_metadata(app, key, pub)
    try:
        blob = await cache.open_blob(sha)
    except CacheUnavailableError as exc:
        raise unavailable(exc) from None
    if blob is None:
        raise web.HTTPServiceUnavailable(text="the metadata was evicted meanwhile; try again\n")
    return BlobResponse(blob, METADATA_TYPE)


async def _upstream_metadata(app: web.Application, key: str, pub: PublishedFile) -> str | None:
    """Fetch the feed's own PEP 658 file (verified) into the cache; its digest, or None."""
    source = pub.source
    if source.core_metadata is False:
        return None
    upstream = app[keys.UPSTREAMS][source.upstream]
    expected = (
        source.core_metadata.get("sha256") if not isinstance(source.core_metadata, bool) else None
    )

    def opener() -> AbstractAsyncContextManager[Download]:
        opened = upstream.open_metadata(source)
        assert opened is not None
        return opened

    sha = await app[keys.CACHE].fetch(
        metadata_key(key),
        Source(opener, expected, source.filename + METADATA_SUFFIX, source.upstream),
    )
    if sha is None:
        log.info(
            "metadata of %s not available upstream; reading it from the wheel", source.filename
        )
    return sha


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


async def _extracted_metadata(app: web.Application, key: str, pub: PublishedFile) -> str:
    """Extract METADATA from the (downloaded, verified) wheel into the cache; its digest."""
    cache = app[keys.CACHE]
    source = pub.source
    wheel_sha = cache.store.resolve(key) or await cache.fetch(key, file_source(app, key, pub))
    wheel = None if wheel_sha is None else await cache.open_blob(wheel_sha)
    if wheel is None:
        raise bad_gateway(f"could not fetch {source.filename} to read its metadata")
    try:
        data = await asyncio.to_thread(extract_metadata, wheel.path, source.filename)
    except MetadataError as exc:
        raise bad_gateway(str(exc)) from None
    finally:
        wheel.release()
    try:
        return await cache.admit_bytes(
            data,
            key=metadata_key(key),
            filename=source.filename + METADATA_SUFFIX,
            upstream=source.upstream,
        )
    except NoRoomError:
        raise web.HTTPInsufficientStorage(text="no room in the cache for metadata\n") from None
