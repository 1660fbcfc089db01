"""The trusted-publishing exchange over HTTPS: audience, mint-token, burn-token, and the
answers the real clients read, against a local OIDC issuer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nightproxy.config import OidcConfig
from nightproxy.server import oidc
from nightproxy.trust.claims import TrustedPublisher
from nightproxy.trust.minted import TOKEN_PREFIX
from nightproxy.trust.service import TrustedPublishing
from tests.conftest import simple_url
from tests.oidc_issuer import REPOSITORY, WORKFLOW, LocalCA, OidcIssuer
from tests.support import free_port

PUBLISHERS = [TrustedPublisher("community", "octo-lib", REPOSITORY, WORKFLOW)]


class Exchange:
    def __init__(self, url: str, trust: TrustedPublishing, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.trust = trust
        self.http = http

    async def mint(self, body: Any, path: str = "/_/oidc/mint-token") -> tuple[int, Any]:
        async with self.http.post(self.url + path, json=body) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def exchange(
    aiohttp_server: Any, oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path
) -> AsyncIterator[Exchange]:
    async with (
        aiohttp.ClientSession() as session,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=local_ca.client_context())
        ) as http,
    ):
        settings = OidcConfig(issuer=oidc_issuer.url, ca_bundle=local_ca.ca_file)
        trust = TrustedPublishing(session, settings, PUBLISHERS, tmp_path)
        await trust.open()
        app = web.Application()
        app[oidc.TRUST] = trust
        oidc.setup_routes(app)
        server = await aiohttp_server(app, ssl=local_ca.server_context())
        yield Exchange(str(server.make_url("")).rstrip("/"), trust, http)
        await trust.close()


async def test_the_audience_is_announced(exchange: Exchange) -> None:
    """``GET /_/oidc/audience`` names the audience job tokens must be minted for."""
    async with exchange.http.get(exchange.url + "/_/oidc/audience") as resp:
        assert resp.status == 200
        assert await resp.json() == {"audience": "nightproxy"}


@pytest.mark.parametrize("path", ["/_/oidc/mint-token", "/_/oidc/github/mint-token"])
async def test_a_genuine_job_token_is_exchanged(
    exchange: Exchange, oidc_issuer: OidcIssuer, path: str
) -> None:
    """A genuine job token gets ``success``, a minted token and its expiry in 15 minutes, at
    uv's path and at the one gh-action-pypi-publish uses."""
    before = int(time.time())
    status, body = await exchange.mint({"token": oidc_issuer.sign(oidc_issuer.job_claims())}, path)
    assert status == 200
    assert body["success"] is True
    assert body["token"].startswith(TOKEN_PREFIX)
    assert before + 15 * 60 - 1 <= body["expires"] <= int(time.time()) + 15 * 60
    grant = await exchange.trust.check(body["token"])
    assert grant is not None
    assert grant.projects("community") == ("octo-lib",)


async def test_a_refusal_is_a_422_with_the_public_indexs_error_list(
    exchange: Exchange, oidc_issuer: OidcIssuer
) -> None:
    """A refused token gets 422 and ``{"errors": [{"code", "description"}]}``, and is counted."""
    token = oidc_issuer.sign(oidc_issuer.job_claims(repository="mallory/octo-lib"))
    status, body = await exchange.mint({"token": token})
    assert status == 422
    [error] = body["errors"]
    assert error["code"] == "invalid-publisher"
    assert "mallory/octo-lib" in error["description"]
    assert exchange.trust.refusals["repository"] == 1


@pytest.mark.parametrize("body", [None, [], {"token": 5}, {"token": ""}, {"jwt": "x"}])
async def test_a_body_without_a_token_is_an_invalid_payload(exchange: Exchange, body: Any) -> None:
    """Anything but ``{"token": "<jwt>"}`` is refused as an invalid payload."""
    status, answer = await exchange.mint(body)
    assert status == 422
    assert answer["errors"][0]["code"] == "invalid-payload"
    assert exchange.trust.refusals["payload"] == 1


async def test_a_burned_token_is_revoked(exchange: Exchange, oidc_issuer: OidcIssuer) -> None:
    """``burn-token`` revokes the minted token at once; a token never minted is refused."""
    _, body = await exchange.mint({"token": oidc_issuer.sign(oidc_issuer.job_claims())})
    burn = exchange.url + "/_/oidc/burn-token"
    async with exchange.http.post(burn, json={"token": body["token"]}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"success": True}
    assert await exchange.trust.check(body["token"]) is None
    async with exchange.http.post(burn, json={"token": TOKEN_PREFIX + "made-up"}) as resp:
        assert resp.status == 422


async def test_an_unreachable_issuer_is_a_503_not_a_refusal(
    aiohttp_server: Any, oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path
) -> None:
    """When the issuer's keys cannot be fetched, the client is told to retry (503)."""
    async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as http:
        settings = OidcConfig(issuer=f"https://127.0.0.1:{free_port()}")
        trust = TrustedPublishing(session, settings, PUBLISHERS, tmp_path)
        await trust.open()
        app = web.Application()
        app[oidc.TRUST] = trust
        oidc.setup_routes(app)
        server = await aiohttp_server(app)
        token = oidc_issuer.sign(oidc_issuer.job_claims())
        async with http.post(server.make_url("/_/oidc/mint-token"), json={"token": token}) as resp:
            assert resp.status == 503
            assert (await resp.json())["errors"][0]["code"] == "issuer-unavailable"
        await trust.close()


async def test_without_github_publishers_there_is_no_exchange(
    make_config: Any, start_proxy: Any, simple_upstream: Any, http: aiohttp.ClientSession
) -> None:
    """A server whose feeds name no GitHub publisher answers 404 at ``/_/oidc/``: what the
    clients read as "this index does not do trusted publishing"."""
    server = await start_proxy(
        make_config([{"name": "nightly", "kind": "simple", "url": simple_url(simple_upstream)}])
    )
    async with http.get(server.make_url("/_/oidc/audience")) as resp:
        assert resp.status == 404
    async with http.post(server.make_url("/_/oidc/mint-token"), json={"token": "x"}) as resp:
        assert resp.status in (404, 405)


async def test_a_body_that_arrives_in_pieces_is_read_whole(
    exchange: Exchange, oidc_issuer: OidcIssuer
) -> None:
    """A chunked body whose JSON arrives in several writes is exchanged like any other."""
    body = json.dumps({"token": oidc_issuer.sign(oidc_issuer.job_claims())}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]
            await asyncio.sleep(0.01)

    headers = {"Content-Type": "application/json"}
    async with exchange.http.post(
        exchange.url + "/_/oidc/mint-token", data=pieces(), headers=headers
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["success"] is True
