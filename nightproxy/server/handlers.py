"""HTTP handlers: the routes, and file requests as thin adapters to the cache service."""

from __future__ import annotations

from aiohttp import web
from packaging.utils import NormalizedName, canonicalize_name

from nightproxy.cache.keys import is_file_key
from nightproxy.cache.service import CacheUnavailableError
from nightproxy.server.feeds import serve_hosted
from nightproxy.server.files import cached_for, download, file_source, listed, unavailable
from nightproxy.server.metadata import metadata_response
from nightproxy.server.ops import setup_ops_routes
from nightproxy.server.pages import setup_page_routes
from nightproxy.server.streaming import OCTET, BlobResponse
from nightproxy.simple_api.filenames import METADATA_SUFFIX, is_safe_filename, parse_dist_filename


def setup_routes(app: web.Application) -> None:
    setup_ops_routes(app)
    # The pages first: aiohttp tries a prefix's resources in order, one regex each.
    setup_page_routes(app)
    r = app.router
    r.add_get("/files/{project}/{key}/{filename}", file_handler)
    r.add_get("/as-of/{as_of}/files/{project}/{key}/{filename}", file_handler)


async def file_handler(request: web.Request) -> web.StreamResponse:
    project = canonicalize_name(request.match_info["project"])
    key = request.match_info["key"]
    filename = request.match_info["filename"]
    if not is_file_key(key) or not is_safe_filename(filename):
        raise web.HTTPNotFound(text="no such file\n")
    try:
        return await _file(request, project, key, filename)
    except CacheUnavailableError as exc:
        raise unavailable(exc) from None


async def _file(
    request: web.Request, project: NormalizedName, key: str, filename: str
) -> web.StreamResponse:
    if filename.endswith(METADATA_SUFFIX):
        wheel = filename[: -len(METADATA_SUFFIX)]
        dist = parse_dist_filename(wheel)
        if dist is None or dist.project != project or not wheel.endswith(".whl"):
            raise web.HTTPNotFound(text="no such metadata\n")
        return await metadata_response(request, project, key, wheel)
    dist = parse_dist_filename(filename)
    if dist is None or dist.project != project:
        raise web.HTTPNotFound(text="no such file\n")
    blob = await cached_for(request, project, key, filename, key)
    if blob is not None:
        return BlobResponse(blob, OCTET)
    pub = await listed(request, project, key, filename)
    hosted = await serve_hosted(request, pub)
    if hosted is not None:
        return hosted
    if request.method == "HEAD":
        # Never download for a HEAD: answer from what the index knows.
        headers = {"Content-Type": OCTET, "Accept-Ranges": "bytes", "X-Nightproxy-Cache": "miss"}
        if pub.source.size is not None:
            headers["Content-Length"] = str(pub.source.size)
        return web.Response(headers=headers)
    return await download(request, key, file_source(request.app, key, pub))
