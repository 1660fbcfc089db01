"""How one replica takes part in the shared tier: the store, who it is, where peers reach it."""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass

from nightproxy.config import SharedCacheConfig
from nightproxy.objectstore import StoreSettings


def default_replica_id() -> str:
    """Host name plus a random suffix: unique per start, readable in leases."""
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class SharedSettings:
    store: StoreSettings
    #: Names this replica in leases, the status page and metrics.
    replica_id: str
    #: Base URL (ending in ``/_fleet/``) where other replicas reach this one's peer endpoint;
    #: None: peers cannot stream from it and wait for the store instead.
    peer_url: str | None
    #: Bytes the shared tier may hold (0: no limit); enforced by one replica at a time.
    max_size: int = 0
    #: Seconds since its last use after which a shared blob is removed (0: never).
    max_age: float = 0.0
    #: Seconds a fill lease lives without renewal: how long a killed filler blocks others.
    fill_lease_ttl: float = 10.0
    #: Seconds between two runs of the shared budget's enforcement (under a lease).
    prune_interval: float = 300.0
    #: Seconds a read of a blob may take to announce itself to the pruner, which waits twice
    #: that between marking its victims and looking for readers (``readers``). Not
    #: configurable: every replica of a fleet must agree on it; tests shorten it.
    announce_within: float = 5.0

    @property
    def peer_secret(self) -> str:
        """What peers derive their token from: every replica has the store's secret key."""
        return self.store.secret_access_key or f"{self.store.bucket}/{self.store.prefix}"


def settings_from_config(shared: SharedCacheConfig, port: int) -> SharedSettings:
    """The tier's settings from ``cache.shared``, defaults filled in for this process."""
    s3 = shared.s3
    store = StoreSettings.from_url(
        shared.url,
        endpoint=s3.endpoint,
        region=s3.region,
        addressing=s3.addressing,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
    )
    peer_url = shared.peer_url or f"http://{socket.gethostname()}:{port}"
    return SharedSettings(
        store=store,
        replica_id=shared.replica_id or default_replica_id(),
        peer_url=peer_url.rstrip("/") + "/_fleet/",
        max_size=shared.max_size or 0,
        max_age=shared.max_age or 0.0,
        fill_lease_ttl=shared.fill_lease_ttl,
        prune_interval=shared.prune_interval,
    )
