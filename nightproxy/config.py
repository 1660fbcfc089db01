"""Loading and validating ``nightproxy.yaml``.

Every user-supplied setting passes through here once, at start-up. Afterwards the rest of the
proxy works with frozen, fully typed records and never re-checks a value. Errors name the file
and the key path (``upstreams[1].url``) so a user can find the offending line without reading a
traceback, and no error message, ``repr`` or :func:`masked` output ever echoes a credential:
these strings end up in terminals, CI logs and bug reports.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar, get_args
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml
from packaging.utils import InvalidName, NormalizedName, canonicalize_name

__all__ = [
    "INHERIT",
    "CacheConfig",
    "Config",
    "ConfigError",
    "IndexConfig",
    "LoggingConfig",
    "ProjectConfig",
    "RetentionConfig",
    "RetentionOverride",
    "ServerConfig",
    "UpstreamConfig",
    "UpstreamKind",
    "config_from_mapping",
    "effective_retention",
    "find_config_path",
    "load_config",
    "mask_url",
    "masked",
    "parse_duration",
    "parse_size",
    "prepare_cache_dir",
]

#: The key reported for problems with the file as a whole (missing, empty, not YAML).
FILE_KEY: Final = "(file)"
_MASK: Final = "***"

UpstreamKind = Literal["simple", "anaconda", "azure", "s3", "directory"]
Addressing = Literal["path", "virtual"]
LogFormat = Literal["text", "json"]

_KINDS: Final[tuple[UpstreamKind, ...]] = get_args(UpstreamKind)
_ADDRESSING: Final[tuple[Addressing, ...]] = get_args(Addressing)
_LOG_FORMATS: Final[tuple[LogFormat, ...]] = get_args(LogFormat)
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """A problem in the configuration, located by file and key path.

    ``key`` is a path such as ``upstreams[1].url`` or ``projects.numpy[0]``; :data:`FILE_KEY`
    means the file as a whole.
    """

    def __init__(self, file: Path, key: str, message: str) -> None:
        # Handing the parts to Exception keeps the error picklable (multiprocessing, xdist).
        super().__init__(file, key, message)
        self.file = file
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


# --------------------------------------------------------------------------- durations, sizes

_NUMBER: Final = r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION_RE: Final = re.compile(_NUMBER + r"\s*(?P<unit>[smhdw])?")
_DURATION_UNITS: Final[Mapping[str, int]] = MappingProxyType(
    {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
)
# Sizes are case-insensitive: nobody writing "20gb" in a cache config means gigabits.
_SIZE_RE: Final = re.compile(_NUMBER + r"\s*(?P<unit>[kmgt]i?b|b)?", re.IGNORECASE)
_SIZE_UNITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "b": 1,
        "kb": 1000,
        "mb": 1000**2,
        "gb": 1000**3,
        "tb": 1000**4,
        "kib": 1024,
        "mib": 1024**2,
        "gib": 1024**3,
        "tib": 1024**4,
    }
)


def parse_duration(value: object, key: str, file: Path) -> float:
    """Seconds from ``30s``/``10m``/``1.5h``/``7d``/``2w``; a bare number means seconds."""
    # bool is an int subclass: `ttl: yes` is a mistake, not one second.
    if isinstance(value, bool):
        raise ConfigError(file, key, "expected a duration such as 10m, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(file, key, "must be a finite duration")
        if value < 0:
            raise ConfigError(file, key, "must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ConfigError(file, key, "must not be negative")
        match = _DURATION_RE.fullmatch(text)
        if match is None:
            raise ConfigError(
                file, key, f"invalid duration {text!r}; use a number and one of s, m, h, d, w"
            )
        # Decimal keeps "1.5h" exact; the float conversion happens once, at the end.
        return float(Decimal(match["number"]) * _DURATION_UNITS[match["unit"] or "s"])
    raise ConfigError(file, key, f"expected a duration such as 10m, got {_describe(value)}")


def parse_size(value: object, key: str, file: Path) -> int:
    """Bytes from ``512MB`` (powers of 1000) or ``20GiB`` (powers of 1024); bare means bytes."""
    if isinstance(value, bool):
        raise ConfigError(file, key, "expected a size such as 20GiB, got a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ConfigError(file, key, "a size without a unit must be a whole number of bytes")
        if value < 0:
            raise ConfigError(file, key, "must not be negative")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ConfigError(file, key, "must not be negative")
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise ConfigError(
                file, key, f"invalid size {text!r}; use a number and a unit such as MB or GiB"
            )
        unit = match["unit"]
        if unit is None and "." in match["number"]:
            raise ConfigError(file, key, "a size without a unit must be a whole number of bytes")
        # "1.1GiB" is not a whole number of bytes; rounding down is what anyone would expect.
        return int(Decimal(match["number"]) * _SIZE_UNITS[(unit or "b").lower()])
    raise ConfigError(file, key, f"expected a size such as 20GiB, got {_describe(value)}")


def _format_duration(seconds: float) -> str:
    """The largest unit that states ``seconds`` exactly, so ``600`` reads back as ``10m``."""
    if seconds > 0:
        for unit in ("w", "d", "h", "m", "s"):
            factor = _DURATION_UNITS[unit]
            if seconds % factor == 0:
                return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"


# --------------------------------------------------------------------------- records


class _Inherit(enum.Enum):
    """Marks an override field that was not set, distinct from ``None`` ("disabled")."""

    INHERIT = "inherit"


INHERIT: Final = _Inherit.INHERIT


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
class RetentionConfig:
    #: Seconds after which dev builds are hidden; ``None`` disables age hiding.
    dev_max_age: float | None = 7 * 86400
    keep_latest: int = 3
    #: Seconds a file stays listed after its upstream stopped listing it.
    keep_missing: float = 3 * 86400


@dataclass(frozen=True, slots=True)
class RetentionOverride:
    """Retention settings of an upstream or project; unset fields inherit the wider scope."""

    dev_max_age: float | _Inherit | None = INHERIT
    keep_latest: int | _Inherit = INHERIT
    keep_missing: float | _Inherit = INHERIT

    def apply(self, base: RetentionConfig) -> RetentionConfig:
        return RetentionConfig(
            dev_max_age=(
                base.dev_max_age if isinstance(self.dev_max_age, _Inherit) else self.dev_max_age
            ),
            keep_latest=(
                base.keep_latest if isinstance(self.keep_latest, _Inherit) else self.keep_latest
            ),
            keep_missing=(
                base.keep_missing if isinstance(self.keep_missing, _Inherit) else self.keep_missing
            ),
        )


def _no_headers() -> Mapping[str, str]:
    # A factory, not a shared default: Python 3.11 dataclasses reject unhashable defaults.
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, repr=False)
class UpstreamConfig:
    name: str
    kind: UpstreamKind
    #: http(s) URL, or ``s3://bucket/prefix/`` (normalized to end in ``/``); None for directory.
    url: str | None = None
    timeout: float = 30.0
    #: Overrides ``index.ttl`` when set.
    ttl: float | None = None
    headers: Mapping[str, str] = field(default_factory=_no_headers)
    dev_only: bool = False
    retention: RetentionOverride = RetentionOverride()
    # anaconda
    label: str | None = None
    api_url: str = "https://api.anaconda.org"
    # azure
    username: str | None = None
    password: str | None = None
    # s3
    endpoint: str | None = None
    addressing: Addressing = "virtual"
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    # directory
    path: Path | None = None

    def __repr__(self) -> str:
        # Hand-written because the generated repr would print passwords and header tokens.
        shown = ", ".join(
            f"{f.name}={_safe_value(f.name, getattr(self, f.name))!r}"
            for f in dataclasses.fields(self)
        )
        return f"UpstreamConfig({shown})"


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    #: Pinned upstream names in priority (config) order; empty means "all upstreams".
    upstreams: tuple[str, ...] = ()
    retention: RetentionOverride = RetentionOverride()


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


# --------------------------------------------------------------------------- secrets

_SECRET_FIELDS: Final = frozenset({"password", "token", "secret_access_key"})
_URL_FIELDS: Final = frozenset({"url", "api_url", "endpoint"})
_SECRET_QUERY_NAMES: Final = frozenset(
    {
        "sig",
        "signature",
        "token",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "password",
        "secret",
    }
)
# Suffixes catch the vendor variants (access_token, X-Goog-Signature, X-Goog-Credential).
_SECRET_QUERY_SUFFIXES: Final = ("token", "signature", "credential", "secret", "password")


def _is_secret_query_name(name: str) -> bool:
    lowered = unquote(name).lower()
    return lowered in _SECRET_QUERY_NAMES or lowered.endswith(_SECRET_QUERY_SUFFIXES)


def mask_path(path: str) -> str:
    """A URL path with the token of an anaconda.org-style ``/t/<token>/`` prefix masked.

    Private channels carry their token as a path segment, not in the query or the user-info,
    so the rest of the path stays readable (it says which page or file failed).
    """
    segments = path.split("/")
    for i in range(len(segments) - 1):
        if segments[i] == "t" and segments[i + 1]:
            segments[i + 1] = _MASK
    return "/".join(segments)


def mask_url(url: str) -> str:
    """``url`` with user-info, a ``/t/<token>/`` path segment and signature/token query values
    replaced by ``***``.

    Meant for logs, so it never raises: a URL too broken to parse is masked entirely.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{_MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        # Rewrite pair by pair rather than re-encoding, so the rest of the URL reads as sent.
        pairs = []
        for pair in query.split("&"):
            name, sep, _ = pair.partition("=")
            pairs.append(f"{name}={_MASK}" if sep and _is_secret_query_name(name) else pair)
        query = "&".join(pairs)
    return urlunsplit((parts.scheme, netloc, mask_path(parts.path), query, parts.fragment))


def _safe_value(name: str, value: object) -> object:
    """A field's value fit for display: credentials masked, URLs stripped of user-info."""
    if value is None:
        return None
    if name in _SECRET_FIELDS:
        return _MASK
    if name == "headers" and isinstance(value, Mapping):
        return dict.fromkeys(value, _MASK)
    if name in _URL_FIELDS and isinstance(value, str):
        return mask_url(value)
    return value


def _override_dict(override: RetentionOverride) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(override.dev_max_age, _Inherit):
        out["dev_max_age"] = (
            None if override.dev_max_age is None else _format_duration(override.dev_max_age)
        )
    if not isinstance(override.keep_latest, _Inherit):
        out["keep_latest"] = override.keep_latest
    if not isinstance(override.keep_missing, _Inherit):
        out["keep_missing"] = _format_duration(override.keep_missing)
    return out


def _masked_upstream(upstream: UpstreamConfig) -> dict[str, Any]:
    # Only the keys meaningful for this kind, so `nightproxy check` shows what is in effect.
    relevant = _allowed_upstream_keys(upstream.kind)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(upstream):
        if f.name not in relevant:
            continue
        value = _safe_value(f.name, getattr(upstream, f.name))
        if f.name in ("timeout", "ttl") and isinstance(value, float):
            value = _format_duration(value)
        elif isinstance(value, RetentionOverride):
            value = _override_dict(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
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
            "max_age": _format_duration(config.cache.max_age),
        },
        "index": {
            "ttl": _format_duration(config.index.ttl),
            "stale_if_error": _format_duration(config.index.stale_if_error),
            "stale_while_revalidate": config.index.stale_while_revalidate,
        },
        "retention": {
            "dev_max_age": (
                None if retention.dev_max_age is None else _format_duration(retention.dev_max_age)
            ),
            "keep_latest": retention.keep_latest,
            "keep_missing": _format_duration(retention.keep_missing),
        },
        "logging": {"format": config.logging.format, "level": config.logging.level},
        "upstreams": [_masked_upstream(u) for u in config.upstreams],
        "projects": {
            str(name): {"upstreams": list(project.upstreams), **_override_dict(project.retention)}
            for name, project in config.projects.items()
        },
    }


