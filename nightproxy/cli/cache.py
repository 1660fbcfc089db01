"""``nightproxy cache stats | prune | export | import``: work on a cache directory offline.

Each subcommand finds the cache from ``--config`` (with its budget and max age) or takes a bare
``--cache-dir``, and opens the store beside a server that may be running on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from nightproxy.cache.store import CacheStore
from nightproxy.cache.transfer import TransferError, export_cache, import_cache
from nightproxy.cli.common import Commands, Handler, load
from nightproxy.config import ConfigError, parse_duration, parse_size, prepare_cache_dir

_SOURCE = Path("(command line)")
#: CacheStore's "no limit" for the size budget.
_NO_BUDGET = 2**63


def register(commands: Commands) -> None:
    cache = commands.add_parser("cache", help="inspect or prune the file cache")
    subcommands = cache.add_subparsers(dest="cache_command", required=True)

    def add(
        name: str, text: str, handler: Handler, *, archive: bool = False
    ) -> argparse.ArgumentParser:
        sub = subcommands.add_parser(name, help=text)
        if archive:
            sub.add_argument("archive", help="the .tar file")
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--config")
        where.add_argument("--cache-dir", help="work on this cache directory directly")
        sub.set_defaults(handler=handler)
        return sub

    stats = add("stats", "show what the cache holds", stats_command)
    stats.add_argument("--json", action="store_true", help="print JSON")
    prune = add("prune", "evict files now", prune_command)
    prune.add_argument("--max-size", help="evict least recently used files beyond this size")
    prune.add_argument("--max-age", help="evict files unused for longer than this")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    add(
        "export",
        "write the cache to a tar archive (to warm another machine)",
        transfer_command,
        archive=True,
    )
    imp = add(
        "import",
        "add the files of an exported archive, verifying every hash",
        transfer_command,
        archive=True,
    )
    imp.add_argument(
        "--trust-aliases",
        action="store_true",
        help="also take which upstream file each blob stands for (for files whose feed "
        "publishes no sha256); only for archives you made yourself",
    )


def _place(args: argparse.Namespace) -> tuple[Path, int, float]:
    """The cache directory, its size budget and max age (0: none) from the arguments."""
    if args.cache_dir:
        root = Path(args.cache_dir).expanduser().resolve()
        if args.cache_command != "import" and not (root / "state.sqlite").exists():
            raise ConfigError(_SOURCE, "--cache-dir", f"{root} is not a nightproxy cache directory")
        return root, 0, 0.0
    config = load(args.config)
    prepare_cache_dir(config)
    return config.cache.dir, config.cache.max_size, config.cache.max_age


@contextmanager
def _opened(root: Path, budget: int, max_age: float) -> Iterator[CacheStore]:
    store = CacheStore(root, budget or _NO_BUDGET, max_age or float("inf"))
    store.open(clean_tmp=False)
    try:
        yield store
    finally:
        store.close()


# -- stats ----------------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def stats_command(args: argparse.Namespace) -> int:
    with _opened(*_place(args)) as store:
        stats = store.stats()
        data = {
            "dir": str(store.root),
            "files": stats.files,
            "bytes": stats.bytes,
            "budget": stats.budget if stats.budget < _NO_BUDGET else None,
            "oldest_use": _iso(stats.oldest_use),
            "newest_use": _iso(stats.newest_use),
        }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key:>11}: {value if value is not None else '-'}")
    return 0


# -- prune ----------------------------------------------------------------------------------------


def prune_command(args: argparse.Namespace) -> int:
    root, budget, max_age = _place(args)
    if args.max_size is not None:
        budget = parse_size(args.max_size, "--max-size", _SOURCE)
    if args.max_age is not None:
        max_age = parse_duration(args.max_age, "--max-age", _SOURCE)
    if not budget and not max_age:
        raise ConfigError(_SOURCE, "--max-size", "give --max-size or --max-age (or --config)")
    with _opened(root, budget, max_age) as store:
        before = store.stats()
        victims = store.expired(time.time())
        over = store.reserve(0)
        victims += over or []
        freed = before.bytes - store.used_bytes
        verb = "would evict" if args.dry_run else "evicted"
        if not args.dry_run:
            store.delete_blobs(victims)
        print(f"{verb} {len(victims)} files, {freed} bytes; {store.file_count} files remain")
    return 0


# -- export / import ------------------------------------------------------------------------------


def transfer_command(args: argparse.Namespace) -> int:
    archive = Path(args.archive)
    exporting = args.cache_command == "export"
    skipped = 0
    with _opened(*_place(args)) as store:
        try:
            if exporting:
                files, size = export_cache(store, archive)
            else:
                files, size, skipped = import_cache(
                    store, archive, trust_aliases=args.trust_aliases
                )
        except (TransferError, OSError) as exc:
            return _failed(exc, f"export to {archive}" if exporting else f"import {archive}")
    if exporting:
        print(f"exported {files} files, {size} bytes to {archive}")
    else:
        print(f"imported {files} files, {size} bytes from {archive}")
    if skipped:
        print(
            f"left out {skipped} file aliases (files of feeds that publish no sha256 are "
            "downloaded and verified again on first use); --trust-aliases takes them"
        )
    return 0


def _failed(exc: TransferError | OSError, what: str) -> int:
    if isinstance(exc, TransferError):
        print(f"nightproxy: {exc}", file=sys.stderr)
    else:
        # Named, since it may not be the archive itself: its .part, a blob, the cache's tmp/.
        failed = f": {exc.filename}" if exc.filename is not None else ""
        print(f"nightproxy: cannot {what}: {exc.strerror or exc}{failed}", file=sys.stderr)
    return 1
