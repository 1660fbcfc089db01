"""Load and fault figures for one or more nightproxy source trees, on loopback.

    python bench/stress.py --tree . [--tree /tmp/before] [--clients 1000] [--slow 1100]

For each tree, in turn, with the server started under a soft limit of 1,024 open files (the
common default that issue #17 was reproduced with):

1. **flood**: ``--clients`` connections fetch 4 cached 256 KiB wheels round-robin for
   ``--seconds``; answers by status, latency p50/p99, the server's peak open descriptors and
   peak RSS;
2. **after the flood, feed down**: the upstream is stopped and each of the 4 files is fetched
   once: a cache that forgot an entry answers 502 here;
3. **slowloris**: ``--slow`` connections each send a request line and then one header byte a
   second, while a normal client times 20 page requests; the log's growth meanwhile.

Every phase is bounded in count and time and stops by itself. The load runs in this process
(asyncio, aiohttp), the server in its own; the figures are for comparing trees in one run on
the same machine, not absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp

FILES = 4
FILE_SIZE = 256 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wheel(name: str, version: str, pad: int) -> bytes:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        info = f"{name}-{version}.dist-info"
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{name}/pad.bin", os.urandom(pad))
        z.writestr(f"{info}/RECORD", "")
    return buf.getvalue()


def make_upstream(root: Path) -> list[str]:
    """A static PEP 503 tree: project ``stress`` with FILES wheels; returns their filenames."""
    names = []
    links = []
    (root / "files").mkdir(parents=True)
    for i in range(FILES):
        fn = f"stress-1.0.dev{i}-py3-none-any.whl"
        data = wheel("stress", f"1.0.dev{i}", FILE_SIZE)
        (root / "files" / fn).write_bytes(data)
        links.append(
            f'<a href="../../files/{fn}#sha256={hashlib.sha256(data).hexdigest()}">{fn}</a>'
        )
        names.append(fn)
    page = root / "simple" / "stress"
    page.mkdir(parents=True)
    (page / "index.html").write_text(
        "<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>"
    )
    (root / "simple" / "index.html").write_text('<a href="stress/">stress</a>')
    return names


def rss_and_fds(pid: int) -> tuple[int, int]:
    rss = fds = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.append(int(child))
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            fds += len(os.listdir(f"/proc/{p}/fd"))
    return rss, fds


class Server:
    def __init__(self, tree: Path, work: Path, upstream: str) -> None:
        self.tree, self.work, self.upstream = tree, work, upstream
        self.port = free_port()
        self.log = work / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cfg = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "cache": {"dir": str(self.work / "cache")},
            "index": {"ttl": "10m"},
            "upstreams": [{"name": "up", "kind": "simple", "url": self.upstream}],
        }
        path = self.work / "nightproxy.yaml"
        path.write_text(json.dumps(cfg))
        env = dict(os.environ, PYTHONPATH=str(self.tree), PYTHONUNBUFFERED="1")

        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                'ulimit -Sn 1024 && exec "$0" -m nightproxy serve --config "$1"',
                sys.executable,
                str(path),
            ],
            cwd=self.work,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_up(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not up in {seconds}s")


async def file_urls(base: str) -> list[str]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{base}/simple/stress/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        ) as r,
    ):
        page = await r.json(content_type=None)
    return [
        aiohttp.client.URL(f"{base}/simple/stress/").join(aiohttp.client.URL(f["url"])).human_repr()
        for f in page["files"]
    ]


async def flood(server: Server, urls: list[str], clients: int, seconds: float) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    lat: list[float] = []
    peak_rss = peak_fds = 0
    deadline = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)

    async def sample() -> None:
        nonlocal peak_rss, peak_fds
        assert server.proc
        while time.monotonic() < deadline + 1:
            rss, fds = rss_and_fds(server.proc.pid)
            peak_rss, peak_fds = max(peak_rss, rss), max(peak_fds, fds)
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:

        async def client(i: int) -> None:
            n = i
            while time.monotonic() < deadline:
                url = urls[n % len(urls)]
                n += 1
                t0 = time.perf_counter()
                try:
                    async with s.get(url) as r:
                        await r.read()
                        key = str(r.status)
                        if r.status == 200:
                            lat.append(time.perf_counter() - t0)
                        else:
                            key += f" {r.headers.get('X-Nightproxy-Cache', '')}".rstrip()
                        statuses[key] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    statuses[type(e).__name__] += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(sample(), *(client(i) for i in range(clients)))
    lat.sort()
    pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3, 1)) if lat else None
    return {
        "answers": dict(statuses),
        "p50_ms": pct and pct(0.5),
        "p99_ms": pct and pct(0.99),
        "peak_fds": peak_fds,
        "peak_rss_mib": round(peak_rss / 2**20, 1),
    }


async def after_feed_down(urls: list[str]) -> dict[str, int]:
    out: Counter[str] = Counter()
    async with aiohttp.ClientSession() as s:
        for url in urls:
            async with s.get(url) as r:
                await r.read()
                out[str(r.status)] += 1
    return dict(out)


async def slowloris(server: Server, slow: int, seconds: float) -> dict[str, Any]:
    writers: list[asyncio.StreamWriter] = []
    log_before = server.log.stat().st_size
    for _ in range(slow):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", server.port)
        except OSError:
            break
        w.write(b"GET /simple/ HTTP/1.1\r\nHost: x\r\n")
        writers.append(w)
    stop = time.monotonic() + seconds

    async def drip() -> None:
        while time.monotonic() < stop:
            for w in writers:
                with contextlib.suppress(Exception):
                    w.write(b"X")
            await asyncio.sleep(1)

    lat: list[float] = []
    failures = 0

    async def probe() -> None:
        nonlocal failures
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            for _ in range(20):
                t0 = time.perf_counter()
                try:
                    async with s.get(f"{server.base}/simple/stress/") as r:
                        await r.read()
                        if r.status != 200:
                            failures += 1
                        else:
                            lat.append(time.perf_counter() - t0)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    failures += 1
                await asyncio.sleep(max(0.0, seconds / 20 - (time.perf_counter() - t0)))

    await asyncio.gather(drip(), probe())
    for w in writers:
        w.close()
    return {
        "connections": len(writers),
        "probe_ok": len(lat),
        "probe_failed": failures,
        "probe_p50_ms": round(statistics.median(lat) * 1e3, 1) if lat else None,
        "probe_max_ms": round(max(lat) * 1e3, 1) if lat else None,
        "log_growth_kib": round((server.log.stat().st_size - log_before) / 1024, 1),
    }


async def run_tree(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="np-stress-"))
    up_root = work / "upstream"
    make_upstream(up_root)
    up_port = free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(up_port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(up_root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(tree, work, f"http://127.0.0.1:{up_port}/simple/")
    try:
        await wait_up(f"http://127.0.0.1:{up_port}/simple/")
        server.start()
        await wait_up(f"{server.base}/healthz")
        urls = await file_urls(server.base)
        await after_feed_down(urls)  # warms the cache
        result: dict[str, Any] = {"tree": str(tree)}
        result["flood"] = await flood(server, urls, args.clients, args.seconds)
        upstream.terminate()
        upstream.wait()
        await asyncio.sleep(1)
        result["after_flood_feed_down"] = await after_feed_down(urls)
        result["slowloris"] = await slowloris(server, args.slow, args.seconds)
        return result
    finally:
        server.stop()
        if upstream.poll() is None:
            upstream.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=1100)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the load side needs many sockets
    for tree in args.tree:
        print(json.dumps(asyncio.run(run_tree(tree.resolve(), args)), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
