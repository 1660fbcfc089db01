"""A real HTTP proxy in front of a real S3 server that fails on demand.

Requests are forwarded unchanged (``Host`` included, so SigV4 signatures stay valid) to the
target, unless a fault is armed: answer the next requests with an S3 error (``SlowDown``, a
500), hold them for a while (a slow store, or only requests of one kind), pace bodies, or cut
an object's body halfway.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from ._base import FakeServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}


@dataclass
class Fault:
    status: int
    code: str
    remaining: int


class FaultyStoreProxy(FakeServer):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self.fault: Fault | None = None
        self.delay = 0.0
        self.cut_bodies = False
        #: (method, path fragment) -> seconds: hold only the matching requests.
        self.slow: dict[tuple[str, str], float] = {}
        #: Seconds between two 64 KiB pieces of a GET's body.
        self.pace = 0.0
        #: (pieces, seconds): a GET's body stops this long after its first pieces.
        self.stall: tuple[int, float] | None = None
        #: (method, path fragment) -> count: forward the next matching requests, then answer
        #: 503 as if the store's answer had been lost (the write happened).
        self.lose_answers: dict[tuple[str, str], int] = {}
        self.forwarded = 0
        self.failed = 0
        self._session: aiohttp.ClientSession | None = None

    def fail_next(self, count: int, *, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next ``count`` requests with ``status`` and an S3 ``<Error>`` body."""
        self.fault = Fault(status, code, count)

    def fail_always(self, *, status: int = 503, code: str = "SlowDown") -> None:
        self.fault = Fault(status, code, 1 << 60)

    def heal(self) -> None:
        self.fault = None
        self.delay = 0.0
        self.cut_bodies = False
        self.slow = {}
        self.pace = 0.0
        self.stall = None
        self.lose_answers = {}

    def make_app(self) -> web.Application:
        # Store bodies (multipart parts) pass through whole: no 1 MiB cap on what it reads.
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.cleanup_ctx.append(self._client)
        return app

    async def _client(self, app: web.Application):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            yield

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        for (method, fragment), seconds in self.slow.items():
            if request.method == method and fragment in request.path:
                await asyncio.sleep(seconds)
        fault = self.fault
        if fault is not None and fault.remaining > 0:
            fault.remaining -= 1
            self.failed += 1
            await request.read()
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                f"<Message>injected</Message></Error>"
            )
            return web.Response(status=fault.status, text=body, content_type="application/xml")
        assert self._session is not None
        self.forwarded += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            # The raw path: a signature covers the path and query exactly as sent.
            URL(f"{self.target}{request.raw_path}", encoded=True),
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            for (method, fragment), count in self.lose_answers.items():
                if count and request.method == method and fragment in request.path:
                    self.lose_answers[method, fragment] = count - 1
                    await upstream.read()
                    self.failed += 1
                    return web.Response(status=503, text="answer lost by the test")
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                    response.headers[key] = value
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            sent = 0
            stalled = False
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                if self.cut_bodies and request.method == "GET" and sent > 0:
                    # Headers promised more: the client sees a body cut short.
                    raise ConnectionResetError("cut by the test")
                await response.write(chunk)
                sent += len(chunk)
                if self.pace and request.method == "GET":
                    await asyncio.sleep(self.pace)
                if self.stall is not None and request.method == "GET" and not stalled:
                    pieces, seconds = self.stall
                    if sent >= pieces * 64 * 1024:
                        stalled = True
                        await asyncio.sleep(seconds)
            await response.write_eof()
            return response
