"""The access log: one line per request, plus request metrics, once the response is sent."""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import ClassVar, TypeAlias

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from nightproxy import logs
from nightproxy.server.connections import ACKED_AT_CLOSE, acked
from nightproxy.server.metrics import Metrics

log = logging.getLogger("nightproxy.access")

#: Responses whose sending stopped because the client went away, with the bytes of the
#: connection the client had acknowledged then (None where the kernel does not say).
_CUT_SHORT: weakref.WeakKeyDictionary[web.StreamResponse, int | None] = weakref.WeakKeyDictionary()


def mark_cut_short(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Note that ``response`` was not sent whole because the client went away: called where
    sending failed, while the connection's socket is still there to say how far it got."""
    _CUT_SHORT[response] = acked(request.transport)


def _route(request: web.BaseRequest) -> str:
    if not isinstance(request, web.Request):
        return "unmatched"
    try:
        match_info: web.UrlMappingMatchInfo | None = request.match_info
    except AssertionError:
        # A request aiohttp could not parse (answered 400 by aiohttp itself) never reaches
        # the router, and then ``match_info`` asserts that it has one.
        return "unmatched"
    if match_info is not None:
        resource = match_info.route.resource
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
    """Runs once the response is fully sent, so sizes and durations are the real ones.

    aiohttp makes one per connection from the class alone, so an application's metrics come
    with a subclass (``access_logger_for``) rather than from the request, which has no
    application when aiohttp rejected it before routing.
    """

    metrics: ClassVar[Metrics | None] = None

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        #: Bytes the connection carried for the responses before this one.
        self._carried = 0

    @property
    def enabled(self) -> bool:
        # Metrics are recorded whatever the log level.
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if response.prepared and (response.body_length == 0 or response in _CUT_SHORT):
            # Prepared but never finished (aiohttp records the length at the end), or ended
            # early by a handler: the client went away, and Content-Length is what was
            # announced, not what was sent.
            size: int | None = cut_short(request, response, self._carried)
        else:
            # body_length counts the header block too; Content-Length is the body when known.
            size = response.content_length
            if size is None:
                size = response.body_length
            self._carried += carried(request, response)
        record(
            self.metrics,
            _route(request),
            request.method,
            request.raw_path,
            response.status,
            size=size,
            seconds=time,
            cache=response.headers.get("X-Nightproxy-Cache", "-"),
            remote=lambda: request.remote,
        )


def carried(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The bytes a finished response put on its connection, headers included.

    What went through aiohttp's writer is counted by it (``body_length``); a file sent with
    ``sendfile`` is not, and adds its length."""
    size = response.body_length
    if (
        isinstance(response, web.FileResponse)
        and request.method != "HEAD"
        and response.status in {200, 206}
    ):
        size += response.content_length or 0
    return size


def cut_short(
    request: web.BaseRequest, response: web.StreamResponse, carried_before: int
) -> int | None:
    """The body bytes of a response cut short that the client received, and one INFO line.

    The kernel knows how many bytes of the connection the client acknowledged (TCP_INFO on
    Linux); less what the earlier responses on the connection carried and this one's header
    block, that is the body it got. Elsewhere, what aiohttp's writer took (a lower bound when
    a file was being sent).
    """
    head = _head_size(response)
    # Now if the connection is still there, else when it ended, else where the handler
    # stopped sending.
    received = acked(request.transport)
    at_close = ACKED_AT_CLOSE.pop(id(request.protocol), None)
    if received is None:
        received = at_close if at_close is not None else _CUT_SHORT.get(response)
    taken = request.writer.output_size if received is None else received - carried_before
    body = taken - head
    announced = response.content_length
    sent = max(0, body if announced is None else min(body, announced))
    log.info(
        "%s %s: the client went away after %d of %s bytes",
        request.method,
        request.raw_path,
        sent,
        "?" if announced is None else announced,
    )
    return sent


def _head_size(response: web.StreamResponse) -> int:
    """The size of the status line and headers as aiohttp writes them."""
    lines = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in response.headers.items()]
    return len("".join(lines).encode("utf-8")) + 2


def access_logger_for(metrics: Metrics) -> type[AccessLogger]:
    """An access logger class that records into ``metrics``."""

    class Bound(AccessLogger):
        pass

    Bound.metrics = metrics
    return Bound


_ExcInfo: TypeAlias = (
    bool
    | BaseException
    | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None]
    | None
)


def _client_fault(error: BaseException | None) -> int | None:
    """The 4xx status aiohttp answered ``error`` with, if it was the client's request at fault.

    aiohttp's parser errors carry that status as ``code``; their classes are not part of its
    public API, so they are known by that attribute.
    """
    code = getattr(error, "code", None)
    return code if isinstance(code, int) and 400 <= code < 500 else None


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's connection logger, without a traceback for a request the client got wrong.

    aiohttp logs each request its parser rejects (a bad request line, an oversized header) as
    an error with a traceback, so anyone who can reach the port could fill the log with them.
    Such a request has its access line and its count under "unmatched" already; the parser's
    verdict goes to debug as one line, by class name only (its text quotes the request, which
    may carry a credential). A client that went away mid-response is the access line's to
    report, in one line. The server's own errors keep their traceback.
    """

    def exception(
        self,
        msg: object,
        *args: object,
        exc_info: _ExcInfo = True,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        code = _client_fault(error)
        if code is not None:
            self.logger.debug(f"{msg}: %s, answered %d", *args, type(error).__name__, code)
            return
        if isinstance(error, ConnectionError):
            # The client went away mid-response: the access line says so, in one line.
            self.logger.debug(f"{msg}: %s", *args, type(error).__name__)
            return
        super().exception(
            msg,
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=stacklevel,
            extra=extra,
            **kwargs,
        )
