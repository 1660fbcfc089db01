"""A/B of two nightproxy source trees on the cold 50 MB download, beside nginx direct.

    python bench/ab.py --a <tree> --b <tree> [--rounds 4]

A tree is a checkout of the repository (``git worktree add /tmp/a <commit>``). Each side runs
the bench venv's ``nightproxy serve`` with ``PYTHONPATH=<tree>`` from a neutral working
directory, so that the tree's code is what runs: started with ``python -m`` from a checkout,
Python would put that checkout first on ``sys.path`` whatever ``PYTHONPATH`` says, and both
sides would run the same code. Each side reports the ``nightproxy.__file__`` it imported.

Each round starts both sides with empty caches, then fetches every cold file of the fixture
once from nginx direct and once through each side, alternating which side goes first. It
prints the medians of the total time and of the time to the first body byte.

``--b-env NAME=VALUE`` sets an environment variable for side B only: the same tree on both
sides then measures a deployment setting such as glibc's ``MALLOC_*`` variables.

``--warm-load SECONDS`` first sends each target's warm 50 MB file to 8 clients for that long
before every cold download, as ``run.py`` does (its warm download scenario comes just before
the cold one): on this VM that load changes the cold figure (see ``bench/RESULTS.md``).

On the 2-core development machine two sides running the *same* tree differ by up to about 12%
in their medians: a change to the cold path has to beat that to be told from noise.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import fixture
import targets as tg
from run import VENV, WORK, LoadClient, log, published_url, setup_venv


class Side(tg.Nightproxy):
    def __init__(self, work: Path, upstream_simple: str, label: str, tree: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        super().__init__(work, VENV, upstream_simple, label=label)
        self.tree = tree
        self.extra_env = extra_env or {}

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = str(self.tree)
        env.update(self.extra_env)
        return env

    def imported_from(self) -> str:
        probe = subprocess.run(
            [str(VENV / "bin" / "python"), "-c", "import nightproxy; print(nightproxy.__file__)"],
            env=self.env(), cwd=self.work, capture_output=True, text=True, check=True, timeout=60)
        return probe.stdout.strip()


WARM_FILE = "blob-50.0-py3-none-any.whl"


def warm_load(load: LoadClient, url: str, seconds: float) -> None:
    """The warm file to 8 clients for ``seconds`` (cached first, outside the window)."""
    load.call({"op": "fetch", "url": url, "clients": 1, "timeout": 300}, 360)
    out = load.call({"op": "rate", "url": url, "headers": {}, "concurrency": 8,
                     "duration": seconds, "max_requests": 100000}, seconds + 120)
    if out.get("errors") or not out.get("requests"):
        raise RuntimeError(f"warm load on {url}: {out}")
    tg.settle()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, type=Path, help="source tree of side A")
    ap.add_argument("--b", required=True, type=Path, help="source tree of side B")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for side B only (e.g. MALLOC_TRIM_THRESHOLD_)")
    ap.add_argument("--warm-load", type=float, default=0.0, metavar="SECONDS",
                    help="send the warm 50 MB file to 8 clients for this long before each "
                         "cold download (as run.py's warm download scenario does)")
    args = ap.parse_args()
    error = setup_venv()
    if error:
        raise SystemExit(f"bench venv: {error}")
    reps = 5
    fx = fixture.build(WORK / "fixture", reps, False, 2)  # herd files unused: --quick's 2 MB
    work = WORK / "ab"
    shutil.rmtree(work, ignore_errors=True)  # caches of an earlier run would be warm
    nginx = tg.Nginx(work / "nginx", fx.root)
    load = LoadClient()
    sides: list[Side] = []
    times: dict[str, list[float]] = {"nginx direct": [], "A": [], "B": []}
    ttfb: dict[str, list[float]] = {name: [] for name in times}
    try:
        nginx.start()
        up = f"{nginx.upstream}/simple/"
        b_env = dict(item.split("=", 1) for item in args.b_env)
        sides = [Side(work, up, "A", args.a.resolve()),
                 Side(work, up, "B", args.b.resolve(), b_env)]
        for side in sides:
            log(f"side {side.label} imports {side.imported_from()}")
        for rnd in range(args.rounds):
            for side in sides:
                side.restart_fresh()
            warm = {"nginx direct": f"{nginx.reference}/files/blob/{WARM_FILE}"}
            if args.warm_load > 0:
                warm.update({side.label: published_url(side, "blob", WARM_FILE) for side in sides})
            for rep in range(reps):
                filename = f"coldblob-{rep}.0-py3-none-any.whl"
                urls = {"nginx direct": f"{nginx.reference}/files/coldblob/{filename}"}
                urls.update(
                    {side.label: published_url(side, "coldblob", filename) for side in sides})
                order = ["nginx direct", "A", "B"] if (rnd + rep) % 2 == 0 else [
                    "nginx direct", "B", "A"]
                for name in order:
                    if args.warm_load > 0:
                        warm_load(load, warm[name], args.warm_load)
                    else:
                        # A side's background work after its download
                        # must not land in the next side's figure.
                        tg.settle(max_wait=3.0)
                    out: dict[str, Any] = load.call(
                        {"op": "fetch", "url": urls[name], "clients": 1, "timeout": 300}, 360)
                    got = out["clients"][0]
                    if got.get("status") != 200 or got.get("sha256") != fx.entry(
                            "coldblob", filename).sha256:
                        raise RuntimeError(f"{name}: {filename}: {got}")
                    times[name].append(got["total_ms"])
                    ttfb[name].append(got["ttfb_ms"])
            log(f"round {rnd + 1}/{args.rounds} done")
    finally:
        for side in sides:
            side.stop()
        tg.stop(nginx.proc)
        tg.stop(load.proc)  # type: ignore[arg-type]
        tg.kill_all()
    direct = statistics.median(times["nginx direct"])
    print(f"| cold 50 MB, {len(times['A'])} downloads each | total ms | / nginx direct "
          "| first byte ms |")
    print("|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {med / direct:.2f}x | {statistics.median(ttfb[name]):.2f} |")
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    print(f"\nB / A, total: {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
