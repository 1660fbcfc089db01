"""A real container engine for the tests: the engine's client, the nightproxy image, compose.

The nightproxy image is built once per session from ``deploy/Dockerfile`` FROM a local base
image (``NIGHTPROXY_BASE_IMAGE``, default ``nightproxy-base:bookworm``, which
``.ci/container-base`` makes with debootstrap on machines that reach no container registry).
Without an engine that answers, or without the base image, the tests that need them skip and
say how to get them; ``.ci/run`` sets ``NIGHTPROXY_REQUIRE_CONTAINER=1``, which makes that a
failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import needs, tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
REQUIRE = "NIGHTPROXY_REQUIRE_CONTAINER"
HOW = (
    "apt-get install docker.io debootstrap docker-compose, then as root "
    "bash .ci/container-engine && bash .ci/container-base"
)
WAIT = 60.0  # upper bound for a container to start, go healthy or stop; never a speed claim
BUILD_TIMEOUT = 900  # pip (or apt) inside a build downloads every dependency


def _client() -> str | None:
    """The engine's own client: ``/usr/bin/docker`` (BuildKit built in) before any other."""
    chosen = os.environ.get("NIGHTPROXY_DOCKER")
    if chosen:
        return chosen
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else tool("docker")


@dataclass
class Engine:
    client: str
    #: The nightproxy image built for this session.
    image: str
    #: Names of this session's containers and images start with it.
    prefix: str
    #: The local base image every image here is built FROM.
    base: str

    def run(self, *args: str, timeout: float = WAIT, check: bool = True) -> str:
        done = subprocess.run(
            [self.client, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
        if check:
            assert done.returncode == 0, f"docker {' '.join(args[:3])}: {done.stderr[-2000:]}"
        return done.stdout.strip()

    def inspect(self, container: str, template: str) -> str:
        return self.run("inspect", "--format", template, container)

    def has_image(self, tag: str) -> bool:
        return bool(self.run("image", "inspect", "--format", "{{.Id}}", tag, check=False))


def _engine_answers(client: str | None) -> bool:
    if client is None:
        return False
    try:
        done = subprocess.run([client, "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The engine, with the image built from the shipped Dockerfile; removed afterwards."""
    client = _client()
    needs(client if _engine_answers(client) else None, "A container engine", HOW, REQUIRE)
    assert client is not None
    base = os.environ.get("NIGHTPROXY_BASE_IMAGE", "nightproxy-base:bookworm")
    prefix = f"nightproxy-test-{os.getpid()}"
    engine = Engine(client, f"{prefix}:latest", prefix, base)
    needs(base if engine.has_image(base) else None, f"The base image {base}", HOW, REQUIRE)
    engine.run(
        "build",
        "--quiet",
        "--file",
        str(DEPLOY / "Dockerfile"),
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--tag",
        engine.image,
        str(ROOT),
        timeout=BUILD_TIMEOUT,
    )
    try:
        yield engine
    finally:
        engine.run("rmi", "--force", engine.image, check=False)


@dataclass
class Compose:
    """``docker-compose --file FILE`` with an environment of its own (images, ports, project)."""

    file: Path
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = WAIT * 2

    def __post_init__(self) -> None:
        self.client = needs(
            tool("docker-compose"), "docker-compose", "apt-get install docker-compose", REQUIRE
        )

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [self.client, "--file", str(self.file), *args],
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
            env={**os.environ, **self.env},
        )
        if check:
            assert done.returncode == 0, f"docker-compose {args[0]}: {done.stderr[-2000:]}"
        return done.stdout.strip()

    def down(self) -> None:
        """Containers, networks and volumes gone, whatever state the project is in."""
        self.run("down", "--volumes", "--remove-orphans", check=False)


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_answering(url: str, wait: float = WAIT) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.2)
