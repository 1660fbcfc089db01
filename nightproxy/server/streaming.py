"""Sending a file to a client: a pinned cached blob, or a download as its bytes arrive."""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from nightproxy.cache.fill import Fill, FillError, Part, read_span
from nightproxy.cache.service import ServedBlob
from nightproxy.server.access import mark_cut_short
from nightproxy.server.errors import RETRY_AFTER

FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
OCTET = "application/octet-stream"


class BlobResponse(web.FileResponse):
    """sendfile of a cached blob, pinned (``ServedBlob``) from the moment the handler chose it
    until it has been sent: the file is opened only in ``prepare``, after the handler returned,
    and an eviction in between would turn a listed file into a 404."""

    def __init__(self, blob: ServedBlob, content_type: str) -> None:
        super().__init__(
            blob.path,
            chunk_size=256 * 1024,
            headers={
                "Content-Type": content_type,
                "Cache-Control": FILE_CACHE_CONTROL,
                "X-Nightproxy-Cache": "hit",
            },
        )
        self._blob = blob

    def set_status(self, status: int, reason: str | None = None) -> None:
        # aiohttp answers any failure to open the file as 404. The blob is pinned, so it is
        # there: the process is out of descriptors. That is "try again", never "no such file".
        if status == 404 and os.fstat(self._blob.fd).st_nlink:
            status = 503
            self.headers["Retry-After"] = RETRY_AFTER
        super().set_status(status, reason)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await super().prepare(request)
        except ConnectionError:
            mark_cut_short(request, self)
            raise
        finally:
            self._blob.release()


def wanted_range(request: web.Request, size: int | None) -> tuple[int, int] | None:
    """The one byte range ``[start, stop)`` asked for and servable from a download, or None
    for the whole file. Raises 416 for a range wholly past the end."""
    if size is None or "Range" not in request.headers or "If-Range" in request.headers:
        # Without a validator to compare, If-Range means "the whole file" (RFC 9110 13.1.5).
        return None
    try:
        asked = request.http_range
    except ValueError:
        return None  # several ranges, or a malformed one: the whole file is a valid answer
    start, stop = asked.start, asked.stop
    if start is None:
        return None
    if start < 0:  # a suffix: the last -start bytes
        start, stop = max(0, size + start), size
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, stop


async def stream_fill(
    request: web.Request, fill: Fill, wanted: tuple[int, int] | None
) -> web.StreamResponse:
    """Tee a download to this client as the bytes arrive (``wanted``: one range of it).

    Raises the ``FillError`` of a download that fails before the first byte could be sent
    (the caller may answer otherwise); after that, a failure cuts the connection.
    """
    reader = await fill.open_reader()
    try:
        start, stop = wanted if wanted is not None else (0, None)
        parts = fill.spans(start, stop)
        try:
            # Headers wait for the first bytes, so that a download that fails before any
            # arrived can still be answered with an error status.
            first: Part | None = await anext(parts)
        except StopAsyncIteration:
            first = None
        response = web.StreamResponse(
            status=206 if wanted is not None else 200,
            headers={
                "Content-Type": OCTET,
                "Cache-Control": FILE_CACHE_CONTROL,
                "X-Nightproxy-Cache": "miss",
            },
        )
        if wanted is not None:
            response.headers["Content-Range"] = f"bytes {start}-{wanted[1] - 1}/{fill.size}"
            response.content_length = wanted[1] - start
        elif fill.size is not None:
            response.content_length = fill.size
        await response.prepare(request)
        sender = _Sender(request, response, reader, native=fill.size is not None)
        try:
            if first is not None:
                await sender.send(first)
                async for part in parts:
                    await sender.send(part)
        except FillError:
            # Headers are gone: the only honest signal left is to cut the connection, so the
            # client sees a short read rather than a complete-looking, unverified body.
            if request.transport is not None:
                request.transport.abort()
            return response
        except ConnectionError:
            # The client went away: nothing more to send. Returned rather than raised, so
            # that aiohttp logs the request (cut short) instead of an error with a traceback.
            mark_cut_short(request, response)
            return response
        finally:
            await parts.aclose()
    finally:
        if reader is not None:
            reader.close()
    await response.write_eof()
    return response


class _Sender:
    """Parts to one client: bytes as they are; a span of the file straight from the page
    cache to the socket (no copies through Python, no thread hop per chunk) as
    ``web.FileResponse`` does, or, where that cannot be (TLS, no length, a file system without
    sendfile), read and written."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        reader: BinaryIO | None,
        *,
        native: bool,
    ) -> None:
        self.request = request
        self.response = response
        self.reader = reader
        self.native = native

    async def send(self, part: Part) -> None:
        if isinstance(part, bytes):
            await self.response.write(part)
            return
        assert self.reader is not None
        offset, length = part
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        if self.native:
            try:
                # No asyncio fallback: it seeks, and the reader shares its file offset with
                # the writer and every other reader of this download.
                sent = await asyncio.get_running_loop().sendfile(
                    transport, self.reader, offset, length, fallback=False
                )
            except (NotImplementedError, RuntimeError):
                self.native = False
            else:
                if sent != length:
                    raise FillError(f"cache file ended {length - sent} bytes short")
                return
        async for data in read_span(self.reader, offset, length):
            await self.response.write(data)
