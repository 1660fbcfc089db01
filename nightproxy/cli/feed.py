"""``nightproxy feed delete|restore|prune``: a hosted feed's files, from a shell."""

from __future__ import annotations

import argparse
import asyncio
import sys

from nightproxy.cli.common import EXIT_USAGE, Commands, load
from nightproxy.hosted import admin
from nightproxy.hosted.feed import NotFoundError
from nightproxy.hosted.storage import RestoreConflictError


def register(commands: Commands) -> None:
    feed = commands.add_parser("feed", help="delete, restore or prune files of a hosted feed")
    feed_commands = feed.add_subparsers(dest="feed_command", required=True)
    for name, text in (
        ("delete", "move files to the trash (restorable for retention.trash)"),
        ("restore", "list trashed files again"),
    ):
        sub = feed_commands.add_parser(name, help=text)
        sub.add_argument("feed", help="the hosted upstream's name")
        sub.add_argument("project")
        which = sub.add_mutually_exclusive_group()
        which.add_argument("--version", help="only the files of this version")
        which.add_argument("--file", help="only this file")
        sub.add_argument("--config")
        sub.set_defaults(handler=feed_command)
    sub = feed_commands.add_parser("prune", help="apply retention now, and say why each file goes")
    sub.add_argument("feed", nargs="?", help="one hosted feed (default: all)")
    sub.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    sub.add_argument("--config")
    sub.set_defaults(handler=feed_command)


def feed_command(args: argparse.Namespace) -> int:
    config = load(args.config)
    try:
        if args.feed_command == "prune":
            lines = asyncio.run(admin.prune(config, args.feed, dry_run=args.dry_run))
        else:
            operation = admin.delete if args.feed_command == "delete" else admin.restore
            lines = asyncio.run(
                operation(config, args.feed, args.project, version=args.version, filename=args.file)
            )
    except admin.FeedCommandError as exc:
        print(f"nightproxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NotFoundError, RestoreConflictError) as exc:
        print(f"nightproxy: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
