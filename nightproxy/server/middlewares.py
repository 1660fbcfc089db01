"""Request logging and error pages."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from nightproxy.index.service import AllUpstreamsFailedError

log = logging.getLogger("nightproxy.access")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log line per request; upstream failures become short plain-text 502s."""
    started = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except AllUpstreamsFailedError as exc:
        status = 502
        response = web.Response(status=502, text=f"{exc}\n")
        return response
    finally:
        cache = response.headers.get("X-Nightproxy-Cache", "-") if response is not None else "-"
        size = 0
        if response is not None:
            size = response.body_length if response.prepared else (response.content_length or 0)
        log.info(
            "%s %s %d %d %.1fms %s",
            request.method,
            request.path,
            status,
            size,
            (time.perf_counter() - started) * 1000,
            cache,
        )
