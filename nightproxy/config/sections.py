"""Validation of the sections other than ``upstreams``: server, cache, index, retention,
logging and projects."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from packaging.utils import InvalidName, NormalizedName, canonicalize_name

from nightproxy.config.env import Expanded
from nightproxy.config.errors import describe, shown
from nightproxy.config.reader import (
    Node,
    Section,
    off_or,
    read_bool,
    read_choice,
    read_duration,
    read_file,
    read_http_url,
    read_https_url,
    read_int,
    read_path,
    read_positive_duration,
    read_positive_size,
    read_rate,
    read_s3_url,
    read_str,
)
from nightproxy.config.records import (
    LOG_FORMATS,
    LOG_LEVELS,
    CacheConfig,
    IndexConfig,
    LoggingConfig,
    OidcConfig,
    ProjectConfig,
    PublishingConfig,
    ServerConfig,
    SharedCacheConfig,
    TlsConfig,
)
from nightproxy.config.retention import INHERIT, Inherit, RetentionConfig, RetentionOverride
from nightproxy.config.storage_reader import S3_KEYS, read_s3_options

__all__ = [
    "RETENTION_KEYS",
    "project_entries",
    "read_cache",
    "read_index",
    "read_logging",
    "read_projects",
    "read_publishing",
    "read_retention",
    "read_retention_override",
    "read_server",
]

RETENTION_KEYS: Final = ("dev_max_age", "keep_latest", "keep_missing")
#: More serving processes than this is a typo, not a machine.
MAX_WORKERS: Final = 256


_SHARED_KEYS: Final = (
    "url",
    *S3_KEYS,
    "max_size",
    "max_age",
    "replica_id",
    "peer_url",
    "fill_lease_ttl",
    "prune_interval",
)


def _read_workers(node: Node) -> int | Literal["auto"]:
    if isinstance(node.value, str) and node.value.strip().lower() == "auto":
        return "auto"
    if isinstance(node.value, str) and not isinstance(node.value, Expanded):
        raise node.error(f"expected a number of processes or auto, got {shown(node.value)}")
    return read_int(node, 1, MAX_WORKERS)


def _read_tls(node: Node, base: Path) -> TlsConfig | None:
    if node.value is None:
        return None
    section = Section(node)
    section.only(("cert", "key"))
    cert, key = section.get("cert"), section.get("key")
    if cert is None or key is None:
        missing = "cert" if cert is None else "key"
        raise section.error_at(missing, "cert and key must be given together")
    return TlsConfig(cert=read_file(cert, base), key=read_file(key, base))


def read_server(section: Section, base: Path) -> ServerConfig:
    section.only(("host", "port", "workers", "max_connections", "tls"))
    defaults = ServerConfig()
    return ServerConfig(
        host=section.read("host", read_str, defaults.host),
        # Port 0 asks the OS for a free port, which tests and socket activation rely on.
        port=section.read("port", lambda n: read_int(n, 0, 65535), defaults.port),
        workers=section.read("workers", _read_workers, defaults.workers),
        max_connections=section.read(
            "max_connections", lambda n: read_int(n, 1), defaults.max_connections
        ),
        tls=_read_tls(section.raw("tls"), base),
    )


def _rate_or_off(node: Node) -> int | None:
    """A rate where 0, like off, means no limit at all."""
    rate = off_or(read_rate)(node)
    return rate or None


def _read_shared(node: Node) -> SharedCacheConfig | None:
    if node.value is None:
        return None
    section = Section(node)
    section.only(_SHARED_KEYS)
    defaults = SharedCacheConfig(url="s3://defaults/")
    return SharedCacheConfig(
        url=read_s3_url(section.require("url", "is required (s3://bucket/prefix/)")),
        s3=read_s3_options(section),
        max_size=section.read("max_size", off_or(read_positive_size), defaults.max_size),
        max_age=section.read("max_age", off_or(read_positive_duration), defaults.max_age),
        replica_id=section.read("replica_id", read_str, None),
        peer_url=section.read("peer_url", read_http_url, None),
        fill_lease_ttl=section.read(
            "fill_lease_ttl", read_positive_duration, defaults.fill_lease_ttl
        ),
        prune_interval=section.read(
            "prune_interval", read_positive_duration, defaults.prune_interval
        ),
    )


def _removed_cache_key(key: str) -> str:
    if key == "spare_memory":
        return " (spare files were removed: delete this line)"
    return ""


def read_cache(section: Section, base: Path) -> CacheConfig:
    section.only(
        (
            "dir",
            "max_size",
            "max_age",
            "fill_min_rate",
            "fill_stall_timeout",
            "scrub_rate",
            "shared",
        ),
        _removed_cache_key,
    )
    defaults = CacheConfig(dir=base / ".nightproxy-cache")
    return CacheConfig(
        dir=section.read("dir", lambda n: read_path(n, base), defaults.dir),
        max_size=section.read("max_size", read_positive_size, defaults.max_size),
        max_age=section.read("max_age", read_positive_duration, defaults.max_age),
        fill_min_rate=section.read("fill_min_rate", _rate_or_off, defaults.fill_min_rate),
        fill_stall_timeout=section.read(
            "fill_stall_timeout", read_positive_duration, defaults.fill_stall_timeout
        ),
        scrub_rate=section.read("scrub_rate", _rate_or_off, defaults.scrub_rate),
        shared=_read_shared(section.raw("shared")),
    )


def read_publishing(section: Section, base: Path) -> PublishingConfig:
    section.only(("oidc",))
    oidc = section.section("oidc")
    oidc.only(("issuer", "audience", "ca_bundle", "token_lifetime"))
    defaults = OidcConfig()
    return PublishingConfig(
        oidc=OidcConfig(
            issuer=oidc.read("issuer", read_https_url, defaults.issuer),
            audience=oidc.read("audience", read_str, defaults.audience),
            ca_bundle=oidc.read("ca_bundle", lambda n: read_file(n, base), None),
            token_lifetime=oidc.read(
                "token_lifetime", read_positive_duration, defaults.token_lifetime
            ),
        )
    )


def read_index(section: Section) -> IndexConfig:
    section.only(("ttl", "stale_if_error", "stale_while_revalidate"))
    defaults = IndexConfig()
    return IndexConfig(
        ttl=section.read("ttl", read_duration, defaults.ttl),
        stale_if_error=section.read("stale_if_error", read_duration, defaults.stale_if_error),
        stale_while_revalidate=section.read(
            "stale_while_revalidate", read_bool, defaults.stale_while_revalidate
        ),
    )


def read_retention_override(section: Section) -> RetentionOverride:
    """The retention keys present in ``section``; the caller checks for other keys."""
    dev_max_age: float | Inherit | None = INHERIT
    if section.has("dev_max_age"):
        dev_max_age = off_or(read_duration)(section.raw("dev_max_age"))
    keep_latest_node = section.get("keep_latest")
    keep_missing_node = section.get("keep_missing")
    keep_latest = INHERIT if keep_latest_node is None else read_int(keep_latest_node)
    keep_missing = INHERIT if keep_missing_node is None else read_duration(keep_missing_node)
    return RetentionOverride(dev_max_age, keep_latest, keep_missing)


def read_retention(section: Section) -> RetentionConfig:
    section.only(RETENTION_KEYS)
    return read_retention_override(section).apply(RetentionConfig())


def _read_log_level(node: Node) -> str:
    return read_choice(Node(read_str(node).upper(), node.path, node.file), LOG_LEVELS)


def read_logging(section: Section) -> LoggingConfig:
    section.only(("format", "level"))
    defaults = LoggingConfig()
    return LoggingConfig(
        format=section.read("format", lambda n: read_choice(n, LOG_FORMATS), defaults.format),
        level=section.read("level", _read_log_level, defaults.level),
    )


def _read_pinned(node: Node, upstream_names: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(node.value, list):
        raise node.error(f"expected a list of upstream names, got {describe(node.value)}")
    if not node.value:
        raise node.error("must name at least one upstream (omit the project to use all)")
    chosen: set[str] = set()
    for item in node.items():
        name = read_str(item)
        if name not in upstream_names:
            raise item.error(
                f"unknown upstream {shown(name)}; configured: {', '.join(upstream_names)}"
            )
        if name in chosen:
            raise item.error(f"upstream {shown(name)} is listed twice")
        chosen.add(name)
    # Priority always comes from the upstreams list, whatever order the pin was written in.
    return tuple(name for name in upstream_names if name in chosen)


def project_entries(section: Section) -> Iterator[tuple[NormalizedName, Node]]:
    """The entries of a mapping keyed by project name, each key normalized.

    Two keys that normalize alike (``Foo_Bar``, ``foo.bar``) are an error at the second.
    """
    written_as: dict[NormalizedName, str] = {}
    for key, node in section.items():
        try:
            name = canonicalize_name(key, validate=True)
        except InvalidName:
            raise node.error(f"{shown(key)} is not a valid project name") from None
        if name in written_as:
            raise node.error(
                f"duplicate project: {shown(key)} and {shown(written_as[name])} both normalize "
                f"to {shown(name)}"
            )
        written_as[name] = key
        yield name, node


def read_projects(
    section: Section, upstream_names: Sequence[str]
) -> Mapping[NormalizedName, ProjectConfig]:
    projects: dict[NormalizedName, ProjectConfig] = {}
    for name, node in project_entries(section):
        if isinstance(node.value, list):
            projects[name] = ProjectConfig(upstreams=_read_pinned(node, upstream_names))
        elif isinstance(node.value, dict):
            project = Section(node)
            project.only(("upstreams", *RETENTION_KEYS))
            projects[name] = ProjectConfig(
                upstreams=project.read("upstreams", lambda n: _read_pinned(n, upstream_names), ()),
                retention=read_retention_override(project),
            )
        else:
            raise node.error(
                "expected a list of upstream names or a mapping "
                f"(upstreams, {', '.join(RETENTION_KEYS)}), got {describe(node.value)}"
            )
    return MappingProxyType(projects)
