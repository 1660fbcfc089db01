"""``nightproxy check [--probe]``: validate the config, print it masked, optionally probe."""

from __future__ import annotations

import argparse
import asyncio
import sys

import yaml

from nightproxy import __version__
from nightproxy.cli.common import CONFIG_HELP, Commands, load
from nightproxy.config import Config, masked, prepare_cache_dir


def register(commands: Commands) -> None:
    check = commands.add_parser("check", help="validate the config and print it, secrets masked")
    check.add_argument("--config", help=CONFIG_HELP)
    check.add_argument(
        "--probe",
        action="store_true",
        help="also contact every upstream and say what it found (exit 1 if one fails)",
    )
    check.set_defaults(handler=check_command)


def check_command(args: argparse.Namespace) -> int:
    config = load(args.config)
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
