"""Verifying GitHub Actions OIDC tokens against a real local issuer over HTTPS.

Each refusal the public index makes is a test here: the token is made by the local issuer
(or forged as an attacker would), and the verifier fetches the keys over the network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from nightproxy.trust.claims import Grant, TokenRefusedError, TrustedPublisher
from nightproxy.trust.keys import IssuerKeys, KeysUnavailableError
from nightproxy.trust.ledger import FILENAME, TrustLedger
from nightproxy.trust.verify import TokenVerifier, Verified
from tests.oidc_issuer import REPOSITORY, WORKFLOW, LocalCA, OidcIssuer

PUBLISHERS = [
    TrustedPublisher("community", "octo-lib", REPOSITORY, WORKFLOW),
    TrustedPublisher("community", "octo-env", REPOSITORY, WORKFLOW, environment="nightly"),
    TrustedPublisher("community", "numpy", "numpy/numpy", "wheels.yml"),
]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeVerifier = Callable[..., TokenVerifier]


@pytest.fixture
async def make_verifier(
    oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path
) -> AsyncIterator[MakeVerifier]:
    """Verifiers of ``oidc_issuer``'s tokens sharing one ledger file, as workers would."""
    sessions: list[aiohttp.ClientSession] = []
    ledgers: list[TrustLedger] = []

    def make(
        *,
        monotonic: Callable[[], float] = time.monotonic,
        publishers: list[TrustedPublisher] = PUBLISHERS,
        issuer: str | None = None,
    ) -> TokenVerifier:
        session = aiohttp.ClientSession()
        sessions.append(session)
        ledger = TrustLedger(tmp_path / FILENAME)
        ledger.open()
        ledgers.append(ledger)
        keys = IssuerKeys(
            session,
            issuer or oidc_issuer.url,
            ssl_context=local_ca.client_context(),
            monotonic=monotonic,
        )
        return TokenVerifier(keys, ledger, audience="nightproxy", publishers=publishers)

    yield make
    for session in sessions:
        await session.close()
    for ledger in ledgers:
        ledger.close()


async def refusal_of(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRefusedError) as caught:
        await verifier.verify(token)
    return caught.value.refusal.reason


