"""``${VAR}`` and ``${VAR:-default}`` in any string of the configuration."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nightproxy.config.errors import ConfigError, index_path, key_path

__all__ = ["Expanded", "expand"]

# `${` followed by anything but a well-formed reference still matches (with name None), so a
# typo such as `${TOKEN` is reported instead of silently passing through as literal text.
_REFERENCE: Final = re.compile(
    r"\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})?"
)


class Expanded(str):
    """Text that came at least partly from the environment.

    Environment variables are always strings, so ``port: ${PORT}`` must still read as an
    integer; a literal ``port: "8080"`` written in the file stays a type error.
    """

    __slots__ = ()


def expand(value: object, path: str, file: Path, environ: Mapping[str, str]) -> object:
    """``value`` with ``${VAR}``/``${VAR:-default}`` substituted in every string inside it."""
    if isinstance(value, str):
        return _expand_text(value, path, file, environ)
    if isinstance(value, Mapping):
        return {k: expand(v, key_path(path, k), file, environ) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [expand(v, index_path(path, i), file, environ) for i, v in enumerate(value)]
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

    return Expanded(_REFERENCE.sub(substitute, text))
