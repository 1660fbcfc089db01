"""``nightproxy serve``: bind the port, then run the proxy until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Literal

from nightproxy import __version__
from nightproxy.cli.common import CONFIG_HELP, Commands, load
from nightproxy.config import prepare_cache_dir

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


def _workers(text: str) -> int | Literal["auto"]:
    # As server.workers takes it.
    if text == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} workers: at least 1")
    return count


def register(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help=CONFIG_HELP)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=_port, help="listen port (overrides server.port)")
    serve.add_argument("--log-format", choices=["text", "json"], help="overrides logging.format")
    serve.add_argument(
        "--workers",
        type=_workers,
        help="serving processes over one cache, or 'auto' for one per CPU "
        "(overrides server.workers)",
    )
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    # Imported here so that `check` and `cache` start without loading the server.
    from nightproxy.logs import setup_logging
    from nightproxy.server.app import create_app
    from nightproxy.server.connections import check_cap, raise_open_files_limit
    from nightproxy.server.runner import ListenError, bind, bound_port, run
    from nightproxy.server.tls import load_tls
    from nightproxy.server.workers import serve_workers

    config = load(args.config)
    prepare_cache_dir(config)
    # Certificate files that cannot be used are a config error before anything listens (each
    # process loads them again for itself).
    load_tls(config)
    setup_logging(args.log_format or config.logging.format, config.logging.level)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    server = config.server
    if args.workers is not None:
        server = dataclasses.replace(server, workers=args.workers)
    workers = server.worker_count()
    try:
        sockets = bind(host, port)
    except ListenError as exc:
        print(f"nightproxy: {exc}", file=sys.stderr)
        return 1
    # Only now: the port is ours, and connections queue until the app answers them.
    logging.getLogger("nightproxy").info(
        "nightproxy %s serving %d upstreams on %s://%s:%d/simple/ (config %s%s)",
        __version__,
        len(config.upstreams),
        "https" if config.server.tls is not None else "http",
        host,
        bound_port(sockets),
        config.source,
        f", {workers} workers" if workers > 1 else "",
    )
    soft, hard = raise_open_files_limit()
    logging.getLogger("nightproxy").info(
        "open files: up to %d per process (hard limit %s); at most %d client connections each",
        soft,
        "unlimited" if hard < 0 else hard,
        config.server.max_connections,
    )
    check_cap(config.server.max_connections, soft)
    if workers > 1:
        return serve_workers(config, sockets, workers, shutdown_timeout=SHUTDOWN_TIMEOUT)
    # SIGINT/SIGTERM: stop accepting, drain, run cleanup contexts.
    run(create_app(config), sockets, shutdown_timeout=SHUTDOWN_TIMEOUT)
    return 0
