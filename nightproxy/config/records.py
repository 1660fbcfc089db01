"""The typed, frozen records the rest of the proxy works with once the file is validated."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

from packaging.utils import NormalizedName

from nightproxy.config.kinds import S3Options, UpstreamConfig
from nightproxy.config.masking import safe_repr
from nightproxy.config.retention import RetentionConfig, RetentionOverride

__all__ = [
    "CacheConfig",
    "Config",
    "IndexConfig",
    "LogFormat",
    "LoggingConfig",
    "OidcConfig",
    "ProjectConfig",
    "PublishingConfig",
    "ServerConfig",
    "SharedCacheConfig",
    "TlsConfig",
    "effective_retention",
]

LogFormat = Literal["text", "json"]

LOG_FORMATS: Final[tuple[LogFormat, ...]] = get_args(LogFormat)
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The certificate chain and private key HTTPS is served with (PEM files that existed
    when the configuration was read)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Serving processes; ``"auto"``: one per CPU this process may run on.
    workers: int | Literal["auto"] = 1
    #: Client connections one serving process holds open at once; past it, new ones get 503.
    max_connections: int = 4096
    #: HTTPS when set, plain HTTP otherwise.
    tls: TlsConfig | None = None

    def worker_count(self) -> int:
        """``workers`` as a number, ``auto`` resolved for the machine this runs on."""
        if isinstance(self.workers, int):
            return self.workers
        try:
            return len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # not every platform has CPU affinity
            return os.cpu_count() or 1


@dataclass(frozen=True, slots=True, repr=False)
class SharedCacheConfig:
    """A cache tier in an object store, shared by every replica (``cache.shared``)."""

    #: ``s3://bucket/prefix/``, normalized to end in ``/``.
    url: str
    s3: S3Options = field(default_factory=S3Options)
    #: Bytes the shared tier may hold; None: no bound.
    max_size: int | None = None
    #: Seconds an object unused this long is removed; None: never.
    max_age: float | None = 14 * 86400
    #: Names this replica in leases, the status page and metrics; None: the host name and a
    #: random suffix.
    replica_id: str | None = None
    #: Where the other replicas reach this one (``http://host:port``); None:
    #: ``http://<host name>:<server.port>``.
    peer_url: str | None = None
    #: Seconds a fill lease lives unrenewed: how long a killed replica's download blocks others.
    fill_lease_ttl: float = 10.0
    #: Seconds between two enforcements of ``max_size``/``max_age`` (one replica at a time).
    prune_interval: float = 300.0

    def __repr__(self) -> str:
        return safe_repr(self)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: Path
    max_size: int = 20 * 1024**3
    #: Seconds.
    max_age: float = 14 * 86400
    #: Bytes per second below which a download counts as stalled; None: no floor.
    fill_min_rate: int | None = 1024
    #: Seconds a download may stay below ``fill_min_rate`` before it is abandoned.
    fill_stall_timeout: float = 60.0
    #: Bytes per second the background check of cached files against their sha256 may read;
    #: None: no background check.
    scrub_rate: int | None = 8 * 1024**2
    shared: SharedCacheConfig | None = None


@dataclass(frozen=True, slots=True)
class IndexConfig:
    #: Seconds an upstream page counts as fresh.
    ttl: float = 600
    #: Seconds a stale page may still be served while its upstream is failing.
    stale_if_error: float = 86400
    stale_while_revalidate: bool = False


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    #: Pinned upstream names in priority (config) order; empty means "all upstreams".
    upstreams: tuple[str, ...] = ()
    retention: RetentionOverride = field(default_factory=RetentionOverride)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: LogFormat = "text"
    level: str = "INFO"


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """The OIDC issuer whose tokens trusted publishing accepts (``publishing.oidc``)."""

    issuer: str = "https://token.actions.githubusercontent.com"
    #: The ``aud`` a token must carry, and what ``/_/oidc/audience`` answers.
    audience: str = "nightproxy"
    #: CA certificates to verify a private issuer with; None: the system's.
    ca_bundle: Path | None = None
    #: Seconds a minted upload token stays valid.
    token_lifetime: float = 15 * 60


@dataclass(frozen=True, slots=True)
class PublishingConfig:
    oidc: OidcConfig = field(default_factory=OidcConfig)


@dataclass(frozen=True, slots=True)
class Config:
    #: Absolute path of the file this came from; relative paths in it were resolved against it.
    source: Path
    server: ServerConfig
    cache: CacheConfig
    index: IndexConfig
    retention: RetentionConfig
    logging: LoggingConfig
    #: In priority order.
    upstreams: tuple[UpstreamConfig, ...]
    projects: Mapping[NormalizedName, ProjectConfig]
    publishing: PublishingConfig = field(default_factory=PublishingConfig)

    def upstream_names_for(self, project: NormalizedName) -> tuple[str, ...]:
        """The upstreams to consult for ``project``: its pinned ones, else all, by priority."""
        pinned = self.projects[project].upstreams if project in self.projects else ()
        return tuple(u.name for u in self.upstreams if not pinned or u.name in pinned)


def effective_retention(config: Config, upstream: str, project: NormalizedName) -> RetentionConfig:
    """Global settings, then the upstream's overrides, then the project's (most specific wins).

    An upstream that is no longer configured (files of it may still sit in the cache)
    contributes no overrides rather than failing retention.
    """
    result = config.retention
    for candidate in config.upstreams:
        if candidate.name == upstream:
            result = candidate.retention.apply(result)
            break
    project_config = config.projects.get(project)
    if project_config is not None:
        result = project_config.retention.apply(result)
    return result
