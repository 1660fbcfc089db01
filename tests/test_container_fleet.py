"""The fleet compose file, ``deploy/fleet/docker-compose.yml``, started by a real engine.

SeaweedFS, three nightproxy replicas and nginx, as shipped, with local stand-ins for the
SeaweedFS and nginx images (``tests/standins.py``: no registry is reachable here) and the
nightproxy image of this session. The fleet is started once for the module, its wheel folder a
temporary one with one nightly, and taken down with its volumes afterwards whatever happened.
Without an engine or the base image every test skips and says how to get them (a failure in
CI, ``NIGHTPROXY_REQUIRE_CONTAINER=1``).
"""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.container_support import DEPLOY, WAIT, Compose, Engine, get_json, wait_answering
from tests.seaweed import require_weed
from tests.standins import standin
from tests.support import free_port, installed_version, pip_install
from tests.wheels import build_wheel

FLEET = DEPLOY / "fleet"
REPLICAS = {"replica1", "replica2", "replica3"}
#: Bound on the fleet's start: the store goes healthy first (its healthcheck polls every 5 s),
#: then three replicas start on a shared 2-core machine. Never a speed claim.
START_WAIT = 300.0


@dataclass
class Fleet:
    compose: Compose
    url: str

    def logs(self) -> str:
        return self.compose.run("logs", "--no-color", "--tail", "30", check=False)[-6000:]


def _ready_replica(url: str) -> str | None:
    """The replica that answered /readyz through nginx if it says ready, else None."""
    try:
        status, body = get_json(f"{url}/readyz")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None
    shared = body.get("shared")
    if status != 200 or body.get("status") != "ready" or not isinstance(shared, dict):
        return None
    return str(shared["replica"])


@pytest.fixture(scope="module")
def fleet(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The fleet, up, with every replica ready behind nginx; down with its volumes after."""
    seaweedfs = standin(engine, "seaweedfs", {"weed": require_weed().resolve()})
    nginx = standin(engine, "nginx")
    wheels = tmp_path_factory.mktemp("fleet-wheels")
    build_wheel(wheels, "demo", "2.0.dev20261201")
    wheels.chmod(0o755)  # read by the replicas' user, 10001
    port = free_port()
    compose = Compose(
        FLEET / "docker-compose.yml",
        {
            "NIGHTPROXY_IMAGE": engine.image,
            "SEAWEEDFS_IMAGE": seaweedfs,
            "NGINX_IMAGE": nginx,
            "NIGHTPROXY_HOST_PORT": str(port),
            "NIGHTPROXY_WHEELS": str(wheels),
            "COMPOSE_PROJECT_NAME": f"{engine.prefix.replace('-', '')}fleet",
            "STORE_KEY_ID": "nightproxy-fleet-test",
            "STORE_SECRET": secrets.token_hex(16),
        },
        timeout=START_WAIT,
    )
    fleet = Fleet(compose, f"http://127.0.0.1:{port}")
    try:
        compose.run("up", "--detach", "--no-build")
        wait_answering(f"{fleet.url}/healthz", WAIT * 2)
        ready: set[str] = set()
        deadline = time.monotonic() + START_WAIT
        while ready != REPLICAS:
            assert time.monotonic() < deadline, f"ready: {sorted(ready)}\n{fleet.logs()}"
            replica = _ready_replica(fleet.url)
            if replica is None:
                time.sleep(0.5)
            else:
                ready.add(replica)
        yield fleet
    finally:
        compose.down()


def test_fleet_is_ready_with_the_shared_store_ok(fleet: Fleet) -> None:
    """/readyz through nginx: ready, the store the config names, its health ok."""
    status, body = get_json(f"{fleet.url}/readyz")
    assert status == 200, body
    assert body["status"] == "ready", body
    shared = body["shared"]
    assert isinstance(shared, dict)
    assert shared["store"] == "s3://nightproxy/fleet/"
    assert shared["health"]["state"] == "ok", fleet.logs()


def test_nginx_spreads_requests_over_the_three_replicas(fleet: Fleet) -> None:
    """Six requests in a row through nginx are answered by all three replicas."""
    seen = [_ready_replica(fleet.url) for _ in range(6)]
    assert set(seen) == REPLICAS, seen


async def test_pip_installs_the_fleet_wheel_through_nginx(fleet: Fleet, tmp_path: Path) -> None:
    """The real pip, on the host, installs the nightly from the replicas' wheel folder through
    nginx's published port."""
    target = tmp_path / "target"
    await pip_install(f"{fleet.url}/simple/", target, tmp_path, "demo")
    assert installed_version(target, "demo") == "2.0.dev20261201"


def test_load_balancer_keeps_the_peer_endpoint_closed(fleet: Fleet) -> None:
    """``/_fleet/`` (for replicas only) answers 404 at nginx's port."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{fleet.url}/_fleet/fills/x", timeout=10)
    caught.value.close()
    assert caught.value.code == 404
