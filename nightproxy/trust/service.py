"""Trusted publishing as one service: verify a job's token, mint an upload token for it, and
answer whether a presented upload token is a live minted one."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
from packaging.utils import canonicalize_name

from nightproxy.config import OidcConfig
from nightproxy.hosted.auth import Identity
from nightproxy.trust.claims import TrustedPublisher
from nightproxy.trust.keys import IssuerKeys
from nightproxy.trust.ledger import FILENAME, TrustLedger
from nightproxy.trust.minted import MintedGrant, MintedToken, MintedTokens
from nightproxy.trust.verify import TokenVerifier

log = logging.getLogger(__name__)


def _issuer_context(ca_bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_bundle))


class TrustedPublishing:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: OidcConfig,
        publishers: Sequence[TrustedPublisher],
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        ledger: TrustLedger | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.publishers = tuple(publishers)
        # A fleet passes a SharedTrustLedger (trust.shared_ledger) on the same file.
        self.ledger = ledger if ledger is not None else TrustLedger(state_dir / FILENAME)
        self.clock = clock
        self.monotonic = monotonic
        self.tokens = MintedTokens(self.ledger, lifetime=settings.token_lifetime, clock=clock)
        self._verifier: TokenVerifier | None = None

    @property
    def audience(self) -> str:
        return self.settings.audience

    @property
    def verifier(self) -> TokenVerifier:
        if self._verifier is None:
            raise RuntimeError("trusted publishing is not open")
        return self._verifier

    @property
    def refusals(self) -> Counter[str]:
        """Refused job tokens by reason."""
        return self._verifier.refusals if self._verifier is not None else Counter()

    async def open(self) -> None:
        ca = self.settings.ca_bundle
        context = None if ca is None else await asyncio.to_thread(_issuer_context, ca)
        await asyncio.to_thread(self.ledger.open)
        keys = IssuerKeys(
            self.session, self.settings.issuer, ssl_context=context, monotonic=self.monotonic
        )
        self._verifier = TokenVerifier(
            keys,
            self.ledger,
            audience=self.settings.audience,
            publishers=self.publishers,
            clock=self.clock,
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.ledger.close)

    async def exchange(self, job_token: str) -> tuple[MintedToken, str]:
        """A minted upload token for a verified job token, and who it was minted for.

        Raises ``TokenRefusedError`` or ``KeysUnavailableError`` (``verify``).
        """
        verified = await self.verifier.verify(job_token)
        minted = await self.tokens.mint(verified.match)
        log.info(
            "minted an upload token for %s (%s), valid until %d",
            verified.match.publisher,
            ", ".join(f"{g.feed}/{g.project}" for g in verified.match.grants),
            minted.expires,
        )
        return minted, verified.match.publisher

    async def check(self, token: str) -> MintedGrant | None:
        return await self.tokens.check(token)

    async def burn(self, token: str) -> bool:
        burned = await self.tokens.burn(token)
        if burned:
            log.info("a minted upload token was burned (revoked) by its holder")
        return burned


class MintedTokenSource:
    """A hosted feed's way to accept minted tokens (``FeedAuth.add_source``): a live token
    granted projects of this feed is the identity of its trusted publisher."""

    def __init__(self, trust: TrustedPublishing, feed: str) -> None:
        self.trust = trust
        self.feed = feed

    async def identify(self, token: str) -> Identity | None:
        grant = await self.trust.check(token)
        if grant is None:
            return None
        projects = frozenset(canonicalize_name(p) for p in grant.projects(self.feed))
        if not projects:
            return None
        return Identity(label=grant.publisher, projects=projects)
