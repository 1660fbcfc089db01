"""End to end: the real pip and the real uv install real wheels through the proxy.

Two fake upstreams each publish one project; ``app-one`` (on alpha) depends on ``lib-two``
(on beta), so resolving it needs the merged view of both. The installers run as subprocesses
started with ``asyncio.create_subprocess_exec`` because the proxy and the fakes serve from this
test's event loop.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import installed_version, installer_env, run_installer, uv_bin
from tests.support import pip_install as install_with_pip
from tests.wheels import build_wheel, wheel_filename

INSTALL_TIMEOUT = 240.0  # a bound so a hung installer fails the test instead of the run

APP_NEW = "1.1.dev20261120"
APP_OLD = "1.0"
LIB_NEW = "2.0.dev20261121"
LIB_OLD = "1.0"


@dataclass
class World:
    alpha: FakeSimpleIndex
    beta: FakeSimpleIndex
    proxy: TestServer

    @property
    def index_url(self) -> str:
        return str(self.proxy.make_url("/simple/"))


@pytest.fixture
async def world(
    start_fake: StartFake, wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy
) -> World:
    """alpha: app-one 1.0 and 1.1.dev (needs lib-two>=2.0.dev0); beta: lib-two 1.0 and 2.0.dev."""
    alpha = FakeSimpleIndex()
    alpha.add_file("app-one", build_wheel(wheelhouse, "app-one", APP_OLD))
    alpha.add_file(
        "app-one",
        build_wheel(wheelhouse, "app-one", APP_NEW, requires_dist=["lib-two>=2.0.dev0"]),
    )
    beta = FakeSimpleIndex()
    beta.add_file("lib-two", build_wheel(wheelhouse, "lib-two", LIB_OLD))
    beta.add_file("lib-two", build_wheel(wheelhouse, "lib-two", LIB_NEW))
    await start_fake(alpha)
    await start_fake(beta)
    config = make_config(
        [
            {"name": "alpha", "kind": "simple", "url": simple_url(alpha)},
            {"name": "beta", "kind": "simple", "url": simple_url(beta)},
        ]
    )
    return World(alpha, beta, await start_proxy(config))


def dist_infos(target: Path) -> set[str]:
    return {p.name for p in target.glob("*.dist-info")}


async def pip_install(
    world: World, tmp_path: Path, target: Path, python: str = sys.executable
) -> None:
    await install_with_pip(world.index_url, target, tmp_path, "app-one", python=python)


async def test_pip_installs_through_the_proxy(world: World, tmp_path: Path) -> None:
    """Real pip resolves app-one and its dependency across two upstreams; installs nightlies."""
    target = tmp_path / "pip-target"
    await pip_install(world, tmp_path, target)
    assert installed_version(target, "app_one") == APP_NEW
    assert installed_version(target, "lib_two") == LIB_NEW
    assert dist_infos(target) == {f"app_one-{APP_NEW}.dist-info", f"lib_two-{LIB_NEW}.dist-info"}


#: Debian 12's pip. pip 22.3 to 23.1 ask for JSON pages and crash on a JSON
#: ``dist-info-metadata`` key (PEP 714's reason to exist).
OLD_PIP = "23.0.1"


@pytest.fixture(scope="session")
def old_pip_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A virtual environment's python whose pip is ``OLD_PIP``, fetched from the package
    index this machine is configured for (as the suite's own dependencies were)."""
    root = tmp_path_factory.mktemp("old-pip")
    wheels = root / "wheels"
    download = ["download", "-q", "--no-deps", "-d", str(wheels), f"pip=={OLD_PIP}"]
    subprocess.run([sys.executable, "-m", "pip", *download], check=True)
    wheel = next(wheels.glob("pip-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # pip runs from its own wheel to install itself.
    subprocess.run([python, f"{wheel}/pip", "install", "-q", "--no-index", str(wheel)], check=True)
    return python


async def test_an_older_pip_installs_through_the_proxy(
    world: World, tmp_path: Path, old_pip_python: str
) -> None:
    """pip 23.0 (one of the pips that crash on a JSON ``dist-info-metadata`` key) resolves
    across both upstreams from the proxy's JSON pages and installs the nightlies."""
    target = tmp_path / "old-pip-target"
    await pip_install(world, tmp_path, target, python=old_pip_python)
    assert installed_version(target, "app_one") == APP_NEW
    assert installed_version(target, "lib_two") == LIB_NEW


async def test_uv_installs_through_the_proxy(world: World, tmp_path: Path) -> None:
    """Real uv resolves app-one and its dependency across two upstreams; installs nightlies."""
    target = tmp_path / "uv-target"
    await run_installer(
        [
            uv_bin(),
            "pip",
            "install",
            "--no-config",
            "--no-cache",
            "--python",
            sys.executable,
            "--index-url",
            world.index_url,
            "--prerelease=allow",
            "--target",
            str(target),
            "app-one",
        ],
        installer_env(tmp_path),
    )
    assert installed_version(target, "app_one") == APP_NEW
    assert installed_version(target, "lib_two") == LIB_NEW
    assert dist_infos(target) == {f"app_one-{APP_NEW}.dist-info", f"lib_two-{LIB_NEW}.dist-info"}


async def test_pip_resolves_from_metadata_files(world: World, tmp_path: Path) -> None:
    """pip reads each chosen wheel's PEP 658 ``.metadata`` and never downloads unchosen wheels."""
    await pip_install(world, tmp_path, tmp_path / "pip-target")
    app_new = wheel_filename("app-one", APP_NEW)
    lib_new = wheel_filename("lib-two", LIB_NEW)
    # The proxy fetches a .metadata from its upstream only when a client asked it for one.
    assert world.alpha.count("GET", f"/files/{app_new}.metadata") == 1
    assert world.beta.count("GET", f"/files/{lib_new}.metadata") == 1
    for fake, old in ((world.alpha, ("app-one", APP_OLD)), (world.beta, ("lib-two", LIB_OLD))):
        assert fake.count("GET", f"/files/{wheel_filename(*old)}") == 0
