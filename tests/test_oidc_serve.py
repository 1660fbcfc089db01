"""Trusted publishing through ``nightproxy serve`` itself: HTTPS from ``server.tls``, the
issuer trusted through ``publishing.oidc.ca_bundle``, a hosted feed whose project names its
GitHub publisher; the real clients publish and install through the merged index.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.hosted_support import run_tool
from tests.oidc_issuer import REPOSITORY, WORKFLOW, LocalCA, OidcIssuer, https_config, job_env
from tests.support import (
    free_port,
    installed_version,
    installer_env,
    nightproxy_serve,
    run_installer,
    uv_bin,
)
from tests.wheels import build_wheel

GH_ACTION = Path(__file__).with_name("gh_action_publish.py")
VERSION = "1.0.dev20261207"


def write_config(tmp_path: Path, issuer: OidcIssuer, ca: LocalCA) -> Path:
    cert, key = tmp_path / "tls-cert.pem", tmp_path / "tls-key.pem"
    ca.write_leaf(ca.leaf, cert, key)
    publisher = {"repository": REPOSITORY, "workflow": WORKFLOW, "environment": "nightly"}
    feed = {
        "name": "community",
        "kind": "hosted",
        "path": str(tmp_path / "feed"),
        "publishers": {"octo-lib": {"github": [publisher]}},
    }
    oidc = {"issuer": issuer.url, "ca_bundle": str(ca.ca_file)}
    return https_config(tmp_path, cert, key, [feed], publishing={"oidc": oidc})


class Served:
    def __init__(self, port: int, ca: LocalCA) -> None:
        self.root = f"https://127.0.0.1:{port}"
        self.upload_url = f"{self.root}/feeds/community/"
        self.index_url = f"{self.root}/simple/"
        self.ca = ca

    def client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ca.client_context()))


@asynccontextmanager
async def serving(config: Path, port: int, ca: LocalCA, workers: int = 1) -> AsyncIterator[Served]:
    args = ["--config", str(config), "--workers", str(workers)]
    async with nightproxy_serve(args, port, tls=ca.client_context()):
        yield Served(port, ca)


def dist(tmp_path: Path) -> Path:
    directory = tmp_path / "dist"
    build_wheel(directory, "octo-lib", VERSION)
    return directory


async def installs(served: Served, tmp_path: Path, tool: str) -> str:
    """The octo-lib version pip or uv installs through the merged index."""
    target = tmp_path / f"target-{tool}"
    env = installer_env(tmp_path)
    env["SSL_CERT_FILE"] = str(served.ca.ca_file)
    # requests lets these override pip's --cert; this machine sets them to its own bundle.
    env.pop("REQUESTS_CA_BUNDLE", None)
    env.pop("CURL_CA_BUNDLE", None)
    if tool == "pip":
        argv = [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir"]
        argv += ["--disable-pip-version-check", "--cert", str(served.ca.ca_file)]
    else:
        argv = [uv_bin(), "pip", "install", "--no-cache", "--python", sys.executable]
    argv += ["--index-url", served.index_url, "--pre", "--target", str(target), "octo-lib"]
    await run_installer(argv, env)
    return installed_version(target, "octo_lib")


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_actions_exchange_publishes_and_pip_and_uv_install_it(
    oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path, workers: int
) -> None:
    """``gh-action-pypi-publish``'s steps publish to the served feed over HTTPS, and pip and uv
    install the new build through the merged index; with two workers too, where the token
    may be minted by one and used with another."""
    oidc_issuer.job = {"environment": "nightly"}
    config = write_config(tmp_path, oidc_issuer, local_ca)
    async with serving(config, free_port(), local_ca, workers) as served:
        argv = [sys.executable, str(GH_ACTION), served.upload_url, str(dist(tmp_path))]
        status, output = await run_tool(argv, job_env(tmp_path, oidc_issuer, local_ca))
        assert status == 0, output
        assert await installs(served, tmp_path, "pip") == VERSION
        assert await installs(served, tmp_path, "uv") == VERSION


async def test_uv_publish_with_trusted_publishing_then_the_token_is_burned(
    oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path
) -> None:
    """``uv publish --trusted-publishing always`` publishes, and burns the token it minted:
    ``/metrics`` counts one token minted and one burned."""
    oidc_issuer.job = {"environment": "nightly"}
    config = write_config(tmp_path, oidc_issuer, local_ca)
    async with serving(config, free_port(), local_ca) as served:
        files = [str(p) for p in sorted(dist(tmp_path).iterdir())]
        argv = [uv_bin(), "publish", "--no-progress", "--trusted-publishing", "always"]
        argv += ["--publish-url", served.upload_url, *files]
        status, output = await run_tool(argv, job_env(tmp_path, oidc_issuer, local_ca))
        assert status == 0, output
        async with served.client() as http, http.get(served.root + "/metrics") as resp:
            metrics = await resp.text()
        assert "nightproxy_oidc_tokens_minted_total 1.0" in metrics
        assert "nightproxy_oidc_tokens_burned_total 1.0" in metrics
        assert await installs(served, tmp_path, "uv") == VERSION


async def test_a_job_token_is_exchanged_once_also_across_a_restart(
    oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path
) -> None:
    """The same job token exchanged again, after the server restarted on the same cache
    directory, is refused as a replay, and ``/metrics`` counts the refusal by its reason."""
    config = write_config(tmp_path, oidc_issuer, local_ca)
    token = oidc_issuer.sign(oidc_issuer.job_claims(environment="nightly"))
    port = free_port()
    async with serving(config, port, local_ca) as served, served.client() as http:
        mint = served.root + "/_/oidc/mint-token"
        async with http.post(mint, json={"token": token}) as resp:
            assert resp.status == 200
    async with serving(config, port, local_ca) as served, served.client() as http:
        async with http.post(mint, json={"token": token}) as resp:
            assert resp.status == 422
            assert "already exchanged" in (await resp.json())["errors"][0]["description"]
        async with http.get(served.root + "/metrics") as resp:
            metrics = await resp.text()
        assert 'nightproxy_oidc_refusals_total{reason="replay"} 1.0' in metrics
