"""Minted upload tokens and the ledger they live in: lifetime, scope, revocation, hashing,
and sharing between processes and restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from nightproxy.config import token_digest
from nightproxy.trust.claims import Grant, Match
from nightproxy.trust.ledger import FILENAME, TrustLedger
from nightproxy.trust.minted import TOKEN_PREFIX, MintedTokens

MATCH = Match((Grant("community", "octo-lib"),), "github:octo-org/octo-lib:nightly.yml")


class WallClock:
    """Unix time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


OpenLedger = Callable[[], TrustLedger]


@pytest.fixture
async def open_ledger(tmp_path: Path) -> AsyncIterator[OpenLedger]:
    """Ledgers on one file: each is what one worker process (or one restart) opens."""
    opened: list[TrustLedger] = []

    def open_one() -> TrustLedger:
        ledger = TrustLedger(tmp_path / FILENAME)
        ledger.open()
        opened.append(ledger)
        return ledger

    yield open_one
    for ledger in opened:
        ledger.close()


async def test_a_minted_token_lives_its_lifetime_and_no_longer(open_ledger: OpenLedger) -> None:
    """Valid until ``expires`` (15 minutes by default), refused from then on."""
    clock = WallClock()
    tokens = MintedTokens(open_ledger(), clock=clock)
    minted = await tokens.mint(MATCH)
    assert minted.token.startswith(TOKEN_PREFIX)
    assert minted.expires == int(clock.now) + 15 * 60
    clock.now += 15 * 60 - 1
    grant = await tokens.check(minted.token)
    assert grant is not None
    assert grant.publisher == MATCH.publisher
    clock.now += 1
    assert await tokens.check(minted.token) is None


async def test_a_minted_token_is_scoped_to_its_publishers_projects(
    open_ledger: OpenLedger,
) -> None:
    """The grant allows the matched project of the matched feed, and nothing else."""
    tokens = MintedTokens(open_ledger(), clock=WallClock())
    grant = await tokens.check((await tokens.mint(MATCH)).token)
    assert grant is not None
    assert grant.allows("community", "octo-lib")
    assert not grant.allows("community", "numpy")
    assert not grant.allows("other-feed", "octo-lib")
    assert grant.projects("community") == ("octo-lib",)


async def test_a_burned_token_is_refused_at_once(open_ledger: OpenLedger) -> None:
    """Revocation takes effect for the next check, also in another worker's ledger."""
    clock = WallClock()
    tokens = MintedTokens(open_ledger(), clock=clock)
    other_worker = MintedTokens(open_ledger(), clock=clock)
    minted = await tokens.mint(MATCH)
    assert await other_worker.check(minted.token) is not None
    assert await other_worker.burn(minted.token)
    assert await tokens.check(minted.token) is None


async def test_unknown_and_configured_looking_tokens_are_not_minted_ones(
    open_ledger: OpenLedger,
) -> None:
    """Tokens never minted here are neither accepted nor burnable."""
    tokens = MintedTokens(open_ledger(), clock=WallClock())
    assert await tokens.check(TOKEN_PREFIX + "forged") is None
    assert await tokens.check("a-configured-upload-token") is None
    assert not await tokens.burn(TOKEN_PREFIX + "forged")


async def test_minted_tokens_survive_a_restart_and_are_stored_only_as_hashes(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    """A restarted server still honours a token it minted, and the ledger's files hold its
    sha256, never the token."""
    clock = WallClock()
    first = open_ledger()
    minted = await MintedTokens(first, clock=clock).mint(MATCH)
    first.close()
    restarted = MintedTokens(open_ledger(), clock=clock)
    assert await restarted.check(minted.token) is not None
    stored = b"".join(p.read_bytes() for p in tmp_path.glob(FILENAME + "*"))
    assert token_digest(minted.token).encode() in stored
    assert minted.token.encode() not in stored
    assert minted.token.removeprefix(TOKEN_PREFIX).encode() not in stored


async def test_a_jti_is_claimed_by_exactly_one_of_racing_workers(
    open_ledger: OpenLedger,
) -> None:
    """Two workers exchanging the same token at the same moment: one wins, one sees a replay."""
    ledgers = [open_ledger() for _ in range(4)]
    results = await asyncio.gather(
        *(asyncio.to_thread(ledger.claim_jti, "jti-1", 2000.0, 1000.0) for ledger in ledgers)
    )
    assert sorted(results) == [False, False, False, True]


async def test_a_jti_is_forgotten_once_its_token_has_expired(open_ledger: OpenLedger) -> None:
    """The ledger does not grow forever: a jti past its expiry is dropped (its token would be
    refused as expired anyway)."""
    ledger = open_ledger()
    assert ledger.claim_jti("old", 1500.0, 1000.0)
    assert not ledger.claim_jti("old", 1500.0, 1400.0)
    assert ledger.claim_jti("other", 3000.0, 2000.0)
    assert ledger.claim_jti("old", 2500.0, 2000.0)
