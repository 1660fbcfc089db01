"""Durations (``10m``, ``7d``) and sizes (``512MB``, ``20GiB``): parsing and printing."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Final

from nightproxy.config.errors import ConfigError, describe, shown

__all__ = ["format_duration", "parse_duration", "parse_size"]

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
    """Seconds from ``30s``/``10m``/``1.5h``/``7d``/``2w``.

    A number needs its unit: ``ttl: 10`` could mean seconds or minutes, so it is refused with
    the advice to write ``10s``. Only zero, the same in every unit, may go without one.
    """
    # bool is an int subclass: `ttl: yes` is a mistake, not one second.
    if isinstance(value, bool):
        raise ConfigError(file, key, "expected a duration such as 10m, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(file, key, "must be a finite duration")
        if value < 0:
            raise ConfigError(file, key, "must not be negative")
        if value != 0:
            raise ConfigError(file, key, _unit_missing(f"{value:g}"))
        return 0.0
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ConfigError(file, key, "must not be negative")
        match = _DURATION_RE.fullmatch(text)
        if match is None:
            raise ConfigError(
                file, key, f"invalid duration {shown(text)}; use a number and one of s, m, h, d, w"
            )
        number = Decimal(match["number"])
        if match["unit"] is None and number != 0:
            raise ConfigError(file, key, _unit_missing(match["number"]))
        # Decimal keeps "1.5h" exact; the float conversion happens once, at the end.
        return float(number * _DURATION_UNITS[match["unit"] or "s"])
    raise ConfigError(file, key, f"expected a duration such as 10m, got {describe(value)}")


def _unit_missing(number: str) -> str:
    return f"a duration needs a unit: write {number}s for seconds (or use m, h, d, w)"


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
                file, key, f"invalid size {shown(text)}; use a number and a unit such as MB or GiB"
            )
        unit = match["unit"]
        if unit is None and "." in match["number"]:
            raise ConfigError(file, key, "a size without a unit must be a whole number of bytes")
        # "1.1GiB" is not a whole number of bytes; rounding down is what anyone would expect.
        return int(Decimal(match["number"]) * _SIZE_UNITS[(unit or "b").lower()])
    raise ConfigError(file, key, f"expected a size such as 20GiB, got {describe(value)}")


def format_duration(seconds: float) -> str:
    """``seconds`` the way a user would write it: the largest of d, h, m, s that states it
    exactly, so ``600`` reads back as ``10m`` and ``14d`` stays ``14d``.

    Weeks are never chosen: ``14d`` turned into ``2w`` reads as a different setting.
    """
    if seconds > 0:
        for unit in ("d", "h", "m", "s"):
            factor = _DURATION_UNITS[unit]
            if seconds % factor == 0:
                return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"
