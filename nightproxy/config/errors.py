"""The one error type of configuration loading, and how errors name places and values.

Every message names the file and the key path (``upstreams[1].url``) so a user finds the line
without reading a traceback. A value is echoed only when it cannot be a credential.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["FILE_KEY", "ConfigError", "describe", "index_path", "key_path"]

#: The key reported for problems with the file as a whole (missing, empty, not YAML).
FILE_KEY: Final = "(file)"


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


def key_path(parent: str, key: object) -> str:
    return f"{parent}.{key}" if parent else str(key)


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
