"""What every command shares: the config lookup and the usage exit code."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeAlias

from nightproxy.config import Config, find_config_path, load_config

EXIT_USAGE = 2
CONFIG_HELP = "config file (default: $NIGHTPROXY_CONFIG or ./nightproxy.yaml)"

#: What each command module's ``register`` adds its subcommands to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: A command: the parsed arguments in, the exit status out.
Handler: TypeAlias = Callable[[argparse.Namespace], int]


def load(config_arg: str | None) -> Config:
    """The config named on the command line, else by $NIGHTPROXY_CONFIG, else ./nightproxy.yaml."""
    return load_config(find_config_path(config_arg, os.environ))


#: Up to what the config's sizes can say (``parse_size`` reads these back).
_UNITS = ("KiB", "MiB", "GiB", "TiB")


def _figure(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}".removesuffix(".0")


def human_size(n: int) -> str:
    """``n`` bytes for a reader: ``512 B``, ``1.2 GiB``, ``20 GiB`` (powers of 1024, as the
    config's ``20GiB`` means)."""
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, 0
    # 1023.96 KiB would print as "1024 KiB": the next unit reads better.
    while float(_figure(value)) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{_figure(value)} {_UNITS[unit]}"


def human_age(seconds: float) -> str:
    """How long ago, roughly: ``40 s``, ``12 min``, ``5.5 h``, ``3 d``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{seconds / 86400:.0f} d"


def human_time(ts: float, now: float) -> str:
    """A moment in UTC to the minute, and how long before ``now`` it was."""
    when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{when} ({human_age(now - ts)} ago)"
