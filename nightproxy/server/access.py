"""The access log: one line per request, plus request metrics, once the response is sent."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from nightproxy import logs
from nightproxy.server import keys


def _route(request: web.BaseRequest) -> str:
    if isinstance(request, web.Request):
        resource = request.match_info.route.resource
        if resource is not None:
            return resource.canonical
    return "unmatched"


class AccessLogger(AbstractAccessLogger):
    """Runs once the response is fully sent, so sizes and durations are the real ones."""

    @property
    def enabled(self) -> bool:
        # Metrics are recorded whatever the log level.
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        cache = response.headers.get("X-Nightproxy-Cache", "-")
        # body_length counts the header block too; Content-Length is the body when known.
        size = response.content_length
        if size is None:
            size = response.body_length
        status = response.status
        metrics = request.app.get(keys.METRICS) if isinstance(request, web.Request) else None
        if metrics is not None:
            metrics.observe_request(_route(request), status, time)
            # A HEAD sends no body and downloads nothing: it is neither a hit nor a miss.
            if cache in {"hit", "miss"} and status < 300 and request.method != "HEAD":
                metrics.observe_file(cache, size)
        # The path as the client sent it: the decoded one could carry a newline into the log.
        path = request.raw_path
        sink = logs.access_sink
        if sink is not None:
            remote = request.remote if sink.json else None
            sink.record(
                request.method, path, status, size=size, seconds=time, cache=cache, remote=remote
            )
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {
            "method": request.method,
            "path": path,
            "status": status,
            "bytes": size,
            "duration_ms": round(time * 1000, 2),
            "cache": cache,
            "remote": request.remote,
        }
        message = f"{request.method} {path} {status} {size} {time * 1000:.1f}ms {cache}"
        self.logger.info("%s", message, extra={"fields": fields})
