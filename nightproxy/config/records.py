"""The typed, frozen records the rest of the proxy works with once the file is validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

from packaging.utils import NormalizedName

from nightproxy.config.kinds import UpstreamConfig
from nightproxy.config.retention import RetentionConfig, RetentionOverride

__all__ = [
    "CacheConfig",
    "Config",
    "IndexConfig",
    "LogFormat",
    "LoggingConfig",
    "ProjectConfig",
    "ServerConfig",
    "effective_retention",
]

LogFormat = Literal["text", "json"]

LOG_FORMATS: Final[tuple[LogFormat, ...]] = get_args(LogFormat)
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: Path
    max_size: int = 20 * 1024**3
    #: Seconds.
    max_age: float = 14 * 86400
    #: Bytes of page cache kept ready for the next cold downloads (``cache/spares.py``).
    spare_memory: int = 128 * 1024**2


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
