"""The effective configuration as plain data for ``nightproxy check``, credentials masked."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nightproxy.config.kinds import DirectoryOptions, UpstreamConfig
from nightproxy.config.masking import safe_value
from nightproxy.config.records import Config
from nightproxy.config.retention import Inherit, RetentionOverride
from nightproxy.config.units import format_duration

__all__ = ["masked"]


def _override_dict(override: RetentionOverride) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(override.dev_max_age, Inherit):
        out["dev_max_age"] = (
            None if override.dev_max_age is None else format_duration(override.dev_max_age)
        )
    if not isinstance(override.keep_latest, Inherit):
        out["keep_latest"] = override.keep_latest
    if not isinstance(override.keep_missing, Inherit):
        out["keep_missing"] = format_duration(override.keep_missing)
    return out


def _plain(name: str, value: object) -> object:
    shown = safe_value(name, value)
    if name in ("timeout", "ttl") and isinstance(shown, float):
        return format_duration(shown)
    if isinstance(shown, RetentionOverride):
        return _override_dict(shown)
    if isinstance(shown, Path):
        return str(shown)
    return shown


def _masked_upstream(upstream: UpstreamConfig) -> dict[str, Any]:
    # The shared keys, then the kind's own, so `nightproxy check` shows what is in effect.
    out: dict[str, Any] = {}
    for f in dataclasses.fields(upstream):
        if f.name == "options" or (
            f.name == "url" and isinstance(upstream.options, DirectoryOptions)
        ):
            continue
        out[f.name] = _plain(f.name, getattr(upstream, f.name))
    for f in dataclasses.fields(upstream.options):
        out[f.name] = _plain(f.name, getattr(upstream.options, f.name))
    return out


def masked(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data with every credential replaced by ``***``.

    Durations are rendered like ``10m``, sizes as bytes, paths as strings.
    """
    retention = config.retention
    return {
        "source": str(config.source),
        "server": {"host": config.server.host, "port": config.server.port},
        "cache": {
            "dir": str(config.cache.dir),
            "max_size": config.cache.max_size,
            "max_age": format_duration(config.cache.max_age),
        },
        "index": {
            "ttl": format_duration(config.index.ttl),
            "stale_if_error": format_duration(config.index.stale_if_error),
            "stale_while_revalidate": config.index.stale_while_revalidate,
        },
        "retention": {
            "dev_max_age": (
                None if retention.dev_max_age is None else format_duration(retention.dev_max_age)
            ),
            "keep_latest": retention.keep_latest,
            "keep_missing": format_duration(retention.keep_missing),
        },
        "logging": {"format": config.logging.format, "level": config.logging.level},
        "upstreams": [_masked_upstream(u) for u in config.upstreams],
        "projects": {
            str(name): {"upstreams": list(project.upstreams), **_override_dict(project.retention)}
            for name, project in config.projects.items()
        },
    }
