"""Running the app: aiohttp's runner and sites, with connections that answer warm pages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

import aiohttp
from aiohttp import web

from nightproxy.server.fastpath import SUPPORTED, PageServer, supported

log = logging.getLogger(__name__)


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer warm pages themselves, where supported."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if not supported():
            log.info(
                "aiohttp %s: warm pages take aiohttp's ordinary request path "
                "(the connection-level fast path is checked against aiohttp %s)",
                aiohttp.__version__,
                ", ".join(SUPPORTED),
            )
            return server
        # The same server with the same arguments; only the protocol it makes per connection
        # differs. aiohttp builds it in a private method, so it is re-classed, not rebuilt.
        server.__class__ = PageServer
        cast(PageServer, server).fast_app = self.app
        return server


async def _serve(app: web.Application, host: str, port: int, shutdown_timeout: float) -> None:
    runner = ProxyRunner(
        app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        # Until SIGINT or SIGTERM, whose handlers (``handle_signals``) raise GracefulExit.
        await asyncio.Event().wait()
    finally:
        # Stop accepting, let responses finish for ``shutdown_timeout``, run cleanup contexts.
        await runner.cleanup()


def run(app: web.Application, host: str, port: int, *, shutdown_timeout: float) -> None:
    """``web.run_app`` for this app: the same signal handling and shutdown sequence."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(_serve(app, host, port, shutdown_timeout))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main)
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
