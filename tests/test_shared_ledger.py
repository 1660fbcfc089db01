"""Trusted publishing's ledger shared by replicas through a real S3 store (SeaweedFS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from nightproxy.cache.shared.settings import SharedSettings
from nightproxy.cache.shared.tier import SharedTier
from nightproxy.trust.claims import Grant
from nightproxy.trust.shared_ledger import SharedTrustLedger
from tests.seaweed import SeaweedServer


@pytest.fixture
async def ledgers(
    seaweed: SeaweedServer, s3_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[SharedTrustLedger, SharedTrustLedger]]:
    """Two replicas' ledgers: their own files, one store."""
    store = seaweed.store_settings(s3_prefix)
    async with aiohttp.ClientSession() as session:
        made = []
        for name in ("a", "b"):
            tier = SharedTier(session, SharedSettings(store=store, replica_id=name, peer_url=None))
            ledger = SharedTrustLedger(tmp_path / f"{name}.sqlite")
            await asyncio.to_thread(ledger.open)
            ledger.attach(tier)
            made.append((tier, ledger))
        yield made[0][1], made[1][1]
        for tier, ledger in made:
            await asyncio.to_thread(ledger.close)
            await tier.close()


async def test_a_jti_accepted_by_one_replica_is_a_replay_on_another(
    ledgers: tuple[SharedTrustLedger, SharedTrustLedger],
) -> None:
    """The same job token's jti: accepted once by A, refused by B and by A again."""
    a, b = ledgers
    assert await asyncio.to_thread(a.claim_jti, "jti-1", 2e9, 1e9)
    assert not await asyncio.to_thread(b.claim_jti, "jti-1", 2e9, 1e9)
    assert not await asyncio.to_thread(a.claim_jti, "jti-1", 2e9, 1e9)
    assert await asyncio.to_thread(b.claim_jti, "jti-2", 2e9, 1e9)


async def test_a_token_minted_on_one_replica_is_known_and_revoked_everywhere(
    ledgers: tuple[SharedTrustLedger, SharedTrustLedger],
) -> None:
    """Minted on A (by digest), found on B; burned on B, revoked as A sees it too."""
    a, b = ledgers
    grants = (Grant("nightly", "demo"),)
    await asyncio.to_thread(a.add_minted, "d" * 64, grants, "github:o/r", 1e9, 2e9)
    async with asyncio.timeout(20):
        while (record := await asyncio.to_thread(b.minted, "d" * 64)) is None:
            await asyncio.sleep(0.05)  # A writes to the store in the background
    assert (record.grants, record.publisher, record.revoked) == (grants, "github:o/r", False)
    assert await asyncio.to_thread(b.revoke, "d" * 64)
    seen_by_a = await asyncio.to_thread(a.minted, "d" * 64)
    assert seen_by_a is not None
    assert seen_by_a.revoked
    assert await asyncio.to_thread(b.minted, "e" * 64) is None
