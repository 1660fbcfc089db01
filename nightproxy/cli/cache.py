"""``nightproxy cache stats | prune | verify | export | import``: work on a cache directory.

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

from nightproxy.cache.store import BlobRecord, CacheStore
from nightproxy.cache.transfer import SkippedAliases, TransferError, export_cache, import_cache
from nightproxy.cache.verify import verify_all
from nightproxy.cli.common import (
    CONFIG_HELP,
    Commands,
    Handler,
    human_age,
    human_size,
    human_time,
    load,
)
from nightproxy.cli.progress import progress_bar
from nightproxy.config import ConfigError, parse_duration, parse_size, prepare_cache_dir
from nightproxy.config.units import format_duration
from nightproxy.simple_api.filenames import METADATA_SUFFIX, parse_dist_filename

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
        where.add_argument("--config", help=CONFIG_HELP)
        where.add_argument("--cache-dir", help="work on this cache directory directly")
        sub.set_defaults(handler=handler)
        return sub

    stats = add("stats", "show what the cache holds", stats_command)
    stats.add_argument("--json", action="store_true", help="print JSON")
    prune = add("prune", "evict files now", prune_command)
    prune.add_argument("--max-size", help="evict least recently used files beyond this size")
    prune.add_argument("--max-age", help="evict files unused for longer than this")
    prune.add_argument(
        "--dry-run", action="store_true", help="only list what would go (and why), delete nothing"
    )
    prune.add_argument(
        "-v", "--verbose", action="store_true", help="list every evicted file, not only the count"
    )
    add(
        "verify",
        "check every cached file against its sha256, evicting those that differ",
        verify_command,
    )
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
        help="also take which upstream file each blob stands for (files of feeds that publish "
        "no sha256, and which wheel each metadata file belongs to); only for archives you made "
        "yourself",
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
        root, stats = store.root, store.stats()
    budget = stats.budget if stats.budget < _NO_BUDGET else None
    if args.json:
        data = {
            "dir": str(root),
            "files": stats.files,
            "bytes": stats.bytes,
            "budget": budget,
            "oldest_use": _iso(stats.oldest_use),
            "newest_use": _iso(stats.newest_use),
        }
        print(json.dumps(data, indent=2))
        return 0
    now = time.time()
    size = human_size(stats.bytes)
    if budget:
        share = stats.bytes * 100 / budget
        size += f" of {human_size(budget)} ({'<1' if 0 < share < 1 else f'{share:.0f}'}%)"
    else:
        size += " (no size budget)"
    rows = {
        "dir": str(root),
        "files": str(stats.files),
        "size": size,
        "oldest use": "-" if stats.oldest_use is None else human_time(stats.oldest_use, now),
        "newest use": "-" if stats.newest_use is None else human_time(stats.newest_use, now),
    }
    for key, value in rows.items():
        print(f"{key:>10}: {value}")
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
    now = time.time()
    with _opened(root, budget, max_age) as store:
        # Before anything goes: the names and last uses of what will.
        known = {blob["sha256"]: blob for blob in store.snapshot()[0]}
        pruned = store.prune(now, dry_run=args.dry_run)
        victims = [sha for sha, _size in pruned]
        freed = sum(size for _sha, size in pruned)
        remain = store.file_count - (len(victims) if args.dry_run else 0)
    rows = [_victim_row(sha, known.get(sha), now, budget, max_age) for sha in victims]
    verb = "would evict" if args.dry_run else "evicted"
    print(
        f"{verb} {len(victims)} files, {freed} bytes ({human_size(freed)}); {remain} files remain"
    )
    if rows and (args.dry_run or args.verbose):
        _print_table(("FILE", "PROJECT", "SIZE", "LAST USE", "WHY"), rows)
    return 0


def _victim_row(
    sha: str, blob: BlobRecord | None, now: float, budget: int, max_age: float
) -> tuple[str, ...]:
    """One evicted file as the table shows it."""
    if blob is None:  # not in the database: nothing to say but its digest
        return (sha[:16], "-", "-", "-", "over budget")
    filename = blob["filename"]
    dist = parse_dist_filename(filename.removesuffix(METADATA_SUFFIX))
    last_use = blob["last_use"]
    if max_age and last_use < now - max_age:
        why = f"unused for {human_age(now - last_use)} (max age {format_duration(max_age)})"
    else:
        why = f"over budget ({human_size(budget)})"
    return (
        filename or sha[:16],
        dist.project if dist is not None else "-",
        human_size(blob["size"]),
        human_time(last_use, now),
        why,
    )


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


# -- verify ---------------------------------------------------------------------------------------


def verify_command(args: argparse.Namespace) -> int:
    with _opened(*_place(args)) as store:
        checked, size, bad = verify_all(store)
    for filename, sha, actual in bad:
        print(f"{filename or sha}: bytes hash to {actual}, not {sha}: evicted")
    print(f"checked {checked} files, {size} bytes: {len(bad) or 'none'} corrupt")
    return 1 if bad else 0


# -- export / import ------------------------------------------------------------------------------


def transfer_command(args: argparse.Namespace) -> int:
    archive = Path(args.archive)
    exporting = args.cache_command == "export"
    skipped = SkippedAliases()
    with _opened(*_place(args)) as store, progress_bar(args.cache_command) as progress:
        try:
            if exporting:
                files, size = export_cache(store, archive, progress)
            else:
                files, size, skipped = import_cache(
                    store, archive, trust_aliases=args.trust_aliases, progress=progress
                )
        except (TransferError, OSError) as exc:
            return _failed(exc, f"export to {archive}" if exporting else f"import {archive}")
    amount = f"{files} files, {size} bytes ({human_size(size)})"
    print(f"exported {amount} to {archive}" if exporting else f"imported {amount} from {archive}")
    # An archive cannot vouch for either claim; without them nothing is lost but a fetch.
    if skipped.files:
        print(
            f"left out {skipped.files} file aliases (which file of a feed without sha256 a blob "
            "is): such files are downloaded and verified again on first use"
        )
    if skipped.metadata:
        print(
            f"left out {skipped.metadata} metadata aliases (which wheel a metadata file belongs "
            "to): that metadata is fetched or read from its wheel again on first use"
        )
    if skipped.files or skipped.metadata:
        print("--trust-aliases takes them, for an archive you made yourself")
    return 0


def _failed(exc: TransferError | OSError, what: str) -> int:
    if isinstance(exc, TransferError):
        print(f"nightproxy: {exc}", file=sys.stderr)
    else:
        # Named, since it may not be the archive itself: its .part, a blob, the cache's tmp/.
        failed = f": {exc.filename}" if exc.filename is not None else ""
        print(f"nightproxy: cannot {what}: {exc.strerror or exc}{failed}", file=sys.stderr)
    return 1
