"""End to end: real pip and real uv install a dev wheel from each of the five upstream kinds
through one proxy that has all five configured at once.

The proxy and every fake live in the test's event loop; the installers run as subprocesses
(``asyncio.create_subprocess_exec``) so the loop keeps serving them. Only loopback is used.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import MakeConfig, StartFake, StartProxy
from tests.fakes import (
    FakeAnacondaAPI,
    FakeAnacondaChannel,
    FakeAzureFeed,
    FakeBlobHost,
    FakeCdnHost,
    FakeObjectStore,
    FakeStaticTree,
)
from tests.fakes.s3 import MotoS3, moto_s3
from tests.support import installer_env, uv_bin
from tests.wheels import build_wheel

PAT = "e2e-azure-pat-SENTINEL-0987654321"
BUCKET = "e2e-nightly"

#: project -> (import name, dev version); one project per upstream kind.
PROJECTS = {
    "conda-proj": ("conda_proj", "2.3.0.dev0"),
    "azure-proj": ("azure_proj", "1.20.0.dev20261120001"),
    "s3-proj": ("s3_proj", "0.9.0.dev20261120+cpu"),
    "static-proj": ("static_proj", "2.10.0.dev20261120"),
    "dir-proj": ("dir_proj", "0.1.dev7"),
}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    dest = tmp_path_factory.mktemp("e2e-s3")
    with moto_s3() as server:
        server.create_bucket(BUCKET, public_read=False)
        _import, version = PROJECTS["s3-proj"]
        wheel = build_wheel(dest, "s3-proj", version)
        server.put(BUCKET, f"wheels/s3-proj/{wheel.name}", wheel)
        yield server


@pytest.fixture
async def proxy(
    moto: MotoS3,
    start_fake: StartFake,
    start_proxy: StartProxy,
    make_config: MakeConfig,
    tmp_path: Path,
    wheelhouse: Path,
) -> TestServer:
    """One proxy over anaconda (+API), azure (PAT), S3 (moto, signed), a static tree and a
    directory, each holding a different dev wheel project."""
    dists = tmp_path / "dists"

    def wheel(project: str) -> Path:
        return build_wheel(dists, project, PROJECTS[project][1])

    store = await start_fake(FakeObjectStore())
    channel = await start_fake(FakeAnacondaChannel("nightly-channel", store))
    api = await start_fake(FakeAnacondaAPI(channel))
    channel.add_file("conda-proj", wheel("conda-proj"))

    blobs = await start_fake(FakeBlobHost())
    feed = await start_fake(FakeAzureFeed("anyone", PAT, blobs))
    feed.add_file("azure-proj", wheel("azure-proj"), requires_python=">=3.8")

    cdn = await start_fake(FakeCdnHost())
    tree = await start_fake(FakeStaticTree(cdn))
    tree.add_file("static-proj", wheel("static-proj"), link="absolute", with_metadata=True)

    build_wheel(wheelhouse, "dir-proj", PROJECTS["dir-proj"][1])

    upstreams: list[dict[str, Any]] = [
        {
            "name": "conda",
            "kind": "anaconda",
            "url": channel.index_url(),
            "api_url": api.origin,
        },
        {
            "name": "azure",
            "kind": "azure",
            "url": feed.index_url,
            "username": "x",
            "password": PAT,
        },
        {
            "name": "bucket",
            "kind": "s3",
            "url": f"s3://{BUCKET}/wheels/",
            "endpoint": moto.endpoint,
            "addressing": "path",
            "access_key_id": "testing",
            "secret_access_key": "testing",
        },
        {"name": "static", "kind": "simple", "url": tree.url("/whl/nightly/")},
        {"name": "local", "kind": "directory", "path": str(wheelhouse)},
    ]
    return await start_proxy(make_config(upstreams))


async def run(*argv: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(errors="replace")


async def installed_versions(target: Path, env: dict[str, str]) -> dict[str, str]:
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        f"for name in {sorted(i for i, _ in PROJECTS.values())!r}:\n"
        "    print(name, importlib.import_module(name).__version__)\n"
    )
    status, out = await run(sys.executable, "-I", "-c", code, env=env)
    assert status == 0, out
    return dict(line.split(" ", 1) for line in out.strip().splitlines())


def expected_versions() -> dict[str, str]:
    return dict(PROJECTS.values())


async def test_pip_installs_a_dev_wheel_from_every_kind(proxy: TestServer, tmp_path: Path) -> None:
    """``pip install --pre`` through the proxy installs the five projects, one per kind."""
    env = installer_env(tmp_path)
    target = tmp_path / "pip-target"
    status, out = await run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--pre",
        "--index-url",
        str(proxy.make_url("/simple/")),
        "--target",
        str(target),
        *PROJECTS,
        env=env,
    )

    assert status == 0, out
    assert await installed_versions(target, env) == expected_versions()
    assert PAT not in out


async def test_uv_installs_a_dev_wheel_from_every_kind(proxy: TestServer, tmp_path: Path) -> None:
    """``uv pip install --prerelease=allow`` through the proxy installs the five projects."""
    env = installer_env(tmp_path)
    target = tmp_path / "uv-target"
    status, out = await run(
        uv_bin(),
        "pip",
        "install",
        "--no-cache",
        "--prerelease=allow",
        "--index-url",
        str(proxy.make_url("/simple/")),
        "--python",
        sys.executable,
        "--target",
        str(target),
        *PROJECTS,
        env=env,
    )

    assert status == 0, out
    assert await installed_versions(target, env) == expected_versions()
    assert PAT not in out
