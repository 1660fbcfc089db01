"""Shared fixtures: real fake upstreams on loopback, real wheels, and the real proxy app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from nightproxy.config import Config, config_from_mapping
from nightproxy.server.app import create_app
from tests.container_support import engine  # noqa: F401 (fixture)
from tests.fakes import FakeSimpleIndex
from tests.seaweed import private_seaweed, s3_prefix, seaweed  # noqa: F401 (fixtures)
from tests.wheels import build_wheel

#: Fixtures of trusted publishing (a local CA and OIDC issuer), usable from any test module.
pytest_plugins = ("tests.oidc_issuer",)

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
JSON_TYPE = "application/vnd.pypi.simple.v1+json"

MakeConfig = Callable[..., Config]
StartProxy = Callable[..., Awaitable[TestServer]]
StartFake = Callable[..., Awaitable[Any]]


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    path = tmp_path / "wheelhouse"
    path.mkdir()
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """Build a validated Config from upstream entries, the way a user's YAML would."""

    def make(upstreams: list[dict[str, Any]], **sections: Any) -> Config:
        data: dict[str, Any] = {
            "cache": {"dir": str(tmp_path / "cache")},
            "retention": {"dev_max_age": "off"},
            "upstreams": upstreams,
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return config_from_mapping(data, tmp_path / "nightproxy.yaml", environ={})

    return make


@pytest.fixture
async def start_fake(aiohttp_server: Any) -> StartFake:
    """Start a fake upstream object on a real loopback socket and bind its base URL."""

    async def start(fake: Any) -> Any:
        server = await aiohttp_server(fake.make_app())
        fake.bind(server)
        return fake

    return start


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    servers: list[TestServer] = []

    async def start(config: Config) -> TestServer:
        server = TestServer(create_app(config))
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def simple_upstream(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """A PyPI-like fake with two versions of 'demo'."""
    fake = FakeSimpleIndex()
    for version in ("1.0", "1.1.dev20261120"):
        fake.add_file("demo", build_wheel(wheelhouse, "demo", version))
    return await start_fake(fake)


@pytest.fixture
async def one_wheel(start_fake: StartFake, tmp_path: Path) -> FakeSimpleIndex:
    """An upstream with one wheel, demo 1.0 (64 KiB of payload)."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(tmp_path / "wheels", "demo", "1.0", payload_size=64 * 1024))
    return await start_fake(fake)


@pytest.fixture
async def slow_fake(start_fake: StartFake, tmp_path: Path) -> FakeSimpleIndex:
    """An upstream whose one wheel (256 KiB of payload) is held after its first chunks until
    the test sets ``slow.release``."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(tmp_path / "wheels", "demo", "1.0", payload_size=256 * 1024)
    fake.add_file("demo", wheel)
    fake.slow_file.add(wheel.name)
    fake.slow.chunk_size = 16 * 1024
    fake.slow.delay = 0.001
    fake.slow.hold = True
    return await start_fake(fake)


def simple_url(fake: Any) -> str:
    return f"{fake.base_url}simple/"
