"""Validation of the sections other than ``upstreams``: server, cache, index, retention,
logging and projects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final

from packaging.utils import InvalidName, NormalizedName, canonicalize_name

from nightproxy.config.errors import describe, shown
from nightproxy.config.reader import (
    Node,
    Section,
    read_bool,
    read_choice,
    read_duration,
    read_int,
    read_path,
    read_positive_duration,
    read_positive_size,
    read_size,
    read_str,
)
from nightproxy.config.records import (
    LOG_FORMATS,
    LOG_LEVELS,
    CacheConfig,
    IndexConfig,
    LoggingConfig,
    ProjectConfig,
    ServerConfig,
)
from nightproxy.config.retention import INHERIT, Inherit, RetentionConfig, RetentionOverride

__all__ = [
    "RETENTION_KEYS",
    "read_cache",
    "read_index",
    "read_logging",
    "read_projects",
    "read_retention",
    "read_retention_override",
    "read_server",
]

RETENTION_KEYS: Final = ("dev_max_age", "keep_latest", "keep_missing")


def read_server(section: Section) -> ServerConfig:
    section.only(("host", "port"))
    defaults = ServerConfig()
    return ServerConfig(
        host=section.read("host", read_str, defaults.host),
        # Port 0 asks the OS for a free port, which tests and socket activation rely on.
        port=section.read("port", lambda n: read_int(n, 0, 65535), defaults.port),
    )


def read_cache(section: Section, base: Path) -> CacheConfig:
    section.only(("dir", "max_size", "max_age", "spare_memory"))
    defaults = CacheConfig(dir=base / ".nightproxy-cache")
    return CacheConfig(
        dir=section.read("dir", lambda n: read_path(n, base), defaults.dir),
        max_size=section.read("max_size", read_positive_size, defaults.max_size),
        max_age=section.read("max_age", read_positive_duration, defaults.max_age),
        spare_memory=section.read("spare_memory", read_size, defaults.spare_memory),
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


def _read_dev_max_age(node: Node) -> float | None:
    # Unquoted `off` is YAML 1.1 for false, so false, null and "off" all disable age hiding.
    if node.value is None or node.value is False:
        return None
    if isinstance(node.value, str) and node.value.strip().lower() == "off":
        return None
    return read_duration(node)


def read_retention_override(section: Section) -> RetentionOverride:
    """The retention keys present in ``section``; the caller checks for other keys."""
    dev_max_age: float | Inherit | None = INHERIT
    if section.has("dev_max_age"):
        dev_max_age = _read_dev_max_age(section.raw("dev_max_age"))
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


def read_project_name(key: str, node: Node) -> NormalizedName:
    try:
        return canonicalize_name(key, validate=True)
    except InvalidName:
        raise node.error(f"{shown(key)} is not a valid project name") from None


def read_projects(
    section: Section, upstream_names: Sequence[str]
) -> Mapping[NormalizedName, ProjectConfig]:
    projects: dict[NormalizedName, ProjectConfig] = {}
    written_as: dict[NormalizedName, str] = {}
    for key, node in section.items():
        name = read_project_name(key, node)
        if name in written_as:
            raise node.error(
                f"duplicate project: {shown(key)} and {shown(written_as[name])} both normalize "
                f"to {shown(name)}"
            )
        written_as[name] = key
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
