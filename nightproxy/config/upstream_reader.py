"""Validation of the ``upstreams`` list: the keys every kind shares, then each kind's own."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from nightproxy.config.errors import ConfigError, describe, key_path, shown
from nightproxy.config.kinds import (
    ADDRESSING,
    KINDS,
    Addressing,
    AnacondaOptions,
    AzureOptions,
    DirectoryOptions,
    S3Options,
    SimpleOptions,
    UpstreamConfig,
    UpstreamKind,
    UpstreamOptions,
)
from nightproxy.config.reader import (
    Node,
    Section,
    read_bool,
    read_choice,
    read_duration,
    read_http_url,
    read_path,
    read_positive_duration,
    read_s3_url,
    read_str,
)
from nightproxy.config.sections import RETENTION_KEYS, read_retention_override

__all__ = ["read_upstreams"]

_UPSTREAM_COMMON_KEYS: Final = (
    "name",
    "kind",
    "url",
    "timeout",
    "ttl",
    "headers",
    "dev_only",
    "retention",
)
S3_KEYS: Final = ("endpoint", "addressing", "region", "access_key_id", "secret_access_key")
_KIND_KEYS: Final[Mapping[UpstreamKind, tuple[str, ...]]] = MappingProxyType(
    {
        "simple": (),
        "anaconda": ("label", "api_url"),
        "azure": ("username", "password"),
        "s3": S3_KEYS,
        "directory": ("path",),
    }
)
_ALL_UPSTREAM_KEYS: Final = frozenset(_UPSTREAM_COMMON_KEYS).union(*_KIND_KEYS.values())
_UPSTREAM_NAME_RE: Final = re.compile(r"[a-z0-9-]+")


def allowed_upstream_keys(kind: UpstreamKind) -> frozenset[str]:
    allowed = frozenset(_UPSTREAM_COMMON_KEYS) | frozenset(_KIND_KEYS[kind])
    # A directory upstream is located by `path`; accepting `url` too would leave two sources.
    return allowed - {"url"} if kind == "directory" else allowed


def _wrong_kind_hint(kind: UpstreamKind) -> Callable[[str], str]:
    def hint(key: str) -> str:
        if kind == "directory" and key == "url":
            return " for kind 'directory' (use path)"
        owners = [k for k, keys in _KIND_KEYS.items() if key in keys]
        return f" for kind {kind!r} (only valid for kind {' or '.join(owners)})" if owners else ""

    return hint


def _read_headers(node: Node) -> Mapping[str, str]:
    section = Section(node)
    headers: dict[str, str] = {}
    for key, child in section.items():
        if not key or any(c in key for c in ": \t\r\n"):
            raise child.error("is not a valid header name")
        value = child.value
        if not isinstance(value, str):
            raise child.error(f"expected a string, got {describe(value)}")
        if "\r" in value or "\n" in value or "\0" in value:
            # Would let a value smuggle extra headers into every upstream request.
            raise child.error("header values must not contain line breaks or NUL characters")
        headers[key] = str(value)
    return MappingProxyType(headers)


def _read_upstream_name(node: Node) -> str:
    name = read_str(node)
    if _UPSTREAM_NAME_RE.fullmatch(name) is None:
        raise node.error(
            f"invalid upstream name {shown(name)}; use lowercase letters, digits and -"
        )
    return name


def read_s3_options(section: Section) -> S3Options:
    """The keys that say how to reach a bucket (the bucket itself is the ``s3://`` URL)."""
    endpoint = section.read("endpoint", read_http_url, None)
    # Custom endpoints (MinIO, Ceph, ...) rarely support virtual-host buckets; AWS prefers them.
    default_addressing: Addressing = "path" if endpoint is not None else "virtual"
    access_key_id = section.read("access_key_id", read_str, None)
    secret_access_key = section.read("secret_access_key", read_str, None)
    if (access_key_id is None) != (secret_access_key is None):
        missing = "access_key_id" if access_key_id is None else "secret_access_key"
        raise section.error_at(
            missing, "access_key_id and secret_access_key must be given together"
        )
    return S3Options(
        endpoint=endpoint,
        addressing=section.read(
            "addressing", lambda n: read_choice(n, ADDRESSING), default_addressing
        ),
        region=section.read("region", read_str, S3Options().region),
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )


def _read_options(kind: UpstreamKind, section: Section, base: Path) -> UpstreamOptions:
    if kind == "anaconda":
        return AnacondaOptions(
            label=section.read("label", read_str, None),
            api_url=section.read("api_url", read_http_url, AnacondaOptions().api_url),
        )
    if kind == "azure":
        return AzureOptions(
            username=section.read("username", read_str, None),
            password=section.read("password", read_str, None),
        )
    if kind == "s3":
        return read_s3_options(section)
    if kind == "directory":
        path = section.require("path", "is required for kind 'directory'")
        return DirectoryOptions(path=read_path(path, base))
    return SimpleOptions()


def _read_upstream(node: Node, base: Path) -> UpstreamConfig:
    section = Section(node)
    # Typos first, against every key any kind accepts; keys of another kind once kind is known.
    section.only(_ALL_UPSTREAM_KEYS)
    kind = read_choice(section.require("kind"), KINDS)
    section.only(allowed_upstream_keys(kind), _wrong_kind_hint(kind))
    name = _read_upstream_name(section.require("name"))

    url: str | None = None
    if kind == "s3":
        url = read_s3_url(section.require("url"))
    elif kind != "directory":
        url = read_http_url(section.require("url"))
    options = _read_options(kind, section, base)

    retention = section.section("retention")
    retention.only(RETENTION_KEYS)

    defaults = UpstreamConfig(name=name, kind="simple")
    return UpstreamConfig(
        name=name,
        kind=kind,
        url=url,
        timeout=section.read("timeout", read_positive_duration, defaults.timeout),
        ttl=section.read("ttl", read_duration, None),
        headers=section.read("headers", _read_headers, defaults.headers),
        dev_only=section.read("dev_only", read_bool, defaults.dev_only),
        retention=read_retention_override(retention),
        options=options,
    )


def read_upstreams(node: Node, base: Path) -> tuple[UpstreamConfig, ...]:
    if not isinstance(node.value, list):
        raise node.error(f"expected a list of upstreams, got {describe(node.value)}")
    if not node.value:
        raise node.error("at least one upstream is required")
    upstreams: list[UpstreamConfig] = []
    first_use: dict[str, str] = {}
    for item in node.items():
        upstream = _read_upstream(item, base)
        if upstream.name in first_use:
            earlier = first_use[upstream.name]
            raise ConfigError(
                item.file,
                key_path(item.path, "name"),
                f"duplicate upstream name {shown(upstream.name)} (first used at {earlier})",
            )
        first_use[upstream.name] = item.path
        upstreams.append(upstream)
    return tuple(upstreams)
