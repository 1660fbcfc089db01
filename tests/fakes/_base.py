"""Shared plumbing for the fake upstreams: request log, binding, file streaming."""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

__all__ = [
    "FakeServer",
    "RequestRecord",
    "SlowControl",
    "extract_metadata",
    "file_sha256",
    "iso_z",
    "stream_file",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it."""

    method: str
    path_qs: str
    headers: dict[str, str]
    host: str

    @property
    def path(self) -> str:
        return self.path_qs.split("?", 1)[0]


class FakeServer:
    """Base class: request log middleware and ``bind``/``base_url``."""

    def __init__(self) -> None:
        self.requests: list[RequestRecord] = []
        self.base_url: str = ""
        self.server: TestServer | None = None

    # -- lifecycle -------------------------------------------------------
    def bind(self, server: TestServer) -> None:
        """Record the running server; ``base_url`` ends with ``/``."""
        self.server = server
        self.base_url = str(server.make_url("/"))

    @property
    def origin(self) -> str:
        """``base_url`` without the trailing slash (``http://127.0.0.1:PORT``)."""
        return self.base_url.rstrip("/")

    def url(self, path: str) -> str:
        return self.origin + "/" + path.lstrip("/")

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_middleware])
        self._setup_routes(app)
        return app

    def _setup_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append(
            RequestRecord(
                method=request.method,
                path_qs=request.raw_path,
                headers=dict(request.headers),
                host=request.host,
            )
        )
        return await handler(request)

    # -- log helpers -----------------------------------------------------
    def count(self, method: str | None = None, path_contains: str = "") -> int:
        """Number of logged requests matching method (any if None) and substring."""
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and path_contains in r.path_qs
        )

    def clear_log(self) -> None:
        self.requests.clear()


@dataclass
class SlowControl:
    """Controls slow streaming: chunk size, delay, and an optional hold point.

    With ``hold=True`` the stream sends its first chunk and then waits for
    ``release`` (an ``asyncio.Event``) before sending the rest.
    """

    chunk_size: int = 1024
    delay: float = 0.01
    hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)


def iso_z(dt: datetime) -> str:
    """``2025-01-03T07:12:34.123456Z`` (UTC, microseconds)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def extract_metadata(path: Path) -> bytes | None:
    """METADATA of a wheel / PKG-INFO of an sdist, or None if there is none."""
    try:
        if path.name.endswith(".whl"):
            with zipfile.ZipFile(path) as zf:
                for entry in zf.namelist():
                    parts = entry.split("/")
                    if (
                        len(parts) == 2
                        and parts[0].endswith(".dist-info")
                        and parts[1] == "METADATA"
                    ):
                        return zf.read(entry)
        elif path.name.endswith(".tar.gz"):
            with tarfile.open(path, "r:gz") as tf:
                for member in tf.getmembers():
                    if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                        fh = tf.extractfile(member)
                        if fh is not None:
                            return fh.read()
    except (OSError, zipfile.BadZipFile, tarfile.TarError):
        return None
    return None


def _abort_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def stream_file(
    request: web.Request,
    path: Path,
    *,
    headers: dict[str, str] | None = None,
    status: int = 200,
    start: int = 0,
    end: int | None = None,
    truncate: bool = False,
    slow: SlowControl | None = None,
    content_type: str = "application/octet-stream",
    chunked: bool = False,
) -> web.StreamResponse:
    """Stream ``path[start:end]`` with an exact Content-Length.

    ``chunked``: no Content-Length, chunked transfer encoding (as servers that compress or
    generate on the fly answer).
    ``truncate``: announce the full length but abort the connection after half.
    ``slow``: small chunks with delays (and an optional hold after the first).
    HEAD requests get headers only.
    """
    size = path.stat().st_size
    stop = size if end is None else min(end, size)
    length = max(stop - start, 0)
    resp = web.StreamResponse(status=status, headers=headers or {})
    resp.content_type = content_type
    if chunked:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = length
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    limit = length // 2 if truncate else length
    chunk_size = slow.chunk_size if slow is not None else _READ_CHUNK
    sent = 0
    with path.open("rb") as fh:
        fh.seek(start)
        first = True
        while sent < limit:
            data = fh.read(min(chunk_size, limit - sent))
            if not data:
                break
            await resp.write(data)
            sent += len(data)
            if slow is not None:
                if first and slow.hold:
                    await slow.release.wait()
                first = False
                await asyncio.sleep(slow.delay)
    if truncate:
        _abort_connection(request)
        return resp
    await resp.write_eof()
    return resp


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into [start, stop); None if absent/unsupported.

    Raises ``web.HTTPRequestRangeNotSatisfiable`` for unsatisfiable ranges.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[len("bytes=") :].strip()
    first, _, last = spec.partition("-")
    if not (first or last).isdigit() or (last and not last.isdigit()):
        return None
    if first == "":
        n = int(last)
        return (max(size - n, 0), size) if n > 0 else None
    s = int(first)
    e = int(last) + 1 if last else size
    if s >= size or e <= s:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return s, min(e, size)
