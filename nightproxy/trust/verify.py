"""Checking a CI job's OIDC token, as strictly as the public index does.

PyJWT checks the signature (RS256 with a key the issuer publishes), ``iss``, ``aud`` and the
times; then the identity claims are matched to publishers (``claims``), and last the token's
``jti`` is claimed in the ledger so that it is accepted once only, by any worker, across
restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from nightproxy.trust.claims import (
    Match,
    Refusal,
    TokenRefusedError,
    TrustedPublisher,
    match_publishers,
    reported,
)
from nightproxy.trust.keys import ALGORITHM, IssuerKeys
from nightproxy.trust.ledger import TrustLedger

log = logging.getLogger(__name__)

#: Seconds of clock difference forgiven on ``exp``, ``nbf`` and ``iat``.
LEEWAY = 30.0
#: A GitHub job token is about 1 KiB; anything far larger is not one, and is not parsed.
MAX_TOKEN_LENGTH = 16 * 1024
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]


@dataclass(frozen=True, slots=True)
class Verified:
    claims: Mapping[str, Any]
    match: Match


def _invalid(reason: str, description: str, claims: Mapping[str, object]) -> TokenRefusedError:
    return TokenRefusedError(Refusal(reason, description, claims, code="invalid-token"))


def _unverified_claims(token: str) -> dict[str, Any]:
    """The payload as the token states it, only to report why it was refused."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return payload if isinstance(payload, dict) else {}


class TokenVerifier:
    def __init__(
        self,
        keys: IssuerKeys,
        ledger: TrustLedger,
        *,
        audience: str,
        publishers: Sequence[TrustedPublisher],
        clock: Callable[[], float] = time.time,
        leeway: float = LEEWAY,
    ) -> None:
        self.keys = keys
        self.ledger = ledger
        self.issuer = keys.issuer
        self.audience = audience
        self.publishers = tuple(publishers)
        self.clock = clock
        self.leeway = leeway
        #: Refusals by reason, for ``/metrics``.
        self.refusals: Counter[str] = Counter()

    def record_refusal(self, refusal: Refusal) -> None:
        """Count and log a refusal: its reason and deciding claims, never the token."""
        self.refusals[refusal.reason] += 1
        shown = json.dumps(refusal.claims, sort_keys=True, default=str)
        log.warning(
            "trusted publishing refused a token (%s): %s; claims %s",
            refusal.reason,
            refusal.description,
            shown,
            extra={"fields": {"reason": refusal.reason, "claims": dict(refusal.claims)}},
        )

    async def verify(self, token: str) -> Verified:
        """The verified claims and what they may publish.

        Raises ``TokenRefusedError`` (counted and logged) if anything is wrong, and
        ``KeysUnavailableError`` if the issuer's keys cannot be had.
        """
        try:
            return await self._verify(token)
        except TokenRefusedError as refused:
            self.record_refusal(refused.refusal)
            raise

    async def _verify(self, token: str) -> Verified:
        if len(token) > MAX_TOKEN_LENGTH:
            raise _invalid("malformed", "the token is too long to be a CI job's token", {})
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed", "the token is not a JWT", {}) from None
        alg, kid = header.get("alg"), header.get("kid")
        shown_header = reported(header, ("alg", "kid"))
        if alg != ALGORITHM:
            stated = {**shown_header, **reported(_unverified_claims(token))}
            raise _invalid("algorithm", f"the token must be signed with {ALGORITHM}", stated)
        if not isinstance(kid, str) or not kid:
            raise _invalid("malformed", "the token's header names no key (kid)", shown_header)
        key = await self.keys.key_for(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": REQUIRED_CLAIMS,
                    "strict_aud": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise self._decode_refusal(exc, token) from None
        match = match_publishers(claims, self.publishers)
        if isinstance(match, Refusal):
            raise TokenRefusedError(match)
        await self._claim_jti(claims)
        return Verified(claims, match)

    def _decode_refusal(self, exc: jwt.PyJWTError, token: str) -> TokenRefusedError:
        stated = _unverified_claims(token)
        audience = self.audience
        cases: list[tuple[type[jwt.PyJWTError], str, str, tuple[str, ...]]] = [
            (jwt.ExpiredSignatureError, "expired", "the token has expired", ("exp",)),
            (
                jwt.ImmatureSignatureError,
                "not-yet-valid",
                "the token is not valid yet (nbf or iat in the future)",
                ("nbf", "iat"),
            ),
            (jwt.InvalidAudienceError, "audience", f"the audience must be {audience}", ("aud",)),
            (jwt.InvalidIssuerError, "issuer", f"the issuer must be {self.issuer}", ("iss",)),
            (jwt.InvalidSignatureError, "signature", "the token's signature is not valid", ()),
            (
                jwt.InvalidAlgorithmError,
                "algorithm",
                f"the token must be signed with {ALGORITHM}",
                (),
            ),
        ]
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return _invalid("missing-claim", f"the token has no {exc.claim!r} claim", {})
        for kind, reason, description, names in cases:
            if isinstance(exc, kind):
                return _invalid(reason, description, reported(stated, (*names, "repository")))
        return _invalid("malformed", f"the token is not valid: {type(exc).__name__}", {})

    async def _claim_jti(self, claims: Mapping[str, Any]) -> None:
        jti, exp = claims["jti"], claims["exp"]
        if not isinstance(jti, str) or not jti:
            raise _invalid("missing-claim", "the token's jti is not a string", {})
        # Kept as long as the token could still be accepted, leeway included.
        fresh = await asyncio.to_thread(
            self.ledger.claim_jti, jti, float(exp) + self.leeway, self.clock()
        )
        if not fresh:
            raise TokenRefusedError(
                Refusal(
                    "replay",
                    "this token was already exchanged (its jti was seen before)",
                    reported(claims, ("jti", "repository", "exp")),
                    code="invalid-token",
                )
            )
