"""Running the app: listening sockets, aiohttp's ``AppRunner`` and sites, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
from collections.abc import Callable, Sequence

from aiohttp import web

from nightproxy.server import keys
from nightproxy.server.connections import ConnectionGate, install_accept_error_log
from nightproxy.server.tls import TlsCertificates

log = logging.getLogger(__name__)


class ListenError(Exception):
    """The address cannot be listened on (in use, not this host's, not permitted)."""


#: How long an idle client connection is kept open (``web.run_app``'s default).
KEEPALIVE_TIMEOUT = 75.0
#: What a worker tells the parent once it accepts connections: (its index, its pid).
READY = struct.Struct("!II")
#: Connections the kernel queues before they are accepted (aiohttp's default).
BACKLOG = 128
#: Event-loop turns between the last accept and closing the listening sockets, and again
#: before idle connections are closed. Accepting a connection takes asyncio several turns
#: (an accept task makes the transport, which calls ``connection_made``, which creates
#: aiohttp's request-loop task). Python 3.11 has two races in them: a server closed while an
#: accept task is pending drops that connection silently (the transport fails to attach to the
#: closed server; the socket stays open, unanswered, until garbage collection), and a
#: connection whose request loop has not begun waiting when aiohttp closes idle connections
#: (its task is not started eagerly before 3.12) waits for a request whose bytes the closed
#: connection drops, keeping the client until the shutdown timeout.
SETTLE_TURNS = 8


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host``:``port``, bound as ``loop.create_server`` binds them.

    Bound before the server starts, so the port is known to be ours before anything says it
    is served, and so that worker processes can share them.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # As asyncio does: an IPv6 socket does not take the IPv4 port too, so that
                # the IPv4 address of the same name can be bound beside it.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets


def bound_port(sockets: Sequence[socket.socket]) -> int:
    """The port the sockets listen on (the one the kernel chose, for port 0)."""
    return int(sockets[0].getsockname()[1])


async def serve(
    app: web.Application,
    sockets: Sequence[socket.socket],
    *,
    shutdown_timeout: float,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    label: str = "",
) -> None:
    """Serve ``app`` on ``sockets`` until SIGINT or SIGTERM (or ``stop`` is set), then shut
    down gracefully.

    Shutdown stops accepting, lets responses in flight finish for ``shutdown_timeout`` and
    runs the app's cleanup contexts (which let downloads fill the cache). ``on_ready`` is
    called once the app accepts connections; ``label`` names the process in its log lines.
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop_on, stop, signum, label)
    tls = app.get(keys.TLS)
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, tls, label)
    install_accept_error_log(loop)
    servers: list[asyncio.Server] = []
    try:
        await runner.setup()
        try:
            assert runner.server is not None
            # aiohttp's server is the protocol factory of the listening sockets, as its
            # low-level API has it, behind the gate that counts and caps connections.
            gate = ConnectionGate(runner.server, app[keys.CONFIG].server.max_connections)
            app[keys.METRICS].watch_connections(gate)
            for sock in sockets:
                server = await loop.create_server(
                    gate,
                    sock=sock,
                    backlog=BACKLOG,
                    ssl=tls.server_context if tls is not None else None,
                )
                servers.append(server)
            if on_ready is not None:
                on_ready()
            await stop.wait()
        finally:
            await stop_accepting(servers, sockets)
            await runner.cleanup()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def _on_sighup(tls: TlsCertificates | None, label: str) -> None:
    # The certificate is what may be reloaded. The config is not (restart to apply it), and
    # dying of SIGHUP would cut downloads off and drop the last access lines.
    if tls is None:
        log.warning("%sSIGHUP ignored: restart nightproxy to apply a new config", label)
        return
    log.info("%sSIGHUP: reloading the TLS certificate (restart to apply a new config)", label)
    tls.request_reload()


def _stop_on(stop: asyncio.Event, signum: int, label: str) -> None:
    name = label + signal.Signals(signum).name
    if stop.is_set():
        log.info("%s: already stopping, waiting for responses in flight", name)
        return
    log.info("%s: stopping; no new connections, finishing the responses in flight", name)
    stop.set()


async def stop_accepting(
    servers: Sequence[asyncio.Server], sockets: Sequence[socket.socket]
) -> None:
    """Stop accepting, let every accepted connection reach its request loop, then close the
    listening sockets (connections still queued in the kernel are refused)."""
    loop = asyncio.get_running_loop()
    for sock in sockets:
        if sock.fileno() >= 0:
            loop.remove_reader(sock.fileno())
    await _settle()
    for server in servers:
        server.close()
    await _settle()


async def _settle() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


def run(app: web.Application, sockets: Sequence[socket.socket], *, shutdown_timeout: float) -> None:
    """``web.run_app`` for this app on sockets already bound: the same shutdown sequence."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(app, sockets, shutdown_timeout=shutdown_timeout))
    log.info("stopped")


def run_worker(
    app: web.Application,
    sockets: Sequence[socket.socket],
    *,
    shutdown_timeout: float,
    index: int,
    ready_fd: int,
    alive_fd: int,
) -> None:
    """``run`` in a worker process: it tells the parent once it accepts connections (on
    ``ready_fd``), and stops when the parent is gone (``alive_fd`` reaches its end)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def parent_gone() -> None:
            loop.remove_reader(alive_fd)
            log.warning("worker %d: the parent process is gone; stopping", index)
            stop.set()

        def ready() -> None:
            os.write(ready_fd, READY.pack(index, os.getpid()))
            os.close(ready_fd)

        loop.add_reader(alive_fd, parent_gone)
        await serve(
            app,
            sockets,
            shutdown_timeout=shutdown_timeout,
            stop=stop,
            on_ready=ready,
            label=f"worker {index}: ",
        )

    asyncio.run(main())
