"""The container image, built from ``deploy/Dockerfile`` and run by a real container engine.

The image is built once per session (``tests/container_support.py``); without an engine or the
base image every test here skips and says how to get them, a failure in CI.

Health checks run every second here (``--health-interval 1s``) instead of the image's 30 s so
that a container goes healthy within seconds; the command checked is the image's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.conftest import PIP_ACCEPT, StartFake, simple_url
from tests.container_support import DEPLOY, WAIT, Compose, Engine, get_json, wait_answering
from tests.fakes import FakeSimpleIndex
from tests.support import (
    free_port,
    installed_version,
    pip_install,
    refuses_connections,
)
from tests.wheels import build_wheel, sha256_file

UID_GID = "10001:10001"


@pytest.fixture
def containers(engine: Engine) -> Iterator[list[str]]:
    """Names of the containers a test starts; each is removed with its volumes afterwards."""
    started: list[str] = []
    yield started
    for name in started:
        engine.run("rm", "--force", "--volumes", name, check=False)


def start(engine: Engine, started: list[str], *args: str) -> str:
    """``docker run -d`` the image with ``args`` before it; the container's name."""
    name = f"{engine.prefix}-{len(started)}-{time.monotonic_ns()}"
    started.append(name)
    engine.run("run", "--detach", "--name", name, "--health-interval", "1s", *args, engine.image)
    return name


def wait_health(engine: Engine, name: str) -> str:
    """The container's health once it is no longer ``starting`` (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        status = engine.inspect(name, "{{.State.Health.Status}}")
        running = engine.inspect(name, "{{.State.Running}}")
        if status != "starting" or running != "true" or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def published_port(engine: Engine, name: str) -> int:
    """The host port ``-p 127.0.0.1::8080`` gave the container's 8080."""
    mapping = engine.run("port", name, "8080/tcp").splitlines()[0]
    return int(mapping.rsplit(":", 1)[1])


@pytest.fixture
def wheelhouse_dir(tmp_path: Path) -> Path:
    """A folder with one wheel, readable by the image's user, to mount at /wheelhouse."""
    folder = tmp_path / "wheelhouse"
    build_wheel(folder, "demo", "1.1.dev20261120")
    folder.chmod(0o755)
    return folder


# -- the image ---------------------------------------------------------------------------------


def test_image_runs_as_uid_and_gid_10001(engine: Engine, containers: list[str]) -> None:
    """The server runs as 10001:10001, the group ``nightproxy`` really has gid 10001, and the
    cache volume belongs to that user and group."""
    ids = engine.run("run", "--rm", "--entrypoint", "id", engine.image)
    assert ids == "uid=10001(nightproxy) gid=10001(nightproxy) groups=10001(nightproxy)"
    owner = engine.run(
        "run", "--rm", "--entrypoint", "stat", engine.image, "-c", "%u:%g", "/var/cache/nightproxy"
    )
    assert owner == UID_GID
    assert engine.inspect(engine.image, "{{.Config.User}}") == UID_GID


# -- a port-mapped run: health, readiness, a real pip install -----------------------------------


@pytest.fixture
def mapped(engine: Engine, containers: list[str], wheelhouse_dir: Path) -> tuple[str, int]:
    """The image with the shipped config, ``-p 127.0.0.1::8080``, the wheelhouse mounted."""
    mount = f"{wheelhouse_dir}:/wheelhouse:ro"
    name = start(engine, containers, "--publish", "127.0.0.1::8080", "--volume", mount)
    port = published_port(engine, name)
    wait_answering(f"http://127.0.0.1:{port}/healthz")
    return name, port


def test_port_mapped_container_goes_healthy(engine: Engine, mapped: tuple[str, int]) -> None:
    """The image's HEALTHCHECK passes in a container published on a random host port."""
    name, port = mapped
    assert wait_health(engine, name) == "healthy"
    assert get_json(f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})


def test_port_mapped_container_is_ready_and_writes_its_volume(mapped: tuple[str, int]) -> None:
    """/readyz is 200: the wheelhouse upstream is ok and the cache volume is writable by the
    image's user."""
    _name, port = mapped
    status, ready = get_json(f"http://127.0.0.1:{port}/readyz")
    assert status == 200, ready
    assert ready["status"] == "ready"
    cache, upstreams = ready["cache"], ready["upstreams"]
    assert isinstance(cache, dict)
    assert isinstance(upstreams, dict)
    assert (cache["dir"], cache["writable"]) == ("/var/cache/nightproxy", True)
    assert {k: v["state"] for k, v in upstreams.items()} == {"wheelhouse": "ok"}


async def test_pip_installs_through_the_container(mapped: tuple[str, int], tmp_path: Path) -> None:
    """The real pip, on the host, installs the mounted wheelhouse's nightly through the
    container's published port."""
    _name, port = mapped
    target = tmp_path / "target"
    await pip_install(f"http://127.0.0.1:{port}/simple/", target, tmp_path, "demo")
    assert installed_version(target, "demo") == "1.1.dev20261120"


