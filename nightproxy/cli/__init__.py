"""Command line: ``nightproxy serve | check | cache ... | token new | feed ...``.

This module wires the parser; each command group lives in its own module with a ``register``
that adds its subcommands and sets the ``handler`` that runs them; a new group (``feed``,
``token``) is one more module and one more name in ``_parser``'s loop.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nightproxy import __version__
from nightproxy.cli import cache, check, feed, serve, token
from nightproxy.cli.common import EXIT_USAGE, Handler
from nightproxy.config import ConfigError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nightproxy",
        description="One simple index over many nightly wheel feeds, with a pull-through cache.",
    )
    parser.add_argument("--version", action="version", version=f"nightproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (serve, check, cache, token, feed):
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"nightproxy: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
