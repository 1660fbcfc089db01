"""The effective configuration as plain data for ``nightproxy check``, credentials masked."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightproxy.config.kinds import DirectoryOptions, HostedOptions, UpstreamConfig
from nightproxy.config.masking import MASK, safe_value
from nightproxy.config.records import CacheConfig, Config, ServerConfig
from nightproxy.config.retention import Inherit, RetentionOverride
from nightproxy.config.units import format_duration

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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
    if name in ("timeout", "ttl", "trash") and isinstance(shown, float):
        return format_duration(shown)
    if isinstance(shown, RetentionOverride):
        return _override_dict(shown)
    if isinstance(shown, Path):
        return str(shown)
    return shown


def _fields(record: DataclassInstance, skip: Collection[str] = ()) -> dict[str, Any]:
    return {
        f.name: _plain(f.name, getattr(record, f.name))
        for f in dataclasses.fields(record)
        if f.name not in skip
    }


def _hosted(options: HostedOptions) -> dict[str, Any]:
    out = _fields(options, skip=("s3", "trash", "publishers", "admins"))
    if options.s3 is not None:
        out.update(_fields(options.s3))
    # One mask per token: how many there are is worth seeing, their digests are not.
    out["publishers"] = {
        str(project): {
            "tokens": [MASK] * len(publisher.tokens),
            "github": [
                {key: value for key, value in _fields(github).items() if value is not None}
                for github in publisher.github
            ],
        }
        for project, publisher in options.publishers.items()
    }
    out["admins"] = [MASK] * len(options.admins)
    return out


def _masked_upstream(upstream: UpstreamConfig) -> dict[str, Any]:
    # The shared keys, then the kind's own, so `nightproxy check` shows what is in effect.
    options = upstream.options
    skip = {"options"}
    if isinstance(options, DirectoryOptions):
        skip |= {"url", "proxy"}
    if isinstance(options, HostedOptions):
        skip |= {"headers"} | ({"proxy"} if upstream.url is None else set())
    out = _fields(upstream, skip)
    if isinstance(options, HostedOptions):
        out["retention"]["trash"] = format_duration(options.trash)
        out.update(_hosted(options))
    else:
        out.update(_fields(options))
    return out


def _server(server: ServerConfig) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "workers": server.workers,
        "max_connections": server.max_connections,
        "tls": None if server.tls is None else _fields(server.tls),
    }


def _cache(cache: CacheConfig) -> dict[str, Any]:
    shared = cache.shared
    return {
        "dir": str(cache.dir),
        "max_size": cache.max_size,
        "max_age": format_duration(cache.max_age),
        "fill_min_rate": cache.fill_min_rate,
        "fill_stall_timeout": format_duration(cache.fill_stall_timeout),
        "scrub_rate": cache.scrub_rate,
        "shared": None
        if shared is None
        else {
            "url": shared.url,
            **_fields(shared.s3),
            "max_size": shared.max_size,
            "max_age": None if shared.max_age is None else format_duration(shared.max_age),
            "replica_id": shared.replica_id,
            "peer_url": shared.peer_url,
            "fill_lease_ttl": format_duration(shared.fill_lease_ttl),
            "prune_interval": format_duration(shared.prune_interval),
        },
    }


def masked(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data with every credential replaced by ``***``.

    Durations are rendered like ``10m``, sizes and rates as bytes, paths as strings, and
    ``off`` as null.
    """
    retention = config.retention
    oidc = config.publishing.oidc
    return {
        "source": str(config.source),
        "server": _server(config.server),
        "cache": _cache(config.cache),
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
        "publishing": {
            "oidc": {
                **_fields(oidc, skip=("token_lifetime",)),
                "token_lifetime": format_duration(oidc.token_lifetime),
            }
        },
    }
