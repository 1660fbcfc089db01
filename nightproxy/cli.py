"""Command line: ``nightproxy serve | check | cache stats | cache prune``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml

from nightproxy import __version__
from nightproxy.cache.store import CacheStore
from nightproxy.cache.transfer import TransferError, export_cache, import_cache
from nightproxy.config import (
    Config,
    ConfigError,
    find_config_path,
    load_config,
    masked,
    parse_duration,
    parse_size,
    prepare_cache_dir,
)

EXIT_USAGE = 2
#: On SIGTERM, how long responses in flight (downloads to clients) may take to finish: aiohttp
#: waits this long for them, then as long again for the ones it cancelled, so 30 s in all, as
#: the deploy files say.
SHUTDOWN_TIMEOUT = 15.0


def _port(text: str) -> int:
    # As server.port takes it; argparse turns the error into a usage line and exit 2.
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 0 and 65535")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nightproxy",
        description="One simple index over many nightly wheel feeds, with a pull-through cache.",
    )
    parser.add_argument("--version", action="version", version=f"nightproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument(
        "--config", help="config file (default: $NIGHTPROXY_CONFIG or ./nightproxy.yaml)"
    )
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=_port, help="listen port (overrides server.port)")
    serve.add_argument("--log-format", choices=["text", "json"], help="overrides logging.format")

    check = commands.add_parser("check", help="validate the config and print it, secrets masked")
    check.add_argument("--config")
    check.add_argument(
        "--probe",
        action="store_true",
        help="also contact every upstream and say what it found (exit 1 if one fails)",
    )

    cache = commands.add_parser("cache", help="inspect or prune the file cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    for name, text in (
        ("stats", "show what the cache holds"),
        ("prune", "evict files now"),
        ("export", "write the cache to a tar archive (to warm another machine)"),
        ("import", "add the files of an exported archive, verifying every hash"),
    ):
        sub = cache_commands.add_parser(name, help=text)
        if name in {"export", "import"}:
            sub.add_argument("archive", help="the .tar file")
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--config")
        where.add_argument("--cache-dir", help="work on this cache directory directly")
        if name == "import":
            sub.add_argument(
                "--trust-aliases",
                action="store_true",
                help="also take which upstream file each blob stands for (for files whose feed "
                "publishes no sha256); only for archives you made yourself",
            )
        if name == "stats":
            sub.add_argument("--json", action="store_true", help="print JSON")
        elif name == "prune":
            sub.add_argument("--max-size", help="evict least recently used files beyond this size")
            sub.add_argument("--max-age", help="evict files unused for longer than this")
            sub.add_argument("--dry-run", action="store_true", help="only say what would go")
    return parser


def _load(config_arg: str | None) -> Config:
    return load_config(find_config_path(config_arg, os.environ))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check":
            return _check(args)
        return _cache(args)
    except ConfigError as exc:
        print(f"nightproxy: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    prepare_cache_dir(config)
    print(yaml.safe_dump(masked(config), sort_keys=False), end="")
    print(f"# {config.source}: OK", file=sys.stderr)
    if args.probe:
        return asyncio.run(_probe(config))
    return 0


async def _probe(config: Config) -> int:
    import aiohttp

    from nightproxy.index.probe import probe, worst
    from nightproxy.upstreams import KINDS, make_upstream

    async with aiohttp.ClientSession(
        headers={"User-Agent": f"nightproxy/{__version__} (check --probe)"}, trust_env=True
    ) as session:
        upstreams = {u.name: make_upstream(u, session) for u in config.upstreams if u.kind in KINDS}
        try:
            results = await probe(config, upstreams)
        finally:
            for upstream in upstreams.values():
                await upstream.close()
    for result in results:
        print(
            f"{result.upstream} ({result.kind}): {result.verdict.upper()}: {result.detail} "
            f"[{result.seconds:.1f}s]"
        )
    for u in config.upstreams:
        if u.kind not in KINDS:
            print(f"{u.name} ({u.kind}): not probed: this server stores it")
    return 1 if worst(results) == "failed" else 0


def _serve(args: argparse.Namespace) -> int:
    from nightproxy.logs import setup_logging
    from nightproxy.server.app import create_app
    from nightproxy.server.runner import ListenError, bind, bound_port, run

    config = _load(args.config)
    prepare_cache_dir(config)
    setup_logging(args.log_format or config.logging.format, config.logging.level)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    try:
        sockets = bind(host, port)
    except ListenError as exc:
        print(f"nightproxy: {exc}", file=sys.stderr)
        return 1
    # Only now: the port is ours, and connections queue until the app answers them.
    logging.getLogger("nightproxy").info(
        "nightproxy %s serving %d upstreams on http://%s:%d/simple/ (config %s)",
        __version__,
        len(config.upstreams),
        host,
        bound_port(sockets),
        config.source,
    )
    # SIGINT/SIGTERM: stop accepting, drain, run cleanup contexts.
    run(create_app(config), sockets, shutdown_timeout=SHUTDOWN_TIMEOUT)
    return 0


def _cache(args: argparse.Namespace) -> int:
    source = Path("(command line)")
    if args.cache_dir:
        root = Path(args.cache_dir).expanduser().resolve()
        budget, max_age = 0, 0.0
        if args.cache_command != "import" and not (root / "state.sqlite").exists():
            raise ConfigError(source, "--cache-dir", f"{root} is not a nightproxy cache directory")
    else:
        config = _load(args.config)
        prepare_cache_dir(config)
        root, budget, max_age = config.cache.dir, config.cache.max_size, config.cache.max_age
    if args.cache_command == "prune":
        if args.max_size is not None:
            budget = parse_size(args.max_size, "--max-size", source)
        if args.max_age is not None:
            max_age = parse_duration(args.max_age, "--max-age", source)
        if not budget and not max_age:
            raise ConfigError(source, "--max-size", "give --max-size or --max-age (or --config)")
    store = CacheStore(root, budget or 2**63, max_age or float("inf"))
    store.open(clean_tmp=False)
    try:
        if args.cache_command == "stats":
            return _stats(store, as_json=args.json)
        if args.cache_command in {"export", "import"}:
            return _transfer(
                store,
                args.cache_command,
                Path(args.archive),
                trust_aliases=getattr(args, "trust_aliases", False),
            )
        return _prune(store, dry_run=args.dry_run)
    finally:
        store.close()


def _transfer(store: CacheStore, command: str, archive: Path, *, trust_aliases: bool) -> int:
    exporting = command == "export"
    skipped = 0
    try:
        if exporting:
            files, size = export_cache(store, archive)
        else:
            files, size, skipped = import_cache(store, archive, trust_aliases=trust_aliases)
    except TransferError as exc:
        print(f"nightproxy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # Named, since it may not be the archive itself: its .part, a blob, the cache's tmp/.
        failed = f": {exc.filename}" if exc.filename is not None else ""
        what = f"export to {archive}" if exporting else f"import {archive}"
        print(f"nightproxy: cannot {what}: {exc.strerror or exc}{failed}", file=sys.stderr)
        return 1
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


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def _stats(store: CacheStore, *, as_json: bool) -> int:
    stats = store.stats()
    data = {
        "dir": str(store.root),
        "files": stats.files,
        "bytes": stats.bytes,
        "budget": stats.budget if stats.budget < 2**63 else None,
        "oldest_use": _iso(stats.oldest_use),
        "newest_use": _iso(stats.newest_use),
    }
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key:>11}: {value if value is not None else '-'}")
    return 0


def _prune(store: CacheStore, *, dry_run: bool) -> int:
    before = store.stats()
    victims = store.expired(time.time())
    over = store.reserve(0)
    victims += over or []
    freed = before.bytes - store.used_bytes
    verb = "would evict" if dry_run else "evicted"
    if not dry_run:
        store.delete_blobs(victims)
    print(f"{verb} {len(victims)} files, {freed} bytes; {store.file_count} files remain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