# --------------------------------------------------------------------------- env expansion

# `${` followed by anything but a well-formed reference still matches (with name None), so a
# typo such as `${TOKEN` is reported instead of silently passing through as literal text.
_REFERENCE: Final = re.compile(
    r"\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})?"
)


class _Expanded(str):
    """Text that came at least partly from the environment.

    Environment variables are always strings, so ``port: ${PORT}`` must still read as an
    integer; a literal ``port: "8080"`` written in the file stays a type error.
    """

    __slots__ = ()


def _key_path(parent: str, key: object) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _index_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def _expand(value: object, path: str, file: Path, environ: Mapping[str, str]) -> object:
    """``value`` with ``${VAR}``/``${VAR:-default}`` substituted in every string inside it."""
    if isinstance(value, str):
        return _expand_text(value, path, file, environ)
    if isinstance(value, Mapping):
        return {k: _expand(v, _key_path(path, k), file, environ) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_expand(v, _index_path(path, i), file, environ) for i, v in enumerate(value)]
    return value


def _expand_text(text: str, path: str, file: Path, environ: Mapping[str, str]) -> str:
    if "${" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name is None:
            raise ConfigError(file, path, "malformed ${...} reference; use ${VAR} or ${VAR:-x}")
        if default is not None and "${" in default:
            raise ConfigError(file, path, f"nested references in the default of ${{{name}}}")
        found = environ.get(name)
        if default is not None:
            # Shell semantics: `:-` also replaces a variable that is set but empty.
            return found if found else default
        if found is None:
            raise ConfigError(
                file,
                path,
                f"environment variable {name} is not set (write ${{{name}:-default}} "
                "to give a default)",
            )
        return found

    return _Expanded(_REFERENCE.sub(substitute, text))


