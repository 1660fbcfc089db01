"""A cold download from an upstream that delivers 100 MB/s, through nightproxy and direct.

    python bench/limited.py [--tree .] [--reps 5] [--mb 50] [--rate 100m] [--workers 1]

Loopback makes an upstream far faster than any real feed, so the proxy's own costs (hashing,
the disk write, the hand-over to the client) dominate the loopback "cold 50 MB" figure of
``run.py``. Here nginx serves the upstream with ``limit_rate`` (per connection, as a feed's
bandwidth would be), and each repetition downloads a file nightproxy has never seen through
it, then the same-sized file straight from the limited nginx, in alternating order. The figure
is the ratio of the medians (issue #16's goal: at most 1.1x a direct download).

Standard library and aiohttp only; the nightproxy tree runs as ``python -m nightproxy serve``
with that tree on ``PYTHONPATH``. Everything lives in a temporary directory and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import aiohttp
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))
import targets as tg

NGINX = """\
{user}worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ text/html html; application/octet-stream whl; }}
    sendfile on;
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /simple/ {{ try_files $uri/index.html =404; }}
        location /files/ {{ limit_rate {rate}; }}
    }}
}}
"""


def wheel(path: Path, version: str, size: int) -> str:
    """A valid wheel of ``size`` random bytes (stored, not deflated); its sha256."""
    info = f"limited-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: limited\nVersion: {version}\n"
        )
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr("limited/payload.bin", os.urandom(size))
        z.writestr(f"{info}/RECORD", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path, count: int, size: int) -> dict[str, str]:
    """``count`` cold files for the proxy and one for the direct downloads: name -> sha256."""
    files = root / "files"
    files.mkdir(parents=True)
    shas = {}
    for i in range(count + 1):
        name = f"limited-1.{i}-py3-none-any.whl"
        shas[name] = wheel(files / name, f"1.{i}", size)
    page = root / "simple" / "limited"
    page.mkdir(parents=True)
    links = "".join(
        f'<a href="/files/{name}#sha256={sha}">{name}</a>\n' for name, sha in shas.items()
    )
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    (root / "simple" / "index.html").write_text('<a href="limited/">limited</a>\n')
    return shas


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[float, float, str]:
    """(time to first byte, total) in ms, and the body's sha256."""
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    first = None
    async with session.get(url) as resp:
        assert resp.status == 200, f"{url}: HTTP {resp.status}"
        async for chunk in resp.content.iter_chunked(1 << 20):
            if first is None:
                first = time.perf_counter()
            digest.update(chunk)
    end = time.perf_counter()
    return ((first or end) - t0) * 1e3, (end - t0) * 1e3, digest.hexdigest()


async def measure(
    proxy: str, upstream: str, shas: dict[str, str], reps: int
) -> dict[str, list[float]]:
    names = list(shas)
    direct_name = names[-1]
    out: dict[str, list[float]] = {"proxy_ttfb": [], "proxy_total": [], "direct_total": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async with session.get(f"{proxy}/simple/limited/") as resp:
            page = await resp.text()
        for rep in range(reps):
            name = names[rep]
            href = page.split(f">{name}<")[0].rsplit('href="', 1)[1].split('"')[0]
            url = str(URL(f"{proxy}/simple/limited/").join(URL(href)).with_fragment(None))
            runs = [
                ("proxy", url, name),
                ("direct", f"{upstream}/files/{direct_name}", direct_name),
            ]
            for kind, target, expected in runs if rep % 2 == 0 else runs[::-1]:
                ttfb, total, sha = await fetch(session, target)
                assert sha == shas[expected], f"{kind}: wrong bytes"
                if kind == "proxy":
                    out["proxy_ttfb"].append(ttfb)
                    out["proxy_total"].append(total)
                else:
                    out["direct_total"].append(total)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rate", default="100m", help="nginx limit_rate (bytes/s; m = MB)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nightproxy-limited-"))
    try:
        shas = tree(work / "root", args.reps, args.mb * 1000 * 1000)
        port, proxy_port = tg.free_port(), tg.free_port()
        conf = work / "nginx.conf"
        conf.write_text(
            NGINX.format(
                user="user root;\n" if os.geteuid() == 0 else "",
                work=work,
                port=port,
                root=work / "root",
                rate=args.rate,
            )
        )
        nginx = tg.spawn(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(work), "-c", str(conf)],
            work / "nginx.out",
        )
        upstream = f"http://127.0.0.1:{port}"
        tg.wait_http(f"{upstream}/simple/limited/", nginx, 15, work / "nginx.out")
        config = work / "nightproxy.yaml"
        config.write_text(
            f"server:\n  workers: {args.workers}\ncache:\n  dir: {work / 'cache'}\n"
            f"retention:\n  dev_max_age: off\n"
            f"upstreams:\n  - name: limited\n    kind: simple\n    url: {upstream}/simple/\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(args.tree).resolve())}
        log = work / "nightproxy.log"
        server = tg.spawn(
            [
                sys.executable,
                "-m",
                "nightproxy",
                "serve",
                "--config",
                str(config),
                "--port",
                str(proxy_port),
            ],
            log,
            env=env,
        )
        proxy = f"http://127.0.0.1:{proxy_port}"
        tg.wait_http(f"{proxy}/healthz", server, 30, log)
        out = asyncio.run(measure(proxy, upstream, shas, args.reps))
    finally:
        tg.kill_all()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in out.items()}
    print(
        f"cold {args.mb} MB from an upstream at nginx limit_rate {args.rate}, {args.reps} reps, "
        f"medians (nightproxy {args.workers} worker(s), tree {args.tree}):"
    )
    print(f"  direct from the upstream: {med['direct_total']:.0f} ms")
    print(
        f"  through nightproxy:       {med['proxy_total']:.0f} ms "
        f"(first byte {med['proxy_ttfb']:.1f} ms), "
        f"{med['proxy_total'] / med['direct_total']:.3f}x direct"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
