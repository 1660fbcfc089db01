"""Running the app: aiohttp's runner and sites, with connections that answer warm pages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import cast

import aiohttp
from aiohttp import web

from nightproxy.server.fastpath import CHECKED, PageServer, supported

log = logging.getLogger(__name__)


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer warm pages themselves, where supported."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if not supported():
            log.info(
                "aiohttp %s: warm pages take aiohttp's ordinary request path "
                "(the connection-level fast path is checked against aiohttp %s to %s)",
                aiohttp.__version__,
                *CHECKED,
            )
            return server
        # The same server with the same arguments; only the protocol it makes per connection
        # differs. aiohttp builds it in a private method, so it is re-classed, not rebuilt.
        server.__class__ = PageServer
        cast(PageServer, server).fast_app = self.app
        return server


class ListenError(Exception):
    """The address cannot be listened on (in use, not this host's, not permitted)."""


#: How long an idle client connection is kept open (``web.run_app``'s default).
KEEPALIVE_TIMEOUT = 75.0


async def _serve(app: web.Application, host: str, port: int, shutdown_timeout: float) -> None:
    runner = ProxyRunner(
        app,
        handle_signals=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    await runner.setup()
    # No reload to do on SIGHUP (restart to apply a new config), and dying of it would cut
    # downloads off and drop the last access lines: say so and carry on.
    with contextlib.suppress(NotImplementedError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP,
            lambda: log.warning("SIGHUP ignored: restart nightproxy to apply a new config"),
        )
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        # Until SIGINT or SIGTERM, whose handlers (``handle_signals``) raise GracefulExit.
        await asyncio.Event().wait()
    finally:
        # Stop accepting, let responses finish for ``shutdown_timeout``, run cleanup contexts.
        await runner.cleanup()


def run(app: web.Application, host: str, port: int, *, shutdown_timeout: float) -> None:
    """``web.run_app`` for this app: the same signal handling and shutdown sequence.

    An error while starting (the port is taken) propagates once everything is closed.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, host, port, shutdown_timeout))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            # A task that already ended (raised while starting) must not be awaited again:
            # that would re-raise its error from here, cutting the cleanup below short.
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