# --------------------------------------------------------------------------- reading helpers

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)


def _describe(value: object) -> str:
    # Names the type only: the value itself may be a credential.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class _Node:
    """A YAML value and the key path it was found at, so any error can say where."""

    value: object
    path: str
    file: Path

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.file, self.path or FILE_KEY, message)

    def item(self, index: int) -> _Node:
        assert isinstance(self.value, list)
        return _Node(self.value[index], _index_path(self.path, index), self.file)


class _Section:
    """A mapping being read: hands out child nodes and rejects keys nobody asked for.

    An absent or null section reads as empty, so `server:` with nothing under it means defaults.
    """

    def __init__(self, node: _Node) -> None:
        value = {} if node.value is None else node.value
        if not isinstance(value, dict):
            raise node.error(f"expected a mapping, got {_describe(node.value)}")
        for key in value:
            if not isinstance(key, str):
                # YAML turns unquoted `1:`, `yes:` or `null:` into non-strings; say so.
                raise node.error(f"keys must be strings (quote them), got {_describe(key)}")
        self.node = node
        self._items: dict[str, object] = value

    def only(self, allowed: Collection[str], hint: Callable[[str], str] | None = None) -> None:
        for key in self._items:
            if key in allowed:
                continue
            extra = hint(key) if hint is not None else ""
            if not extra:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                extra = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(self.node.file, _key_path(self.node.path, key), f"unknown key{extra}")

    def has(self, key: str) -> bool:
        return key in self._items

    def raw(self, key: str) -> _Node:
        """The child at ``key`` even if it is null (for keys where null means something)."""
        return _Node(self._items.get(key), _key_path(self.node.path, key), self.node.file)

    def get(self, key: str) -> _Node | None:
        """The child at ``key``; an explicit null counts as absent, so `ttl:` means default."""
        return None if self._items.get(key) is None else self.raw(key)

    def require(self, key: str, message: str = "is required") -> _Node:
        node = self.get(key)
        if node is None:
            raise ConfigError(self.node.file, _key_path(self.node.path, key), message)
        return node

    def read(self, key: str, reader: Callable[[_Node], _T], default: _T) -> _T:
        node = self.get(key)
        return default if node is None else reader(node)

    def section(self, key: str) -> _Section:
        return _Section(self.raw(key))

    def items(self) -> Iterator[tuple[str, _Node]]:
        for key in self._items:
            yield key, self.raw(key)


