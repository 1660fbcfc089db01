"""A real HTTP forward proxy on a loopback socket, for tests of outbound proxies and of a
store that goes away at a chosen point of a conversation."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL


@dataclass
class ForwardProxy:
    """An HTTP forward proxy that may demand Basic ``Proxy-Authorization``."""

    credentials: tuple[str, str] | None = None
    seen: list[str] = field(default_factory=list)
    base_url: str = ""
    #: Called with each request's method and target once its answer is back (a test's
    #: hook to make something happen at that exact point, such as stopping the origin).
    after: Callable[[str, str], None] | None = None

    def make_app(self) -> web.Application:
        # Bodies are forwarded whole: an object store's PUTs of a few MB pass through it.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    def bind(self, server: Any) -> None:
        self.base_url = str(server.make_url("/"))

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.credentials is not None:
            user, password = self.credentials
            wanted = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("Proxy-Authorization") != wanted:
                return web.Response(status=407, headers={"Proxy-Authenticate": "Basic"})
        # A proxied request names the origin in its Host header and its target in the path,
        # sent on as it came: a signed request's query must keep its encoding byte for byte.
        target = f"http://{request.headers['Host']}{request.raw_path}"
        if request.raw_path.startswith("http://"):
            target = request.raw_path
        self.seen.append(target)
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in {"host", "proxy-authorization", "proxy-connection"}
        }
        try:
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.request(
                    request.method, URL(target, encoded=True), headers=headers, data=body or None
                ) as upstream,
            ):
                answer = await upstream.read()
                keep = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() not in {"transfer-encoding", "content-length", "connection"}
                }
        except aiohttp.ClientError:
            # The origin is unreachable: a real proxy answers 502.
            return web.Response(status=502, text="origin unreachable")
        if self.after is not None:
            self.after(request.method, target)
        return web.Response(status=upstream.status, body=answer, headers=keep)
