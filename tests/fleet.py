"""A fleet of real ``nightproxy serve`` processes sharing one real S3 store, for tests.

Each replica has its own cache directory, port and replica id; all share ``cache.shared`` on
SeaweedFS under the test's own prefix. ``RoundRobin`` is a tiny real HTTP proxy that spreads
requests over the replicas, as a load balancer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from tests.fakes._base import FakeServer
from tests.seaweed import SeaweedServer
from tests.support import free_port, stop_process, wait_healthy

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}


@dataclass
class Replica:
    name: str
    port: int
    cache_dir: Path
    config: Path
    proc: asyncio.subprocess.Process | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}/")

    async def start(self) -> None:
        assert self.log is not None
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "nightproxy",
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                stdout=log,
                stderr=log,
                env={**os.environ, **self.env},
            )
        await wait_healthy(self.proc, self.port)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await stop_process(proc, sig)

    async def kill(self) -> None:
        await self.stop(signal.SIGKILL)


@dataclass
class Fleet:
    seaweed: SeaweedServer
    prefix: str
    upstream_url: str
    root: Path
    fill_lease_ttl: str = "2s"
    extra_shared: str = ""
    #: Where the replicas reach the store (a faulty proxy in front of it, say).
    endpoint: str | None = None
    #: More entries of ``upstreams:`` (YAML, indented as list items).
    extra_upstreams: str = ""
    #: Top-level YAML before the rest (a ``server:`` section, say).
    extra_top: str = ""
    replicas: list[Replica] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def config_text(self, replica: Replica, upstream_url: str | None = None) -> str:
        s = self.seaweed
        return (
            f"{self.extra_top}"
            f"cache:\n"
            f"  dir: {replica.cache_dir}\n"
            f"  shared:\n"
            f"    url: {s.url(self.prefix)}\n"
            f"    endpoint: {self.endpoint or s.endpoint}\n"
            f"    region: {s.region}\n"
            f"    access_key_id: {s.access_key_id}\n"
            f"    secret_access_key: ${{TEST_STORE_SECRET}}\n"
            f"    replica_id: {replica.name}\n"
            f"    peer_url: http://127.0.0.1:{replica.port}\n"
            f"    fill_lease_ttl: {self.fill_lease_ttl}\n"
            f"{self.extra_shared}"
            f"index:\n  ttl: 1s\n"
            f"retention:\n  dev_max_age: off\n"
            f"logging:\n  level: info\n"
            f"upstreams:\n"
            f"  - name: main\n    kind: simple\n    url: {upstream_url or self.upstream_url}\n"
            f"{self.extra_upstreams}"
        )

    def new_replica(self) -> Replica:
        n = next(self._serial)
        name = f"r{n}"
        home = self.root / name
        home.mkdir(parents=True)
        replica = Replica(name, free_port(), home / "cache", home / "nightproxy.yaml")
        replica.log = home / "serve.log"
        replica.env = {"TEST_STORE_SECRET": self.seaweed.secret_access_key}
        replica.config.write_text(self.config_text(replica))
        return replica

    async def start(self, count: int) -> list[Replica]:
        new = [self.new_replica() for _ in range(count)]
        await asyncio.gather(*(r.start() for r in new))
        self.replicas.extend(new)
        return new

    async def stop_all(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas))
        self.replicas = []

    def logs(self) -> str:
        parts = []
        for r in self.replicas:
            if r.log is not None and r.log.exists():
                parts.append(f"--- {r.name}\n" + r.log.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


@contextlib.asynccontextmanager
async def running_fleet(fleet: Fleet, count: int) -> AsyncIterator[Fleet]:
    try:
        await fleet.start(count)
        yield fleet
    finally:
        await fleet.stop_all()


class RoundRobin(FakeServer):
    """Each request to the next replica in turn; bodies streamed both ways."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__()
        self.fleet = fleet
        self._next = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self.statuses: list[int] = []

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.cleanup_ctx.append(self._client)
        return app

    async def _client(self, _app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            yield

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        replicas = [r for r in self.fleet.replicas if r.proc is not None]
        replica = replicas[next(self._next) % len(replicas)]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Host", None)
        async with self._session.request(
            request.method,
            replica.base.join(URL(request.raw_path, encoded=True)),
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers[key] = value
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            response.headers["X-Replica"] = replica.name
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            self.statuses.append(upstream.status)
            return response
