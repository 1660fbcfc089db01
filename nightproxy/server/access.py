"""The access log: one line per request, plus request metrics, once the response is sent."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from nightproxy import logs
from nightproxy.server import keys
from nightproxy.server.metrics import Metrics

log = logging.getLogger("nightproxy.access")


def _route(request: web.BaseRequest) -> str:
    if isinstance(request, web.Request):
        resource = request.match_info.route.resource
        if resource is not None:
            return resource.canonical
    return "unmatched"


def record(
    metrics: Metrics | None,
    route: str,
    method: str,
    path: str,
    status: int,
    *,
    size: int | None,
    seconds: float,
    cache: str,
    remote: Callable[[], str | None],
) -> None:
    """One answered request: its metrics and its access line (``path`` as the client sent it:
    a decoded one could carry a newline into the log)."""
    if metrics is not None:
        metrics.observe_request(route, status, seconds)
        # A HEAD sends no body and downloads nothing: it is neither a hit nor a miss.
        if cache in {"hit", "miss"} and status < 300 and method != "HEAD" and size is not None:
            metrics.observe_file(cache, size)
    sink = logs.access_sink
    if sink is not None:
        sink.record(
            method,
            path,
            status,
            size=size,
            seconds=seconds,
            cache=cache,
            remote=remote() if sink.json else None,
        )
        return
    if not log.isEnabledFor(logging.INFO):
        return
    fields = logs.access_fields(
        method, path, status, size=size, seconds=seconds, cache=cache, remote=remote()
    )
    message = logs.access_message(method, path, status, size=size, seconds=seconds, cache=cache)
    log.info("%s", message, extra={"fields": fields})


class AccessLogger(AbstractAccessLogger):
    """Runs once the response is fully sent, so sizes and durations are the real ones."""

    @property
    def enabled(self) -> bool:
        # Metrics are recorded whatever the log level.
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # body_length counts the header block too; Content-Length is the body when known.
        size = response.content_length
        if size is None:
            size = response.body_length
        record(
            request.app.get(keys.METRICS) if isinstance(request, web.Request) else None,
            _route(request),
            request.method,
            request.raw_path,
            response.status,
            size=size,
            seconds=time,
            cache=response.headers.get("X-Nightproxy-Cache", "-"),
            remote=lambda: request.remote,
        )