def _str(node: _Node) -> str:
    if not isinstance(node.value, str):
        raise node.error(f"expected a string, got {_describe(node.value)}")
    if not node.value.strip():
        raise node.error("must not be empty")
    return str(node.value)  # drops the _Expanded marker


def _int(node: _Node, minimum: int = 0, maximum: int | None = None) -> int:
    value = node.value
    if isinstance(value, _Expanded):
        try:
            value = int(value)
        except ValueError:
            raise node.error("expected an integer from the environment") from None
    # bool is an int subclass; `keep_latest: yes` must not mean 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise node.error(f"expected an integer, got {_describe(value)}")
    if value < minimum:
        raise node.error("must not be negative" if minimum == 0 else f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise node.error(f"must be <= {maximum}")
    return value


_TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


def _bool(node: _Node) -> bool:
    value = node.value
    if isinstance(value, _Expanded):
        word = value.strip().lower()
        if word in _TRUE_WORDS | _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise node.error("expected true or false from the environment")
    if not isinstance(value, bool):
        raise node.error(f"expected true or false, got {_describe(value)}")
    return value


def _duration(node: _Node) -> float:
    return parse_duration(node.value, node.path, node.file)


def _positive_duration(node: _Node) -> float:
    seconds = _duration(node)
    if seconds == 0:
        raise node.error("must be greater than zero")
    return seconds


def _size(node: _Node) -> int:
    return parse_size(node.value, node.path, node.file)


def _positive_size(node: _Node) -> int:
    size = parse_size(node.value, node.path, node.file)
    if size == 0:
        raise node.error("must be greater than zero")
    return size


def _choice(node: _Node, choices: Sequence[_S]) -> _S:
    text = _str(node)
    for choice in choices:
        if choice == text:
            return choice
    raise node.error(f"must be one of {', '.join(choices)}, got {text!r}")


def _http_url(node: _Node) -> str:
    text = _str(node)
    try:
        parts = urlsplit(text)
        _ = parts.port  # validates the port number
    except ValueError:
        raise node.error(f"{mask_url(text)!r} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise node.error("expected an http:// or https:// URL")
    if not parts.hostname:
        raise node.error("the URL has no host")
    return text


def _s3_url(node: _Node) -> str:
    text = _str(node)
    try:
        parts = urlsplit(text)
    except ValueError:
        raise node.error("expected s3://bucket/prefix/") from None
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise node.error("expected s3://bucket/prefix/")
    if "@" in parts.netloc or ":" in parts.netloc:
        raise node.error("the bucket must not carry credentials or a port; use the s3 keys")
    if parts.query or parts.fragment:
        raise node.error("an s3 URL takes no query or fragment")
    # A prefix without its trailing slash would also match sibling "directories" when listing.
    prefix = parts.path.strip("/")
    return f"s3://{parts.netloc}/{prefix}/" if prefix else f"s3://{parts.netloc}/"


def _path(node: _Node, base: Path) -> Path:
    path = Path(_str(node)).expanduser()
    return path if path.is_absolute() else base / path


def _dev_max_age(node: _Node) -> float | None:
    # Unquoted `off` is YAML 1.1 for false, so false, null and "off" all disable age hiding.
    if node.value is None or node.value is False:
        return None
    if isinstance(node.value, str) and node.value.strip().lower() == "off":
        return None
    return _duration(node)


# --------------------------------------------------------------------------- sections

_TOP_KEYS: Final = ("server", "cache", "index", "retention", "logging", "upstreams", "projects")
_RETENTION_KEYS: Final = ("dev_max_age", "keep_latest", "keep_missing")
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
_KIND_KEYS: Final[Mapping[UpstreamKind, tuple[str, ...]]] = MappingProxyType(
    {
        "simple": (),
        "anaconda": ("label", "api_url"),
        "azure": ("username", "password"),
        "s3": ("endpoint", "addressing", "region", "access_key_id", "secret_access_key"),
        "directory": ("path",),
    }
)
_ALL_UPSTREAM_KEYS: Final = frozenset(_UPSTREAM_COMMON_KEYS).union(*_KIND_KEYS.values())
_UPSTREAM_NAME_RE: Final = re.compile(r"[a-z0-9-]+")


def _allowed_upstream_keys(kind: UpstreamKind) -> frozenset[str]:
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


def _retention_override(section: _Section) -> RetentionOverride:
    dev_max_age: float | _Inherit | None = INHERIT
    if section.has("dev_max_age"):
        dev_max_age = _dev_max_age(section.raw("dev_max_age"))
    keep_latest_node = section.get("keep_latest")
    keep_missing_node = section.get("keep_missing")
    keep_latest = INHERIT if keep_latest_node is None else _int(keep_latest_node)
    keep_missing = INHERIT if keep_missing_node is None else _duration(keep_missing_node)
    return RetentionOverride(dev_max_age, keep_latest, keep_missing)


def _server(section: _Section) -> ServerConfig:
    section.only(("host", "port"))
    defaults = ServerConfig()
    return ServerConfig(
        host=section.read("host", _str, defaults.host),
        # Port 0 asks the OS for a free port, which tests and socket activation rely on.
        port=section.read("port", lambda n: _int(n, 0, 65535), defaults.port),
    )


def _cache(section: _Section, base: Path) -> CacheConfig:
    section.only(("dir", "max_size", "max_age", "spare_memory"))
    defaults = CacheConfig(dir=base / ".nightproxy-cache")
    return CacheConfig(
        dir=section.read("dir", lambda n: _path(n, base), defaults.dir),
        max_size=section.read("max_size", _positive_size, defaults.max_size),
        max_age=section.read("max_age", _positive_duration, defaults.max_age),
        spare_memory=section.read("spare_memory", _size, defaults.spare_memory),
    )


def _index(section: _Section) -> IndexConfig:
    section.only(("ttl", "stale_if_error", "stale_while_revalidate"))
    defaults = IndexConfig()
    return IndexConfig(
        ttl=section.read("ttl", _duration, defaults.ttl),
        stale_if_error=section.read("stale_if_error", _duration, defaults.stale_if_error),
        stale_while_revalidate=section.read(
            "stale_while_revalidate", _bool, defaults.stale_while_revalidate
        ),
    )


def _retention(section: _Section) -> RetentionConfig:
    section.only(_RETENTION_KEYS)
    return _retention_override(section).apply(RetentionConfig())


def _log_level(node: _Node) -> str:
    return _choice(_Node(_str(node).upper(), node.path, node.file), _LOG_LEVELS)


def _logging(section: _Section) -> LoggingConfig:
    section.only(("format", "level"))
    defaults = LoggingConfig()
    return LoggingConfig(
        format=section.read("format", lambda n: _choice(n, _LOG_FORMATS), defaults.format),
        level=section.read("level", _log_level, defaults.level),
    )


def _headers(node: _Node) -> Mapping[str, str]:
    section = _Section(node)
    headers: dict[str, str] = {}
    for key, child in section.items():
        if not key or any(c in key for c in ": \t\r\n"):
            raise child.error("is not a valid header name")
        value = child.value
        if not isinstance(value, str):
            raise child.error(f"expected a string, got {_describe(value)}")
        if "\r" in value or "\n" in value:
            # Would let a value smuggle extra headers into every upstream request.
            raise child.error("header values must not contain line breaks")
        headers[key] = str(value)
    return MappingProxyType(headers)


def _upstream_name(node: _Node) -> str:
    name = _str(node)
    if _UPSTREAM_NAME_RE.fullmatch(name) is None:
        raise node.error(f"invalid upstream name {name!r}; use lowercase letters, digits and -")
    return name


def _upstream(node: _Node, base: Path) -> UpstreamConfig:
    section = _Section(node)
    # Typos first, against every key any kind accepts; keys of another kind once kind is known.
    section.only(_ALL_UPSTREAM_KEYS)
    kind = _choice(section.require("kind"), _KINDS)
    section.only(_allowed_upstream_keys(kind), _wrong_kind_hint(kind))
    name = _upstream_name(section.require("name"))

    url: str | None = None
    path: Path | None = None
    if kind == "directory":
        path = _path(section.require("path", "is required for kind 'directory'"), base)
    elif kind == "s3":
        url = _s3_url(section.require("url"))
    else:
        url = _http_url(section.require("url"))

    retention = section.section("retention")
    retention.only(_RETENTION_KEYS)

    endpoint = section.read("endpoint", _http_url, None)
    # Custom endpoints (MinIO, Ceph, ...) rarely support virtual-host buckets; AWS prefers them.
    default_addressing: Addressing = "path" if endpoint is not None else "virtual"
    access_key_id = section.read("access_key_id", _str, None)
    secret_access_key = section.read("secret_access_key", _str, None)
    if (access_key_id is None) != (secret_access_key is None):
        missing = "access_key_id" if access_key_id is None else "secret_access_key"
        raise ConfigError(
            node.file,
            _key_path(node.path, missing),
            "access_key_id and secret_access_key must be given together",
        )

    defaults = UpstreamConfig(name=name, kind=kind)
    return UpstreamConfig(
        name=name,
        kind=kind,
        url=url,
        timeout=section.read("timeout", _positive_duration, defaults.timeout),
        ttl=section.read("ttl", _duration, None),
        headers=section.read("headers", _headers, defaults.headers),
        dev_only=section.read("dev_only", _bool, defaults.dev_only),
        retention=_retention_override(retention),
        label=section.read("label", _str, None),
        api_url=section.read("api_url", _http_url, defaults.api_url),
        username=section.read("username", _str, None),
        password=section.read("password", _str, None),
        endpoint=endpoint,
        addressing=section.read(
            "addressing", lambda n: _choice(n, _ADDRESSING), default_addressing
        ),
        region=section.read("region", _str, defaults.region),
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        path=path,
    )


def _upstreams(node: _Node, base: Path) -> tuple[UpstreamConfig, ...]:
    if not isinstance(node.value, list):
        raise node.error(f"expected a list of upstreams, got {_describe(node.value)}")
    if not node.value:
        raise node.error("at least one upstream is required")
    upstreams: list[UpstreamConfig] = []
    first_use: dict[str, str] = {}
    for index in range(len(node.value)):
        item = node.item(index)
        upstream = _upstream(item, base)
        if upstream.name in first_use:
            earlier = first_use[upstream.name]
            raise ConfigError(
                item.file,
                _key_path(item.path, "name"),
                f"duplicate upstream name {upstream.name!r} (first used at {earlier})",
            )
        first_use[upstream.name] = item.path
        upstreams.append(upstream)
    return tuple(upstreams)


def _pinned(node: _Node, upstream_names: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(node.value, list):
        raise node.error(f"expected a list of upstream names, got {_describe(node.value)}")
    if not node.value:
        raise node.error("must name at least one upstream (omit the project to use all)")
    chosen: set[str] = set()
    for index in range(len(node.value)):
        item = node.item(index)
        name = _str(item)
        if name not in upstream_names:
            raise item.error(f"unknown upstream {name!r}; configured: {', '.join(upstream_names)}")
        if name in chosen:
            raise item.error(f"upstream {name!r} is listed twice")
        chosen.add(name)
    # Priority always comes from the upstreams list, whatever order the pin was written in.
    return tuple(name for name in upstream_names if name in chosen)


def _projects(
    section: _Section, upstream_names: Sequence[str]
) -> Mapping[NormalizedName, ProjectConfig]:
    projects: dict[NormalizedName, ProjectConfig] = {}
    written_as: dict[NormalizedName, str] = {}
    for key, node in section.items():
        try:
            name = canonicalize_name(key, validate=True)
        except InvalidName:
            raise node.error(f"{key!r} is not a valid project name") from None
        if name in written_as:
            raise node.error(
                f"duplicate project: {key!r} and {written_as[name]!r} both normalize to {name!r}"
            )
        written_as[name] = key
        if isinstance(node.value, list):
            projects[name] = ProjectConfig(upstreams=_pinned(node, upstream_names))
        elif isinstance(node.value, dict):
            project = _Section(node)
            project.only(("upstreams", *_RETENTION_KEYS))
            projects[name] = ProjectConfig(
                upstreams=project.read("upstreams", lambda n: _pinned(n, upstream_names), ()),
                retention=_retention_override(project),
            )
        else:
            raise node.error(
                "expected a list of upstream names or a mapping "
                f"(upstreams, {', '.join(_RETENTION_KEYS)}), got {_describe(node.value)}"
            )
    return MappingProxyType(projects)


# --------------------------------------------------------------------------- entry points


def config_from_mapping(
    data: object, source: Path, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate already-parsed YAML ``data`` as if it had been read from ``source``."""
    file = source.expanduser().absolute()
    env = os.environ if environ is None else environ
    if data is None:
        raise ConfigError(file, FILE_KEY, "the file is empty; at least one upstream is required")
    if not isinstance(data, Mapping):
        raise ConfigError(
            file, FILE_KEY, f"expected a mapping at the top level, got {_describe(data)}"
        )
    # Expanding everything up front means every reader below sees final values, and a missing
    # variable is reported even under a key that would be rejected for other reasons later.
    root = _Section(_Node(_expand(data, "", file, env), "", file))
    root.only(_TOP_KEYS)
    base = file.parent
    upstreams = _upstreams(root.require("upstreams", "at least one upstream is required"), base)
    return Config(
        source=file,
        server=_server(root.section("server")),
        cache=_cache(root.section("cache"), base),
        index=_index(root.section("index")),
        retention=_retention(root.section("retention")),
        logging=_logging(root.section("logging")),
        upstreams=upstreams,
        projects=_projects(root.section("projects"), [u.name for u in upstreams]),
    )


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    # Built from the parts rather than str(exc), which quotes the offending line, and that
    # line may hold a password.
    mark = exc.problem_mark or exc.context_mark
    where = f" at {_where(mark)}" if mark is not None else ""
    return f"invalid YAML{where}: {exc.problem or exc.context or 'syntax error'}"


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the configuration file at ``path``."""
    file = path.expanduser().absolute()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(file, FILE_KEY, "file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(file, FILE_KEY, "not valid UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(file, FILE_KEY, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        data = _parse_yaml(text, file)
    # `from None` also keeps PyYAML's own message, which quotes the line, out of tracebacks.
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(file, FILE_KEY, _yaml_message(exc)) from None
    except yaml.YAMLError:
        raise ConfigError(file, FILE_KEY, "invalid YAML") from None
    except RecursionError:
        # PyYAML's composer recurses once per level of nesting.
        raise ConfigError(file, FILE_KEY, "nested too deeply") from None
    try:
        return config_from_mapping(data, file, environ)
    except RecursionError:
        raise ConfigError(file, FILE_KEY, "nested too deeply") from None


_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


def _where(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _parse_yaml(text: str, file: Path) -> object:
    """``yaml.safe_load``, refusing what it would silently accept: a key given twice in one
    mapping (the last would win) and a value that contains itself (which no reader of the
    result could walk to its end)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_keys(loader, root, file)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _check_keys(loader: yaml.SafeLoader, root: yaml.Node, file: Path) -> None:
    # Each node is walked once, however many aliases point at it; a node met again while its
    # own children are being walked is a loop.
    done: set[int] = set()
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, leaving = stack.pop()
        if leaving:
            open_nodes.discard(id(node))
            done.add(id(node))
            continue
        if id(node) in open_nodes:
            raise ConfigError(
                file, path or FILE_KEY, "this alias refers to a value that contains it"
            )
        if id(node) in done:
            continue
        open_nodes.add(id(node))
        stack.append((node, path, True))
        if isinstance(node, yaml.SequenceNode):
            for index, child in reversed(list(enumerate(node.value))):
                stack.append((child, _index_path(path, index), False))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(reversed(_mapping_children(loader, node, path, file)))


def _mapping_children(
    loader: yaml.SafeLoader, node: yaml.MappingNode, path: str, file: Path
) -> list[tuple[yaml.Node, str, bool]]:
    children: list[tuple[yaml.Node, str, bool]] = []
    # By type too: `1:` and `true:` are equal in Python, not in YAML.
    seen: dict[tuple[type, object], yaml.Mark] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            # `<<: *defaults` brings keys the mapping may override; those are not duplicates.
            children.append((value_node, path, False))
            continue
        key: object = "?"
        if isinstance(key_node, yaml.ScalarNode):
            key = loader.construct_object(key_node)
            identity = (type(key), key)
            mark = key_node.start_mark
            if identity in seen:
                first, again = _where(seen[identity]), _where(mark)
                raise ConfigError(
                    file, _key_path(path, key), f"duplicate key (at {first} and again at {again})"
                )
            seen[identity] = mark
        children.append((value_node, _key_path(path, key), False))
    return children


def prepare_cache_dir(config: Config) -> None:
    """Create ``cache.dir`` if it is missing and make sure files can be written in it.

    ``check`` and ``serve`` call this, so that a directory the cache cannot live in is a
    config error naming the key, not a traceback once the server has started opening it.
    """
    path = config.cache.dir
    try:
        if path.exists() and not path.is_dir():
            reason = "not a directory"
        else:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
            return
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise ConfigError(config.source, "cache.dir", f"cannot use {path}: {reason}")


def find_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """``--config``, else ``$NIGHTPROXY_CONFIG``, else ``./nightproxy.yaml``; empty means unset."""
    chosen = cli_value or environ.get("NIGHTPROXY_CONFIG") or ""
    if chosen:
        return Path(chosen).expanduser()
    return Path.cwd() / "nightproxy.yaml"
