"""Validation of the ``upstreams`` list: the keys every kind shares, then each kind's own."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from nightproxy.config.errors import ConfigError, describe, key_path, shown
from nightproxy.config.hosted_reader import HOSTED_KEYS, read_hosted_options, read_trash
from nightproxy.config.kinds import (
    KINDS,
    AnacondaOptions,
    AzureOptions,
    DirectoryOptions,
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
from nightproxy.config.storage_reader import S3_KEYS, read_s3_options

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
    "proxy",
)
_KIND_KEYS: Final[Mapping[UpstreamKind, tuple[str, ...]]] = MappingProxyType(
    {
        "simple": (),
        "anaconda": ("label", "api_url"),
        "azure": ("username", "password"),
        "s3": S3_KEYS,
        "directory": ("path",),
        "hosted": HOSTED_KEYS,
    }
)
#: Shared keys a kind has no use for, and why.
_NOT_FOR_KIND: Final[Mapping[tuple[UpstreamKind, str], str]] = MappingProxyType(
    {
        # Located by `path`; accepting `url` too would leave two sources.
        ("directory", "url"): "use path",
        ("directory", "proxy"): "it reads a local folder",
        ("hosted", "headers"): "it fetches from no feed",
    }
)
_ALL_UPSTREAM_KEYS: Final = frozenset(_UPSTREAM_COMMON_KEYS).union(*_KIND_KEYS.values())
_UPSTREAM_NAME_RE: Final = re.compile(r"[a-z0-9-]+")
_HOSTED_RETENTION_KEYS: Final = ("dev_max_age", "keep_latest", "trash")


def allowed_upstream_keys(kind: UpstreamKind) -> frozenset[str]:
    allowed = frozenset(_UPSTREAM_COMMON_KEYS) | frozenset(_KIND_KEYS[kind])
    return allowed - {key for k, key in _NOT_FOR_KIND if k == kind}


def _wrong_kind_hint(kind: UpstreamKind) -> Callable[[str], str]:
    def hint(key: str) -> str:
        if (kind, key) in _NOT_FOR_KIND:
            return f" for kind {kind!r} ({_NOT_FOR_KIND[kind, key]})"
        owners = [k for k, keys in _KIND_KEYS.items() if key in keys]
        return f" for kind {kind!r} (only valid for kind {' or '.join(owners)})" if owners else ""

    return hint


def _retention_hint(kind: UpstreamKind) -> Callable[[str], str]:
    def hint(key: str) -> str:
        if key == "trash" and kind != "hosted":
            return f" for kind {kind!r} (only valid for kind hosted)"
        if key == "keep_missing" and kind == "hosted":
            return " for kind 'hosted' (its files never go missing upstream)"
        return ""

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


def _read_options(
    kind: UpstreamKind, section: Section, base: Path, name: str, url: str | None
) -> UpstreamOptions:
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
    if kind == "hosted":
        trash = read_trash(section.section("retention"))
        return read_hosted_options(section, name, url, base, trash)
    return SimpleOptions()


def _read_url(kind: UpstreamKind, section: Section) -> str | None:
    if kind == "s3":
        return read_s3_url(section.require("url"))
    if kind == "hosted":
        # A hosted feed is in a local folder unless it is given a bucket.
        return section.read("url", read_s3_url, None)
    if kind == "directory":
        return None
    return read_http_url(section.require("url"))


def _read_upstream(node: Node, base: Path) -> UpstreamConfig:
    section = Section(node)
    # Typos first, against every key any kind accepts; keys of another kind once kind is known.
    section.only(_ALL_UPSTREAM_KEYS)
    kind = read_choice(section.require("kind"), KINDS)
    section.only(allowed_upstream_keys(kind), _wrong_kind_hint(kind))
    name = _read_upstream_name(section.require("name"))
    url = _read_url(kind, section)

    retention = section.section("retention")
    retention.only(
        _HOSTED_RETENTION_KEYS if kind == "hosted" else RETENTION_KEYS, _retention_hint(kind)
    )
    options = _read_options(kind, section, base, name, url)

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
        proxy=section.read("proxy", read_http_url, None),
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
