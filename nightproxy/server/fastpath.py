"""Warm project pages answered by the connection itself, before aiohttp builds a request.

A warm page is a dictionary lookup and one write, yet aiohttp's request path around it (a task,
a ``Request``, a ``Response``, header serialisation, the access-log call) costs three to four
times the rest of the work on this machine, and pip and uv ask for one page per candidate
project in every job. So the connection protocol answers the one request shape that is certain
to be a cache hit, a plain keep-alive ``GET /simple/<name>/`` of a page that is fresh and
already rendered in the asked representation, with the same bytes and headers the handler
would send; everything else (any other route, a query, a body, a conditional request, HTTP/1.0,
``Connection: close``, a page not yet rendered or stale, a client that is not reading) goes to
aiohttp unchanged, in order.

It only ever takes requests from the head of aiohttp's queue while aiohttp's connection loop is
idle, so responses stay in request order on pipelined connections, and it leaves parsing, error
answers, upgrades, flow control and timeouts to aiohttp. It relies on ``RequestHandler``'s
internals, so it is switched on only for the aiohttp releases it was checked against
(``CHECKED``); on any other every request takes the ordinary path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from email.utils import formatdate
from functools import lru_cache
from typing import NamedTuple, cast

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler
from packaging.utils import NormalizedName
from packaging.version import InvalidVersion, Version

from nightproxy.index.prepared import Prepared
from nightproxy.index.service import ProjectView
from nightproxy.server import access, keys
from nightproxy.server.pages import (
    PROJECT_PAGE,
    SEPARATE_WRITE,
    accepts_gzip,
    canonical,
    max_age,
    static_headers,
)
from nightproxy.simple_api.negotiate import Format, negotiate

log = logging.getLogger(__name__)

#: The aiohttp releases whose ``RequestHandler`` internals this module was checked against
#: (its tests pass on both ends; the releases between have one of their two queue designs).
#: 3.13 keeps its parser elsewhere; a later release is off until checked and added here.
CHECKED = (Version("3.14.0"), Version("3.14.5"))
_PREFIX = "/simple/"
#: Most warm pages answered per read; the rest of a long pipeline waits for aiohttp's loop.
MAX_PER_READ = 32


def supported(version: str = aiohttp.__version__) -> bool:
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return CHECKED[0] <= parsed <= CHECKED[1]


#: Longer request targets or headers than any client sends take the ordinary path, so that the
#: memo below stays small whatever clients send (1,024 entries of at most 640 characters).
_MEMO_LIMITS = (256, 256, 128)


@lru_cache(maxsize=1024)
def _representation(
    path: str, accept: str | None, accept_encoding: str
) -> tuple[NormalizedName, Format, bool] | None:
    """(project, format, gzip) that a request for ``path`` with these headers asks for, if it
    is a project page in its canonical spelling; None sends the request the ordinary way (a
    query, an escape, another segment or another spelling gets its redirect or error there)."""
    if not (path.startswith(_PREFIX) and path.endswith("/")):
        return None
    name = path[len(_PREFIX) : -1]
    if not name.isascii() or "/" in name or "?" in name or "%" in name or "#" in name:
        return None
    project = canonical(name)
    if not name or project != name:
        return None
    fmt = negotiate(accept, None)
    if fmt is None:
        return None
    return project, fmt, accepts_gzip(accept_encoding)


#: Per prepared representation, the reply's status line and headers as last sent: (the
#: second, the max-age, the bytes), reused within that second.
_WIRE: weakref.WeakKeyDictionary[Prepared, tuple[int, str, bytes]] = weakref.WeakKeyDictionary()


def _head(
    rendered: Prepared, view: ProjectView, fmt: Format, gzipped: bool, now: float
) -> bytes | None:
    """The status line and headers of a reply, built once a second per representation; None
    if a value could split a header (aiohttp would refuse it too, on the ordinary path)."""
    second = int(time.time())
    freshness = max_age(view, now)
    cached = _WIRE.get(rendered)
    if cached is not None and cached[0] == second and cached[1] == freshness:
        return cached[2]
    lines = ["HTTP/1.1 200 OK\r\n"]
    for name, value in static_headers(view, rendered, fmt, gzipped).items():
        if "\r" in value or "\n" in value:
            return None
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Cache-Control: {freshness}\r\nContent-Length: {len(rendered.body)}\r\n")
    lines.append(f"Date: {formatdate(second, usegmt=True)}\r\n")
    lines.append(f"Server: {SERVER_SOFTWARE}\r\n\r\n")
    head = "".join(lines).encode("latin-1")
    _WIRE[rendered] = (second, freshness, head)
    return head


class _Page(NamedTuple):
    path: str
    head: bytes
    body: bytes


class PageProtocol(RequestHandler):
    """aiohttp's connection protocol, answering warm project pages without a request object."""

    __slots__ = ("_loop_started",)

    async def start(self) -> None:
        self._loop_started = True
        await super().start()

    def close(self) -> None:
        # Graceful shutdown calls this on every connection. aiohttp's close() ends an idle
        # connection by cancelling its wait for a request, but before Python 3.12 a connection
        # accepted just before the signal may not have started its loop yet (its task is not
        # started eagerly): it would then wait for a request whose bytes close() makes it
        # drop, and keep the client hanging until the shutdown timeout. A connection whose
        # loop never ran and that holds no request is closed at once; any other is left to
        # aiohttp, which answers what it has taken.
        if not getattr(self, "_loop_started", False) and not self._messages:
            self.force_close()
        else:
            super().close()

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages:
            # aiohttp's loop is busy with a request (or about to be): it owns the connection.
            super().data_received(data)
            return
        # aiohttp parses and queues as usual, but its loop is woken only for what is left once
        # the warm pages at the head of the queue are answered. Without a waiter, a nested
        # call (aiohttp re-reading a paused parser's backlog) only parses and queues, too.
        self._waiter = None
        try:
            super().data_received(data)
            self._answer_queued()
        finally:
            self._waiter = waiter
        if self._messages and not waiter.done():
            waiter.set_result(None)

    def _answer_queued(self) -> None:
        app = self._fast_app()
        if app is None:
            return
        messages = self._messages
        answered = 0
        # A bound per read, so one large pipelined read cannot hold the event loop.
        while messages and answered < MAX_PER_READ and self._writable():
            message, payload = messages[0]
            started = self._loop.time()
            try:
                page = self._warm_page(app, message, payload)
            except Exception:
                # Whatever went wrong, aiohttp's path answers (or fails) the request properly.
                log.exception(
                    "fast path: looking up %s failed; it takes the ordinary path",
                    getattr(message, "path", "?"),
                )
                return
            if page is None:
                return
            messages.popleft()
            self._message_consumed()
            answered += 1
            self._send(page.head, page.body)
            finished = self._loop.time()
            try:
                self._sent(app, page.path, len(page.body), started, finished)
            except Exception:
                log.exception("fast path: accounting for %s failed", page.path)

    def _message_consumed(self) -> None:
        # As aiohttp's loop does when it takes a message. These came with the bounded
        # pipelining queue of a later 3.14 release; 3.14.0 has no queue bound to release.
        parser = self._parser
        consumed = getattr(parser, "message_consumed", None)
        if consumed is not None:
            consumed()
        if getattr(self, "_buffer_paused", False) and len(self._messages) <= getattr(
            self, "_msg_queue_resume_size", 0
        ):
            self._resume_reading_if_drained()

    def _writable(self) -> bool:
        # Not while the client is not reading (aiohttp's path waits for the buffer to drain).
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and not self._paused
            and not self._close
            and not self._force_close
        )

    def _fast_app(self) -> web.Application | None:
        manager = self._manager
        return getattr(manager, "fast_app", None)

    def _warm_page(self, app: web.Application, message: object, payload: object) -> _Page | None:
        """The reply if ``message`` is a plain GET of a warm page; None: not for us."""
        if (
            type(message) is not RawRequestMessage
            or payload is not EMPTY_PAYLOAD
            or message.method != "GET"
            or message.version != HttpVersion11
            or message.should_close
            or message.upgrade
            or message.chunked
        ):
            return None
        headers = message.headers
        if (
            "If-None-Match" in headers
            or "If-Match" in headers
            or "Expect" in headers
            or "Upgrade" in headers
        ):
            return None
        path = message.path
        accept = headers.get("Accept")
        accept_encoding = headers.get("Accept-Encoding", "")
        if (
            len(path) > _MEMO_LIMITS[0]
            or (accept is not None and len(accept) > _MEMO_LIMITS[1])
            or len(accept_encoding) > _MEMO_LIMITS[2]
        ):
            return None
        wanted = _representation(path, accept, accept_encoding)
        if wanted is None:
            return None
        project, fmt, gzipped = wanted
        index = app[keys.INDEX]
        view = index.fresh_view(project)
        if view is None or not (view.files or view.inputs):
            return None
        rendered = view.prepared.get(fmt, gzipped)
        if rendered is None:
            return None
        head = _head(rendered, view, fmt, gzipped, index.clock())
        return None if head is None else _Page(path, head, rendered.body)

    def _send(self, head: bytes, body: bytes) -> None:
        transport = cast(asyncio.Transport, self.transport)
        if len(body) <= SEPARATE_WRITE:
            transport.write(head + body)
            return
        # A large body: one gathered write instead of copying it behind the header block (the
        # transport joins a ``writelines`` into a new buffer before Python 3.12.9), done as the
        # transport itself would, straight to its socket, only while nothing is queued ahead.
        sent = 0
        sock = transport.get_extra_info("socket")
        if (
            sock is not None
            and transport.get_extra_info("ssl_object") is None
            and transport.get_write_buffer_size() == 0
        ):
            try:
                sent = os.writev(sock.fileno(), (head, body))
            except OSError:
                # Full (EAGAIN), interrupted or gone: the transport sends the rest, or finds out
                # on its own write that the connection is gone.
                sent = 0
        if sent < len(head):
            transport.write(head[sent:])
            transport.write(body)
        elif sent < len(head) + len(body):
            transport.write(memoryview(body)[sent - len(head) :])

    def _sent(
        self, app: web.Application, path: str, size: int, started: float, finished: float
    ) -> None:
        manager = self._manager
        if manager is not None:
            manager.requests_count += 1
        # The keep-alive timer restarts after a response, as aiohttp's loop does.
        close_time = finished + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
        metrics = app[keys.METRICS]
        metrics.fast_path.pages += 1
        access.record(
            metrics,
            PROJECT_PAGE,
            "GET",
            path,
            200,
            size=size,
            seconds=finished - started,
            cache="-",
            remote=self._remote,
        )

    def _remote(self) -> str | None:
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, (list, tuple)) and peer:
            return str(peer[0])
        return None


class PageServer(web.Server):
    """aiohttp's server, making ``PageProtocol`` connections for ``fast_app``."""

    fast_app: web.Application | None = None

    def __call__(self) -> RequestHandler:
        if self.fast_app is None:
            return super().__call__()
        return PageProtocol(self, loop=self._loop, **self._kwargs)
