"""A small validation toolkit: YAML values that know their key path, and readers of one type.

Home-made on purpose: the messages (file, key path, "did you mean") are the interface users see,
and a general validation library would word them its own way. Every reader either returns a
typed value or raises a :class:`ConfigError` at the key it read.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

from nightproxy.config.env import Expanded
from nightproxy.config.errors import FILE_KEY, ConfigError, describe, index_path, key_path, shown
from nightproxy.config.masking import mask_url
from nightproxy.config.units import parse_duration, parse_size

__all__ = [
    "Node",
    "Section",
    "off_or",
    "read_bool",
    "read_choice",
    "read_duration",
    "read_file",
    "read_http_url",
    "read_https_url",
    "read_int",
    "read_path",
    "read_positive_duration",
    "read_positive_size",
    "read_rate",
    "read_s3_url",
    "read_size",
    "read_str",
]

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)


@dataclass(frozen=True, slots=True)
class Node:
    """A YAML value and the key path it was found at, so any error can say where."""

    value: object
    path: str
    file: Path

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.file, self.path or FILE_KEY, message)

    def item(self, index: int) -> Node:
        assert isinstance(self.value, list)
        return Node(self.value[index], index_path(self.path, index), self.file)

    def items(self) -> Iterator[Node]:
        """The items of a list, each at its own path."""
        assert isinstance(self.value, list)
        for index in range(len(self.value)):
            yield self.item(index)


class Section:
    """A mapping being read: hands out child nodes and rejects keys nobody asked for.

    An absent or null section reads as empty, so `server:` with nothing under it means defaults.
    """

    def __init__(self, node: Node) -> None:
        value = {} if node.value is None else node.value
        if not isinstance(value, dict):
            raise node.error(f"expected a mapping, got {describe(node.value)}")
        for key in value:
            if not isinstance(key, str):
                # YAML turns unquoted `1:`, `yes:` or `null:` into non-strings; say so.
                raise node.error(f"keys must be strings (quote them), got {describe(key)}")
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
            raise ConfigError(self.node.file, key_path(self.node.path, key), f"unknown key{extra}")

    def has(self, key: str) -> bool:
        return key in self._items

    def raw(self, key: str) -> Node:
        """The child at ``key`` even if it is null (for keys where null means something)."""
        return Node(self._items.get(key), key_path(self.node.path, key), self.node.file)

    def get(self, key: str) -> Node | None:
        """The child at ``key``; an explicit null counts as absent, so `ttl:` means default."""
        return None if self._items.get(key) is None else self.raw(key)

    def require(self, key: str, message: str = "is required") -> Node:
        node = self.get(key)
        if node is None:
            raise self.error_at(key, message)
        return node

    def read(self, key: str, reader: Callable[[Node], _T], default: _T) -> _T:
        node = self.get(key)
        return default if node is None else reader(node)

    def section(self, key: str) -> Section:
        return Section(self.raw(key))

    def items(self) -> Iterator[tuple[str, Node]]:
        for key in self._items:
            yield key, self.raw(key)

    def error_at(self, key: str, message: str) -> ConfigError:
        """An error at ``key`` of this section, whether or not the key is present."""
        return ConfigError(self.node.file, key_path(self.node.path, key), message)


def read_str(node: Node) -> str:
    if not isinstance(node.value, str):
        raise node.error(f"expected a string, got {describe(node.value)}")
    if not node.value.strip():
        raise node.error("must not be empty")
    if "\0" in node.value:
        # No path, URL or name may hold one, and os calls fail on it with a bare ValueError.
        raise node.error("must not contain a NUL character")
    return str(node.value)  # drops the Expanded marker


def read_int(node: Node, minimum: int = 0, maximum: int | None = None) -> int:
    value = node.value
    if isinstance(value, Expanded):
        try:
            value = int(value)
        except ValueError:
            raise node.error("expected an integer from the environment") from None
    # bool is an int subclass; `keep_latest: yes` must not mean 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise node.error(f"expected an integer, got {describe(value)}")
    if value < minimum:
        raise node.error("must not be negative" if minimum == 0 else f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise node.error(f"must be <= {maximum}")
    return value


_TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


def read_bool(node: Node) -> bool:
    value = node.value
    if isinstance(value, Expanded):
        word = value.strip().lower()
        if word in _TRUE_WORDS | _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise node.error("expected true or false from the environment")
    if not isinstance(value, bool):
        raise node.error(f"expected true or false, got {describe(value)}")
    return value


def read_duration(node: Node) -> float:
    return parse_duration(node.value, node.path, node.file)


def read_positive_duration(node: Node) -> float:
    seconds = read_duration(node)
    if seconds == 0:
        raise node.error("must be greater than zero")
    return seconds


def read_size(node: Node) -> int:
    return parse_size(node.value, node.path, node.file)


def read_positive_size(node: Node) -> int:
    size = read_size(node)
    if size == 0:
        raise node.error("must be greater than zero")
    return size


def read_choice(node: Node, choices: Sequence[_S]) -> _S:
    text = read_str(node)
    for choice in choices:
        if choice == text:
            return choice
    raise node.error(f"must be one of {', '.join(choices)}, got {shown(text)}")


def read_http_url(node: Node) -> str:
    text = read_str(node)
    try:
        parts = urlsplit(text)
        _ = parts.port  # validates the port number
    except ValueError:
        raise node.error(f"{shown(mask_url(text))} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise node.error("expected an http:// or https:// URL")
    if not parts.hostname:
        raise node.error("the URL has no host")
    return text


def read_https_url(node: Node) -> str:
    text = read_http_url(node)
    if urlsplit(text).scheme.lower() != "https":
        raise node.error("expected an https:// URL")
    return text


def read_s3_url(node: Node) -> str:
    """``s3://bucket/prefix/``, normalized to end in ``/``."""
    text = read_str(node)
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


def read_path(node: Node, base: Path) -> Path:
    """A path with ``~`` expanded; a relative one is taken relative to ``base``."""
    try:
        path = Path(read_str(node)).expanduser()
    except RuntimeError:
        # `~user/...` for a user this machine does not know, or no home directory at all.
        raise node.error("cannot expand ~: no such user or no home directory") from None
    return path if path.is_absolute() else base / path


def read_file(node: Node, base: Path) -> Path:
    """The path of a file that exists and can be read now (a certificate, a CA bundle)."""
    path = read_path(node, base)
    where = shown(str(path))
    try:
        if not path.exists():
            raise node.error(f"no such file: {where}")
        if not path.is_file():
            raise node.error(f"{where} is not a file")
    except OSError as exc:
        raise node.error(f"cannot use {where}: {exc.strerror or exc}") from None
    if not os.access(path, os.R_OK):
        raise node.error(f"cannot read {where}: permission denied")
    return path


def read_rate(node: Node) -> int:
    """Bytes per second from a size, written alone or followed by ``/s`` (``8MiB/s``)."""
    value = node.value
    if isinstance(value, str):
        text = value.strip()
        value = text.removesuffix("/s").rstrip() if text.endswith("/s") else text
    return parse_size(value, node.path, node.file)


def _says_off(value: object) -> bool:
    # Unquoted `off` is YAML 1.1 for false, so false, null and "off" all mean off.
    if value is None or value is False:
        return True
    return isinstance(value, str) and value.strip().lower() == "off"


def off_or(reader: Callable[[Node], _T]) -> Callable[[Node], _T | None]:
    """``reader``, except that ``off`` (or ``false``, or null) reads as None."""

    def read(node: Node) -> _T | None:
        return None if _says_off(node.value) else reader(node)

    return read
