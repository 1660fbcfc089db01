"""The trust ledger of a fleet: seen ``jti``s and minted-token hashes in the shared store too.

Each replica keeps its own ledger (``TrustLedger``) and, once attached to the shared tier,
also writes to the store, so that a job token accepted by one replica is a replay on every
other, and a token minted by one replica (only its sha256 digest is ever stored) is accepted,
and revoked, on all of them:

- ``trust/jti/<sha256 of the jti>``: created with ``If-None-Match: *``; the replica whose write
  loses has seen a replay;
- ``trust/minted/<digest>.json``: the grants, publisher, times and whether it was revoked.

When the store cannot answer (down, slow), a replica decides on its own ledger alone: a
``jti`` replayed to another replica during a store outage within the token's few minutes of
life is not caught. Records older than a day are removed by the shared tier's pruner.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from nightproxy.cache.shared.bridge import StoreBridge
from nightproxy.objectstore import (
    ObjectNotFoundError,
    ObjectStore,
    PreconditionFailedError,
)
from nightproxy.trust.claims import Grant
from nightproxy.trust.ledger import MintedRecord, TrustLedger

if TYPE_CHECKING:
    from nightproxy.cache.shared.tier import SharedTier

JTI = "trust/jti/"
MINTED = "trust/minted/"


def _record_json(record: MintedRecord) -> bytes:
    return json.dumps(
        {
            "grants": [[g.feed, g.project] for g in record.grants],
            "publisher": record.publisher,
            "issued": record.issued,
            "expires": record.expires,
            "revoked": record.revoked,
        }
    ).encode()


def _record_from(body: bytes) -> MintedRecord | None:
    try:
        data = json.loads(body)
        return MintedRecord(
            tuple(Grant(str(feed), str(project)) for feed, project in data["grants"]),
            str(data["publisher"]),
            float(data["issued"]),
            float(data["expires"]),
            bool(data["revoked"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


class SharedTrustLedger(TrustLedger):
    _store: ObjectStore | None = None
    _bridge: StoreBridge | None = None

    def attach(self, tier: SharedTier) -> None:
        """Use the shared store from now on (on the event loop, once the tier exists)."""
        self._store = tier.store
        self._bridge = StoreBridge(tier, "trusted publishing")

    # -- jti ------------------------------------------------------------------------------------

    def claim_jti(self, jti: str, expires: float, now: float) -> bool:
        if not super().claim_jti(jti, expires, now):
            return False
        if self._bridge is None:
            return True
        key = JTI + hashlib.sha256(jti.encode()).hexdigest()
        return self._bridge.wait(self._claim(key, expires), True)

    async def _claim(self, key: str, expires: float) -> bool:
        assert self._store is not None
        try:
            await self._store.put(
                key, json.dumps({"expires": expires}).encode(), if_none_match=True
            )
        except PreconditionFailedError:
            return False
        return True

    # -- minted tokens --------------------------------------------------------------------------

    def add_minted(
        self, digest: str, grants: tuple[Grant, ...], publisher: str, issued: float, expires: float
    ) -> None:
        super().add_minted(digest, grants, publisher, issued, expires)
        if self._bridge is not None and self._store is not None:
            record = MintedRecord(grants, publisher, issued, expires, revoked=False)
            self._bridge.send(self._put(digest, record))

    async def _put(self, digest: str, record: MintedRecord) -> None:
        assert self._store is not None
        await self._store.put(
            f"{MINTED}{digest}.json", _record_json(record), content_type="application/json"
        )

    async def _get(self, digest: str) -> tuple[MintedRecord | None, str | None]:
        assert self._store is not None
        try:
            body, info = await self._store.get(f"{MINTED}{digest}.json", limit=64 * 1024)
        except ObjectNotFoundError:
            return None, None
        return _record_from(body), info.etag

    def minted(self, digest: str) -> MintedRecord | None:
        """This replica's record, or the fleet's; revoked if either says so."""
        local = super().minted(digest)
        if self._bridge is None:
            return local
        shared, _etag = self._bridge.wait(self._get(digest), (None, None))
        if shared is None:
            return local
        if local is not None and local.revoked and not shared.revoked:
            return local
        return shared

    def revoke(self, digest: str) -> bool:
        revoked_here = super().revoke(digest)
        if self._bridge is None:
            return revoked_here
        return self._bridge.wait(self._revoke(digest), False) or revoked_here

    async def _revoke(self, digest: str) -> bool:
        assert self._store is not None
        for _try in range(3):
            record, etag = await self._get(digest)
            if record is None or etag is None:
                return False
            revoked = MintedRecord(
                record.grants, record.publisher, record.issued, record.expires, revoked=True
            )
            try:
                await self._store.put(
                    f"{MINTED}{digest}.json",
                    _record_json(revoked),
                    if_match=etag,
                    content_type="application/json",
                )
            except PreconditionFailedError:
                continue  # written meanwhile (another revocation): read it again
            return True
        return True
