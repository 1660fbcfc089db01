"""The one error type of configuration loading, and how errors name places and values.

Every message names the file and the key path (``upstreams[1].url``) so a user finds the line
without reading a traceback. A value is echoed only when it cannot be a credential, and then cut
short: a 100 KB mistake must still make a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["FILE_KEY", "ConfigError", "cut", "describe", "index_path", "key_path", "shown"]

#: The key reported for problems with the file as a whole (missing, empty, not YAML).
FILE_KEY: Final = "(file)"
#: How much of a value or key an error echoes before cutting it short.
ECHO_LIMIT: Final = 80


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


def cut(text: str) -> str:
    """``text`` itself, or its first :data:`ECHO_LIMIT` characters and an ellipsis."""
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "…"


def shown(text: str) -> str:
    """A value quoted for an error message, cut short. Never call it on a credential."""
    return repr(cut(text))


def key_path(parent: str, key: object) -> str:
    name = str(key)
    # A key with a control character (a NUL, a line break) would garble the one-line error.
    name = cut(name if name.isprintable() else repr(name))
    return f"{parent}.{name}" if parent else name


def index_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def describe(value: object) -> str:
    """The type of ``value`` in words; never the value, which may be a credential."""
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