async def test_a_genuine_job_token_is_verified(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """A token of the configured repository's workflow is accepted and granted its project."""
    verified = await make_verifier().verify(oidc_issuer.sign(oidc_issuer.job_claims()))
    assert isinstance(verified, Verified)
    assert verified.match.grants == (Grant("community", "octo-lib"),)
    assert verified.claims["repository"] == REPOSITORY


async def test_the_environment_grants_the_projects_that_name_it(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """A job in the ``nightly`` environment also gets the project whose publisher names it."""
    token = oidc_issuer.sign(oidc_issuer.job_claims(environment="nightly"))
    verified = await make_verifier().verify(token)
    assert verified.match.grants == (
        Grant("community", "octo-env"),
        Grant("community", "octo-lib"),
    )


async def test_wrong_audience_is_refused(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """A token minted for another audience (another index) is refused."""
    token = oidc_issuer.sign(oidc_issuer.job_claims(aud="pypi"))
    assert await refusal_of(make_verifier(), token) == "audience"


async def test_an_audience_list_is_refused_even_if_it_contains_ours(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """``aud`` must be exactly the audience, not a list that includes it."""
    token = oidc_issuer.sign(oidc_issuer.job_claims(aud=["nightproxy", "pypi"]))
    assert await refusal_of(make_verifier(), token) == "audience"


async def test_wrong_issuer_is_refused(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """A token whose ``iss`` is not the configured issuer is refused, even if well signed."""
    token = oidc_issuer.sign(oidc_issuer.job_claims(iss="https://issuer.invalid"))
    assert await refusal_of(make_verifier(), token) == "issuer"


async def test_expired_token_is_refused(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """A token past its ``exp`` (beyond the leeway) is refused."""
    now = int(time.time())
    claims = oidc_issuer.job_claims(iat=now - 900, nbf=now - 900, exp=now - 300)
    assert await refusal_of(make_verifier(), oidc_issuer.sign(claims)) == "expired"


async def test_nbf_in_the_future_is_refused(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """A token not valid before some future time is refused now."""
    claims = oidc_issuer.job_claims(nbf=int(time.time()) + 600)
    assert await refusal_of(make_verifier(), oidc_issuer.sign(claims)) == "not-yet-valid"


async def test_a_token_without_exp_iat_or_jti_is_refused(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """``exp``, ``iat`` and ``jti`` are required claims."""
    verifier = make_verifier()
    for name in ("exp", "iat", "jti"):
        claims = oidc_issuer.job_claims()
        del claims[name]
        assert await refusal_of(verifier, oidc_issuer.sign(claims)) == "missing-claim"


async def test_unknown_kid_refreshes_the_keys_once_then_is_refused(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """A kid the issuer does not publish forces one refresh of the key set, then a refusal;
    repeating it at once does not make the issuer's keys be fetched again."""
    clock = Clock()
    verifier = make_verifier(monotonic=clock)
    await verifier.verify(oidc_issuer.sign(oidc_issuer.job_claims()))
    assert oidc_issuer.jwks_fetches == 1
    oidc_issuer.add_key("unpublished", publish=False)
    clock.now += 60
    token = oidc_issuer.sign(oidc_issuer.job_claims(), kid="unpublished")
    assert await refusal_of(verifier, token) == "unknown-key"
    assert oidc_issuer.jwks_fetches == 2
    assert await refusal_of(verifier, token) == "unknown-key"
    assert oidc_issuer.jwks_fetches == 2


async def test_a_rotated_key_is_picked_up_by_the_forced_refresh(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """When the issuer starts signing with a new key, its first token triggers the refresh
    that finds it, and is accepted."""
    clock = Clock()
    verifier = make_verifier(monotonic=clock)
    await verifier.verify(oidc_issuer.sign(oidc_issuer.job_claims()))
    oidc_issuer.add_key("key-2")
    clock.now += 60
    verified = await verifier.verify(oidc_issuer.sign(oidc_issuer.job_claims(), kid="key-2"))
    assert verified.match.grants == (Grant("community", "octo-lib"),)
    assert oidc_issuer.jwks_fetches == 2


async def test_tampered_payload_fails_the_signature(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """Claims changed after signing (another repository) break the signature."""
    token = oidc_issuer.sign(oidc_issuer.job_claims(repository="numpy/numpy"))
    honest = oidc_issuer.sign(oidc_issuer.job_claims())
    header, payload, _ = token.split(".")
    forged = ".".join([header, payload, honest.split(".")[2]])
    assert await refusal_of(make_verifier(), forged) == "signature"


async def test_a_token_signed_by_another_key_under_our_kid_is_refused(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """An attacker's own RSA key, claiming the issuer's kid, does not verify."""
    from tests.oidc_issuer import new_rsa_key

    token = oidc_issuer.sign(oidc_issuer.job_claims(), kid="key-1", key=new_rsa_key())
    assert await refusal_of(make_verifier(), token) == "signature"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A JWT put together by hand, as an attacker would: PyJWT refuses to make these."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


async def test_alg_none_is_refused(oidc_issuer: OidcIssuer, make_verifier: MakeVerifier) -> None:
    """An unsigned token (``alg: none``) is refused."""
    token = _forge({"alg": "none", "typ": "JWT", "kid": "key-1"}, oidc_issuer.job_claims(), None)
    assert await refusal_of(make_verifier(), token) == "algorithm"


async def test_hs256_signed_with_the_public_key_is_refused(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """The algorithm-confusion attack: HMAC keyed with the issuer's public key is refused."""
    public_pem = (
        oidc_issuer.keys["key-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = _forge(
        {"alg": "HS256", "typ": "JWT", "kid": "key-1"}, oidc_issuer.job_claims(), public_pem
    )
    assert await refusal_of(make_verifier(), token) == "algorithm"


async def test_garbage_is_refused_as_malformed(make_verifier: MakeVerifier) -> None:
    """Text that is not a JWT, or is absurdly long, is refused without a fetch."""
    verifier = make_verifier()
    assert await refusal_of(verifier, "not-a-jwt") == "malformed"
    assert await refusal_of(verifier, "a" * 100_000) == "malformed"
    assert verifier.keys.fetches == 0


async def test_a_replayed_jti_is_refused_also_after_a_restart(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """The same token is accepted once: again at once, or by a restarted server (a new
    verifier on the same ledger file), it is a replay."""
    token = oidc_issuer.sign(oidc_issuer.job_claims())
    first = make_verifier()
    await first.verify(token)
    assert await refusal_of(first, token) == "replay"
    first.ledger.close()
    restarted = make_verifier()
    assert await refusal_of(restarted, token) == "replay"


async def test_a_refused_token_does_not_use_up_its_jti(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """Only accepted tokens are remembered: a token refused for its workflow leaves no trace
    that could make a later, different decision about the same jti."""
    claims = oidc_issuer.job_claims()
    verifier = make_verifier(publishers=[TrustedPublisher("c", "p", REPOSITORY, "other.yml")])
    assert await refusal_of(verifier, oidc_issuer.sign(claims)) == "workflow"
    await make_verifier().verify(oidc_issuer.sign(claims))


async def test_identity_mismatches_are_refused_through_the_verifier(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier
) -> None:
    """Another repository, another workflow, a ``pull_request_target`` event, another
    environment: each is refused with its own reason."""
    verifier = make_verifier(
        publishers=[TrustedPublisher("community", "octo-lib", REPOSITORY, WORKFLOW, "nightly")]
    )
    other_repo = oidc_issuer.job_claims(repository="mallory/octo-lib", environment="nightly")
    other_workflow = oidc_issuer.job_claims(
        environment="nightly",
        job_workflow_ref=f"{REPOSITORY}/.github/workflows/ci.yml@refs/heads/main",
    )
    prt = oidc_issuer.job_claims(environment="nightly", event_name="pull_request_target")
    other_env = oidc_issuer.job_claims(environment="pr-preview")
    for claims, reason in [
        (other_repo, "repository"),
        (other_workflow, "workflow"),
        (prt, "event"),
        (other_env, "environment"),
    ]:
        assert await refusal_of(verifier, oidc_issuer.sign(claims)) == reason
    assert dict(verifier.refusals) == {
        "repository": 1,
        "workflow": 1,
        "event": 1,
        "environment": 1,
    }


async def test_refusals_are_logged_with_reason_and_claims_but_never_the_token(
    oidc_issuer: OidcIssuer, make_verifier: MakeVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    """The log says why and which claims decided, and holds no part of the token."""
    token = oidc_issuer.sign(oidc_issuer.job_claims(repository="mallory/octo-lib"))
    with caplog.at_level(logging.WARNING, logger="nightproxy.trust"):
        await refusal_of(make_verifier(), token)
    text = caplog.text
    assert "(repository)" in text
    assert "mallory/octo-lib" in text
    for part in token.split("."):
        assert part not in text


async def test_an_unreachable_issuer_is_keys_unavailable(
    make_verifier: MakeVerifier, oidc_issuer: OidcIssuer
) -> None:
    """With no keys cached and the issuer unreachable, verification cannot happen at all (an
    error of the server, not a refusal of the token)."""
    from tests.support import free_port

    verifier = make_verifier(issuer=f"https://127.0.0.1:{free_port()}")
    with pytest.raises(KeysUnavailableError):
        await verifier.verify(oidc_issuer.sign(oidc_issuer.job_claims()))


async def test_a_discovery_document_naming_another_issuer_is_not_trusted(
    make_verifier: MakeVerifier, oidc_issuer: OidcIssuer
) -> None:
    """The issuer's discovery document must name the configured issuer exactly."""
    verifier = make_verifier(issuer=oidc_issuer.url + "/")
    with pytest.raises(KeysUnavailableError):
        await verifier.verify(oidc_issuer.sign(oidc_issuer.job_claims(iss=oidc_issuer.url + "/")))