# -- a sidecar on the host's network, on a port of its own --------------------------------------


def test_host_network_sidecar_on_another_port_goes_healthy(
    engine: Engine, containers: list[str]
) -> None:
    """With ``--network host`` and ``NIGHTPROXY_PORT`` set, the server listens there and the
    image's HEALTHCHECK follows it: the container goes healthy."""
    port = free_port()
    name = start(engine, containers, "--network", "host", "--env", f"NIGHTPROXY_PORT={port}")
    wait_answering(f"http://127.0.0.1:{port}/healthz")
    assert wait_health(engine, name) == "healthy"
    assert get_json(f"http://127.0.0.1:{port}/readyz")[0] == 200


# -- compose -----------------------------------------------------------------------------------


def test_compose_runs_the_service_and_stops_it_cleanly(engine: Engine) -> None:
    """``docker-compose up`` of deploy/docker-compose.yml (read-only root, no capabilities, the
    cache in a named volume) serves a ready index; ``stop`` ends it with status 0."""
    port = free_port()
    compose = Compose(
        DEPLOY / "docker-compose.yml",
        {
            "NIGHTPROXY_IMAGE": engine.image,
            "NIGHTPROXY_HOST_PORT": str(port),
            "COMPOSE_PROJECT_NAME": engine.prefix.replace("-", ""),
        },
    )
    try:
        compose.run("up", "--detach", "--no-build")
        (container,) = compose.run("ps", "--quiet", "nightproxy").splitlines()
        wait_answering(f"http://127.0.0.1:{port}/healthz")
        status, ready = get_json(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, ready
        cache = ready["cache"]
        assert isinstance(cache, dict)
        assert cache["writable"] is True
        assert engine.inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
        compose.run("stop")
        assert engine.inspect(container, "{{.State.ExitCode}}") == "0"
    finally:
        compose.down()


# -- docker stop while a download is in flight ---------------------------------------------------


@pytest.fixture
async def held_feed(start_fake: StartFake, tmp_path: Path) -> FakeSimpleIndex:
    """A feed that sends the first chunk of its 64 KiB wheel, then holds until released."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(tmp_path / "feed", "demo", "1.0", payload_size=64 * 1024)
    fake.add_file("demo", wheel)
    fake.slow_file.add(wheel.name)
    fake.slow.hold = True
    return await start_fake(fake)


async def _docker(engine: Engine, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        engine.client, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(WAIT * 2):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace").strip()


async def test_docker_stop_exits_zero_with_a_download_in_flight(
    engine: Engine, containers: list[str], held_feed: FakeSimpleIndex, tmp_path: Path
) -> None:
    """``docker stop`` during a cold download: the client still gets the whole, exact file,
    and both ``docker stop`` and the container exit with status 0."""
    port = free_port()
    config = tmp_path / "etc" / "nightproxy.yaml"
    config.parent.mkdir(mode=0o755)
    config.write_text(
        "server:\n  host: 127.0.0.1\n  port: ${NIGHTPROXY_PORT}\n"
        "cache:\n  dir: /var/cache/nightproxy\n"
        f"upstreams:\n  - name: feed\n    kind: simple\n    url: {simple_url(held_feed)}\n"
    )
    config.chmod(0o644)
    name = f"{engine.prefix}-stop-{time.monotonic_ns()}"
    containers.append(name)
    code, out = await _docker(
        engine, "run", "--detach", "--name", name, "--network", "host",
        "--env", f"NIGHTPROXY_PORT={port}",
        "--volume", f"{config}:/etc/nightproxy/nightproxy.yaml:ro",
        engine.image,
    )  # fmt: skip
    assert code == 0, out
    entry = next(iter(held_feed.projects["demo"].files.values()))
    base = URL(f"http://127.0.0.1:{port}/")
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    async with http.get(base.join(URL("/healthz"))) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.2)
        page = base.join(URL("/simple/demo/"))
        async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
            assert resp.status == 200
            url = page.join(URL(json.loads(await resp.read())["files"][0]["url"]))
        async with http.get(url) as resp:
            assert resp.status == 200
            first = await resp.content.readany()
            assert first, "no bytes before the feed's hold"
            stop = asyncio.create_task(_docker(engine, "stop", "--time", "60", name))
            async with asyncio.timeout(WAIT):
                while not await refuses_connections(base):
                    await asyncio.sleep(0.1)
            assert not stop.done(), "the container stopped with a download in flight"
            held_feed.slow.release.set()
            body = first + await resp.read()
    code, out = await stop
    assert code == 0, out
    assert hashlib.sha256(body).hexdigest() == sha256_file(entry.path)
    assert engine.inspect(name, "{{.State.ExitCode}}") == "0"
    assert "Traceback" not in (await _docker(engine, "logs", name))[1]
