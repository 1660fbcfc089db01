"""Descriptors and connections: the open-files limit, the connection cap, accept errors.

Every client connection is a file descriptor, and so is every cached file being sent, every
upstream connection and every database. Run out of them and each of those fails in its own way,
so ``serve`` raises its soft open-files limit to the hard one, caps the connections it keeps
(``server.max_connections``: past it a new connection is answered ``503`` with
``Retry-After`` and closed, without reaching aiohttp), and logs asyncio's failed ``accept()``
calls once per interval rather than once per attempt.

The cap counts connections at the protocol level: ``ConnectionGate`` is the protocol factory
the listening sockets are served with, and wraps the protocol aiohttp's ``web.Server`` makes
(its public role: a protocol factory for ``loop.create_server``), counting ``connection_made``
and ``connection_lost``. aiohttp itself offers no public hook per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache

log = logging.getLogger(__name__)

#: Descriptors left for what is not a client connection (cached files being sent, upstream
#: connections, the databases, logs) when the cap is compared with the open-files limit.
RESERVED_DESCRIPTORS = 64
#: Seconds a client turned away is told to wait.
RETRY_AFTER = 1
#: How long a connection turned away may take to send its request before it is closed.
REFUSAL_TIMEOUT = 5.0
#: Failed ``accept()`` calls are logged at most once per this many seconds.
ACCEPT_LOG_INTERVAL = 10.0
_NR_OPEN = "/proc/sys/fs/nr_open"

_BODY = b"too many connections to this server; try again\n"
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    + f"Retry-After: {RETRY_AFTER}\r\nContent-Length: {len(_BODY)}\r\n".encode()
    + b"Connection: close\r\n\r\n"
    + _BODY
)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; the (soft, hard) limits in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # The soft limit cannot be infinite: the kernel's own ceiling is the most it takes.
        try:
            with open(_NR_OPEN) as fh:
                target = int(fh.read())
        except (OSError, ValueError):
            target = 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
        else:
            soft = target
    return soft, hard


def check_cap(max_connections: int, open_files: int) -> None:
    """Warn when the connection cap is more than the open-files limit allows."""
    room = open_files - RESERVED_DESCRIPTORS
    if max_connections > room:
        log.warning(
            "server.max_connections is %d but the open-files limit of %d leaves room for about "
            "%d: requests may be answered 503 before the cap is reached (raise the hard limit, "
            "e.g. LimitNOFILE= or ulimit -Hn)",
            max_connections,
            open_files,
            max(room, 0),
        )


class ConnectionGate:
    """The protocol factory that counts connections and turns away those past ``limit``."""

    def __init__(self, factory: Callable[[], asyncio.BaseProtocol], limit: int) -> None:
        self.factory = factory
        self.limit = limit
        #: Connections being served now, and connections turned away since the start.
        self.open = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        return _Counted(self)


class _Counted(asyncio.Protocol):
    """A connection: aiohttp's protocol while under the cap, a 503 past it.

    Decided in ``connection_made``, which asyncio calls only once the transport exists (a
    factory call whose transport failed is never counted)."""

    __slots__ = ("_gate", "_inner", "_timer", "_transport")

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._inner: Any = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate
        if gate.open >= gate.limit:
            gate.refused += 1
            self._transport = transport  # type: ignore[assignment]
            self._timer = asyncio.get_running_loop().call_later(REFUSAL_TIMEOUT, transport.close)
            return
        gate.open += 1
        self._transport = transport  # type: ignore[assignment]
        self._inner = gate.factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.data_received(data)
            return
        # Turned away: answer once the request has come, so that the client reads the 503
        # rather than a reset for the request bytes it was still sending.
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(REFUSAL)
            transport.close()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return bool(self._inner.eof_received())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        inner = self._inner
        if inner is not None:
            self._gate.open -= 1
            # The socket is still open here (asyncio closes it after this call): what the
            # client received, for the access line of a response it cut short.
            received = acked(self._transport)
            if received is not None:
                ACKED_AT_CLOSE[id(inner)] = received
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


#: By ``id`` of aiohttp's protocol (one per connection), the bytes its client had acknowledged
#: when the connection ended; read (and dropped) by the access line of a response cut short,
#: which is written just after. Bounded: most connections end with no such line.
ACKED_AT_CLOSE: LRUCache[int, int] = LRUCache(maxsize=4096)
#: ``struct tcp_info``'s ``tcpi_bytes_acked`` (Linux 4.1 and later): a u64 at this offset.
_BYTES_ACKED = 120


def acked(transport: asyncio.BaseTransport | None) -> int | None:
    """Bytes of the connection the peer has acknowledged, where the kernel says (Linux)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED + 8:
        return None
    return int(struct.unpack_from("Q", info, _BYTES_ACKED)[0])


class AcceptErrorLog:
    """An event-loop exception handler that logs failed ``accept()`` calls (out of
    descriptors or memory) once per ``ACCEPT_LOG_INTERVAL``, with how many there were, and
    passes everything else to the handler that was there before."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        self._next_log = 0.0
        self._missed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "accept()" not in str(context.get("message", "")):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        self._missed += 1
        if now < self._next_log:
            return
        error = context.get("exception")
        log.warning(
            "cannot accept connections: %s (%d times in the last %.0f s; connections wait in "
            "the kernel's queue meanwhile)",
            error,
            self._missed,
            ACCEPT_LOG_INTERVAL,
        )
        self._missed = 0
        self._next_log = now + ACCEPT_LOG_INTERVAL


def install_accept_error_log(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(RuntimeError):
        loop.set_exception_handler(AcceptErrorLog(loop))
