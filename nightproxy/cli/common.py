"""What every command shares: the config lookup and the usage exit code."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeAlias

from nightproxy.config import Config, find_config_path, load_config

EXIT_USAGE = 2

#: What each command module's ``register`` adds its subcommands to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: A command: the parsed arguments in, the exit status out.
Handler: TypeAlias = Callable[[argparse.Namespace], int]


def load(config_arg: str | None) -> Config:
    """The config named on the command line, else by $NIGHTPROXY_CONFIG, else ./nightproxy.yaml."""
    return load_config(find_config_path(config_arg, os.environ))
