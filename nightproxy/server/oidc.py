"""The trusted-publishing exchange, wire-compatible with the public index's:

- ``GET /_/oidc/audience`` -> ``{"audience": ...}``;
- ``POST /_/oidc/mint-token`` (and ``/_/oidc/github/mint-token``) with
  ``{"token": <the CI job's JWT>}`` -> ``{"success": true, "token": ..., "expires": <unix time>}``,
  or an error status with ``{"errors": [{"code": ..., "description": ...}]}``;
- ``POST /_/oidc/burn-token`` with ``{"token": <a minted token>}`` revokes it (``uv publish``
  calls it after its uploads).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from nightproxy.config import Config, HostedOptions
from nightproxy.server import keys
from nightproxy.server.keys import TRUST
from nightproxy.trust.claims import Refusal, TokenRefusedError, TrustedPublisher
from nightproxy.trust.keys import KeysUnavailableError
from nightproxy.trust.ledger import FILENAME as LEDGER_FILENAME
from nightproxy.trust.service import MintedTokenSource, TrustedPublishing
from nightproxy.trust.shared_ledger import SharedTrustLedger

log = logging.getLogger(__name__)

#: The public index answers every refusal of the exchange with this status.
REFUSED = 422
#: A job token is about 1 KiB; the JSON that carries it is never near this.
MAX_BODY = 64 * 1024


def _errors(status: int, code: str, description: str) -> web.Response:
    return web.json_response(
        {"errors": [{"code": code, "description": description}]},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


async def _token_field(request: web.Request) -> str | Refusal:
    """The ``token`` string of the JSON body, or why there is none."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return Refusal("payload", "the request body is too large", code="invalid-payload")
    try:
        # Bounded above by the announced length, and by the app's client_max_size otherwise.
        body = await request.read()
        if len(body) > MAX_BODY:
            return Refusal("payload", "the request body is too large", code="invalid-payload")
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Refusal("payload", "the request body is not JSON", code="invalid-payload")
    token = payload.get("token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token:
        return Refusal(
            "payload",
            'the body must be a JSON object with a "token" string',
            code="invalid-payload",
        )
    return token


async def audience(request: web.Request) -> web.Response:
    return web.json_response({"audience": request.app[TRUST].audience})


async def mint_token(request: web.Request) -> web.Response:
    trust = request.app[TRUST]
    token = await _token_field(request)
    if isinstance(token, Refusal):
        trust.verifier.record_refusal(token)
        return _errors(REFUSED, token.code, token.description)
    try:
        minted, _publisher = await trust.exchange(token)
    except TokenRefusedError as refused:
        refusal = refused.refusal
        return _errors(REFUSED, refusal.code, refusal.description)
    except KeysUnavailableError as exc:
        log.error("trusted publishing cannot verify tokens: %s", exc)  # noqa: TRY400 - known cause
        return _errors(
            503, "issuer-unavailable", "the OIDC issuer's keys cannot be fetched; try again later"
        )
    return web.json_response(
        {"success": True, "token": minted.token, "expires": minted.expires},
        headers={"Cache-Control": "no-store"},
    )


async def burn_token(request: web.Request) -> web.Response:
    trust = request.app[TRUST]
    token = await _token_field(request)
    if isinstance(token, Refusal):
        return _errors(REFUSED, token.code, token.description)
    if not await trust.burn(token):
        return _errors(REFUSED, "invalid-token", "no such minted token")
    return web.json_response({"success": True}, headers={"Cache-Control": "no-store"})


class TrustStats(Collector):
    """Trusted publishing in ``/metrics``: tokens minted and burned, refusals by reason."""

    def __init__(self, trust: TrustedPublishing) -> None:
        self.trust = trust

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "nightproxy_oidc_tokens_minted",
            "Upload tokens minted for trusted publishers",
            value=self.trust.tokens.minted,
        )
        yield CounterMetricFamily(
            "nightproxy_oidc_tokens_burned",
            "Minted upload tokens revoked by their holder",
            value=self.trust.tokens.burned,
        )
        refusals = CounterMetricFamily(
            "nightproxy_oidc_refusals",
            "CI job tokens refused by the trusted-publishing exchange, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(self.trust.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/_/oidc/audience", audience)
    app.router.add_post("/_/oidc/mint-token", mint_token)
    # Where pypa/gh-action-pypi-publish sends the exchange (the public index answers both).
    app.router.add_post("/_/oidc/github/mint-token", mint_token)
    app.router.add_post("/_/oidc/burn-token", burn_token)


def trusted_publishers(config: Config) -> tuple[TrustedPublisher, ...]:
    """Every ``publishers.<project>.github`` entry of every hosted feed."""
    return tuple(
        TrustedPublisher(
            upstream.name,
            project,
            github.repository,
            github.workflow,
            github.environment,
            github.repository_owner_id,
        )
        for upstream in config.upstreams
        if isinstance(upstream.options, HostedOptions)
        for project, publisher in sorted(upstream.options.publishers.items())
        for github in publisher.github
    )


def setup_trusted_publishing(app: web.Application) -> None:
    """The exchange's routes and service, if any hosted feed names a GitHub publisher.

    Without one, ``/_/oidc/`` is not found, which the clients read as "this index does not
    do trusted publishing".
    """
    if not trusted_publishers(app[keys.CONFIG]):
        return
    app.cleanup_ctx.append(_trust_ctx)
    # After every cleanup context's start: the hosted feeds exist by then, whichever context
    # made them.
    app.on_startup.append(_accept_minted_tokens)
    setup_routes(app)


async def _trust_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    # A fleet shares its ledger (seen jti's, minted tokens) through the store.
    tier = app[keys.SHARED]
    ledger = None if tier is None else SharedTrustLedger(config.cache.dir / LEDGER_FILENAME)
    trust = TrustedPublishing(
        app[keys.SESSION],
        config.publishing.oidc,
        trusted_publishers(config),
        config.cache.dir,
        ledger=ledger,
    )
    await trust.open()
    if ledger is not None and tier is not None:
        ledger.attach(tier)
    app[TRUST] = trust
    app[keys.METRICS].registry.register(TrustStats(trust))
    yield
    await trust.close()


async def _accept_minted_tokens(app: web.Application) -> None:
    trust = app[TRUST]
    for name, feed in app.get(keys.FEEDS, {}).items():
        feed.auth.add_source(MintedTokenSource(trust, name))
