"""``nightproxy token new``: a fresh upload token for a hosted feed, and its config line."""

from __future__ import annotations

import argparse
import sys

from nightproxy.cli.common import Commands
from nightproxy.hosted.auth import new_token


def register(commands: Commands) -> None:
    token = commands.add_parser("token", help="make upload tokens for hosted feeds")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    new = token_commands.add_parser(
        "new", help="print a fresh random token and the sha256: line for the config"
    )
    new.set_defaults(handler=new_command)


def new_command(_args: argparse.Namespace) -> int:
    secret, line = new_token()
    print(secret)
    print(line)
    print(
        "# line 1 is the secret: give it to the uploader (a CI secret, as the password of "
        "__token__); line 2 goes in publishers.<project>.tokens or admins",
        file=sys.stderr,
    )
    return 0
