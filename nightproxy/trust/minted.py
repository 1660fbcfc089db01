"""Upload tokens minted for trusted publishers: random, short-lived, stored only as sha256."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from nightproxy.config import token_digest
from nightproxy.trust.claims import Grant, Match
from nightproxy.trust.ledger import TrustLedger

#: Minted tokens start with this, so that an upload's password is looked up in the ledger only
#: when it can be one, and a leaked one is recognisable for what it is.
TOKEN_PREFIX = "nightproxy-oidc-"  # noqa: S105 - a label, not a secret
#: The public index's lifetime for minted tokens.
DEFAULT_LIFETIME = 15 * 60.0
#: Random bytes per token (256 bits).
TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    expires: int  # unix time


@dataclass(frozen=True, slots=True)
class MintedGrant:
    """What a presented minted token may do, and who it was minted for."""

    grants: tuple[Grant, ...]
    publisher: str
    expires: float

    def allows(self, feed: str, project: str) -> bool:
        return Grant(feed, project) in self.grants

    def projects(self, feed: str) -> tuple[str, ...]:
        return tuple(g.project for g in self.grants if g.feed == feed)


class MintedTokens:
    def __init__(
        self,
        ledger: TrustLedger,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.lifetime = lifetime
        self.clock = clock
        self.minted = 0
        self.burned = 0

    async def mint(self, match: Match) -> MintedToken:
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        issued = self.clock()
        # Whole seconds: the answer's ``expires`` is an integer, and the token must not outlive it.
        expires = math.floor(issued + self.lifetime)
        await asyncio.to_thread(
            self.ledger.add_minted,
            token_digest(token),
            match.grants,
            match.publisher,
            issued,
            float(expires),
        )
        self.minted += 1
        return MintedToken(token, expires)

    async def check(self, token: str) -> MintedGrant | None:
        """The grant of a live minted token; None if unknown, expired or revoked."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        record = await asyncio.to_thread(self.ledger.minted, token_digest(token))
        if record is None or record.revoked or self.clock() >= record.expires:
            return None
        return MintedGrant(record.grants, record.publisher, record.expires)

    async def burn(self, token: str) -> bool:
        """Revoke a minted token at once; False if it was never minted here."""
        if not token.startswith(TOKEN_PREFIX):
            return False
        burned = await asyncio.to_thread(self.ledger.revoke, token_digest(token))
        self.burned += burned
        return burned
