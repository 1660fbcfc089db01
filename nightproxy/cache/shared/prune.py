"""The shared tier's budget (``max_size``, ``max_age``), enforced by one replica at a time.

Whoever holds the ``prune`` lease lists the blobs, orders them by last use across the fleet
(the later of a blob's upload and every replica's ``usage/`` record), and removes the least
recently used until the tier fits ``max_size``, plus any unused for ``max_age``. A victim is
first marked ``doomed/``, then, after a grace, spared if any live ``readers/`` object lists it
(see ``readers``): no read in flight anywhere is ever cut short. The work stops as soon as the lease
is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from nightproxy.cache.shared.blobs import BLOBS, blob_key, sha_of_blob_key
from nightproxy.cache.shared.readers import DOOMED, READERS, READERS_TTL, USAGE
from nightproxy.objectstore import ObjectNotFoundError, StoreError
from nightproxy.objectstore.lease import Holder, LeaseKeeper
from nightproxy.objectstore.wire import store_age

if TYPE_CHECKING:
    from nightproxy.cache.shared.tier import SharedTier

log = logging.getLogger(__name__)

PRUNE_LEASE = "prune"
PRUNE_LEASE_TTL = 60.0
TRUST = "trust/"
#: Seconds after which a seen jti or a minted token's record is of no use any more.
RECORD_AGE = 86400.0


@dataclass
class PruneReport:
    total_before: int = 0
    total_after: int = 0
    deleted: list[str] = field(default_factory=list)
    #: Victims left in place because a replica was reading them.
    spared: list[str] = field(default_factory=list)
    #: Trusted-publishing records past their use removed.
    expired_records: int = 0


def _timestamp(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


async def _json_docs(tier: SharedTier, prefix: str) -> list[tuple[dict[str, object], float]]:
    """Every JSON object under ``prefix`` with its age by the store's clock."""
    docs: list[tuple[dict[str, object], float]] = []
    async for info in tier.store.list_objects(prefix):
        try:
            async with tier.store.open(info.key) as reader:
                body = await reader.read(16 * 1024 * 1024)
                age = store_age(reader.response.headers, 0.0)
        except ObjectNotFoundError:
            continue
        with contextlib.suppress(ValueError):
            data = json.loads(body)
            if isinstance(data, dict):
                docs.append((data, age))
    return docs


async def _last_uses(tier: SharedTier) -> dict[str, float]:
    with contextlib.suppress(StoreError):
        await tier.readers.flush_usage()
    merged: dict[str, float] = {}
    for data, _age in await _json_docs(tier, USAGE):
        used = data.get("used")
        if isinstance(used, dict):
            for sha, when in used.items():
                if isinstance(when, int | float):
                    merged[str(sha)] = max(merged.get(str(sha), 0.0), float(when))
    return merged


async def _being_read(tier: SharedTier) -> set[str]:
    reading: set[str] = set()
    for data, age in await _json_docs(tier, READERS):
        listed = data.get("reading")
        if age <= READERS_TTL + 1.0 and isinstance(listed, list):
            reading.update(str(sha) for sha in listed)
    return reading


def choose_victims(
    blobs: dict[str, tuple[int, float]], *, max_size: int, max_age: float, now: float
) -> list[str]:
    """Least recently used first: every blob unused for ``max_age``, then more until the rest
    fits ``max_size``. ``blobs``: sha256 -> (size, last use)."""
    order = sorted(blobs, key=lambda sha: (blobs[sha][1], sha))
    total = sum(size for size, _ in blobs.values())
    victims: list[str] = []
    for sha in order:
        size, used = blobs[sha]
        too_old = max_age > 0 and now - used > max_age
        too_big = max_size > 0 and total > max_size
        if not (too_old or too_big):
            continue
        victims.append(sha)
        total -= size
    return victims


async def _expire_records(tier: SharedTier, keeper: LeaseKeeper) -> int:
    """Remove trusted-publishing records (``trust/``) written over ``RECORD_AGE`` ago: the
    tokens they are about live minutes."""
    cutoff = time.time() - RECORD_AGE
    removed = 0
    async for info in tier.store.list_objects(TRUST):
        if keeper.lost.is_set():
            break
        if _timestamp(info.last_modified) < cutoff:
            await tier.store.delete(info.key)
            removed += 1
    return removed


async def prune_once(tier: SharedTier) -> PruneReport | None:
    """Enforce the budget once, if no other replica is doing so; None when one is."""
    claim = await tier.leases.acquire(PRUNE_LEASE, PRUNE_LEASE_TTL)
    if isinstance(claim, Holder):
        return None
    report = PruneReport()
    async with LeaseKeeper(tier.leases, claim) as keeper:
        uses = await _last_uses(tier)
        blobs: dict[str, tuple[int, float]] = {}
        async for info in tier.store.list_objects(BLOBS):
            sha = sha_of_blob_key(info.key)
            if sha is not None:
                used = max(_timestamp(info.last_modified), uses.get(sha, 0.0))
                blobs[sha] = (max(info.size, 0), used)
        report.total_before = report.total_after = sum(s for s, _ in blobs.values())
        victims = choose_victims(
            blobs,
            max_size=tier.settings.max_size,
            max_age=tier.settings.max_age,
            now=time.time(),
        )
        marked: list[str] = []
        try:
            for sha in victims:
                if keeper.lost.is_set():
                    return report
                await tier.store.put(DOOMED + sha, b"", content_type="text/plain")
                marked.append(sha)
            if marked:
                # A read that started just before a mark landed (so missed it) has announced
                # itself by now, or stopped using the blob.
                await asyncio.sleep(2 * tier.settings.announce_within)
            reading = await _being_read(tier)
            for sha in marked:
                if keeper.lost.is_set():
                    break
                if sha in reading:
                    report.spared.append(sha)
                    continue
                await tier.store.delete(blob_key(sha))
                report.deleted.append(sha)
                report.total_after -= blobs[sha][0]
        finally:
            for sha in marked:
                with contextlib.suppress(StoreError):
                    await tier.store.delete(DOOMED + sha)
        if not keeper.lost.is_set():
            report.expired_records = await _expire_records(tier, keeper)
    tier.stats["pruned"] += len(report.deleted)
    if report.deleted:
        log.info(
            "shared tier: removed %d blobs (%d -> %d bytes), spared %d being read",
            len(report.deleted),
            report.total_before,
            report.total_after,
            len(report.spared),
        )
    return report


async def prune_loop(tier: SharedTier) -> None:
    interval = tier.settings.prune_interval
    while True:
        # Jittered so that replicas started together do not all ask for the lease at once.
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))  # noqa: S311
        if tier.health.skip():
            continue
        try:
            await prune_once(tier)
        except StoreError as exc:
            log.warning("shared tier budget not enforced this time: %s", exc)
