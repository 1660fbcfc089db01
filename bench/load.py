"""Load client for the benchmark, run in its own process (never inside a target).

It reads one JSON command per line on stdin and answers one JSON line on stdout:

``{"op": "rate", "url", "headers", "concurrency", "duration", "max_requests"}``
    closed-loop requests: requests/s, p50/p99 latency, MB/s, errors. Bodies are read and
    discarded without decompression (the client measures the server, not zlib).
``{"op": "fetch", "url", "clients", "headers"}``
    ``clients`` simultaneous GETs of one URL (follows redirects); per client: status, time to
    first body byte, total time, bytes and sha256 of the body.
``{"op": "quit"}``

Every loop is bounded in count and time; targets are on loopback only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from typing import Any

import aiohttp

CHUNK = 1 << 20


def _check_loopback(url: str) -> None:
    host = aiohttp.client.URL(url).host or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise ValueError(f"refusing non-loopback target {url!r}")


def _pct(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i]


async def rate(url: str, headers: dict[str, str], concurrency: int, duration: float,
               max_requests: int) -> dict[str, Any]:
    _check_loopback(url)
    lat: list[float] = []
    errors: list[str] = []
    nbytes = 0
    issued = 0
    deadline = time.perf_counter() + duration
    timeout = aiohttp.ClientTimeout(total=max(30.0, duration * 4))
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False,
                                     timeout=timeout) as session:

        async def worker() -> None:
            nonlocal nbytes, issued
            while issued < max_requests and time.perf_counter() < deadline and not errors:
                issued += 1
                t0 = time.perf_counter()
                try:
                    async with session.get(url, headers=headers) as resp:
                        n = 0
                        while chunk := await resp.content.read(CHUNK):
                            n += len(chunk)
                        if resp.status != 200:
                            errors.append(f"HTTP {resp.status}")
                            continue
                except (aiohttp.ClientError, TimeoutError) as e:
                    errors.append(repr(e)[:200])
                    continue
                lat.append(time.perf_counter() - t0)
                nbytes += n

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    lat.sort()
    p50, p99 = _pct(lat, 0.50), _pct(lat, 0.99)
    return {
        "requests": len(lat),
        "elapsed": elapsed,
        "rps": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": None if p50 is None else p50 * 1e3,
        "p99_ms": None if p99 is None else p99 * 1e3,
        "mbps": nbytes / elapsed / 1e6 if elapsed > 0 else 0.0,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


async def fetch(url: str, clients: int, headers: dict[str, str], timeout_s: float
                ) -> dict[str, Any]:
    _check_loopback(url)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    conn = aiohttp.TCPConnector(limit=clients, force_close=True)
    start = asyncio.Event()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def one() -> dict[str, Any]:
            await start.wait()
            t0 = time.perf_counter()
            h = hashlib.sha256()
            n = 0
            ttfb: float | None = None
            try:
                async with session.get(url, headers=headers) as resp:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        if ttfb is None:
                            ttfb = time.perf_counter() - t0
                        h.update(chunk)
                        n += len(chunk)
                    status = resp.status
                    redirected = len(resp.history) > 0
            except (aiohttp.ClientError, TimeoutError) as e:
                return {"status": 0, "error": repr(e)[:200]}
            total = time.perf_counter() - t0
            return {"status": status, "ttfb_ms": (ttfb or total) * 1e3, "total_ms": total * 1e3,
                    "bytes": n, "sha256": h.hexdigest(), "redirected": redirected}

        tasks = [asyncio.create_task(one()) for _ in range(clients)]
        await asyncio.sleep(0)
        start.set()
        results = await asyncio.gather(*tasks)
    return {"clients": results}


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd.get("op")
        try:
            if op == "quit":
                break
            if op == "rate":
                out = await rate(cmd["url"], cmd.get("headers", {}), int(cmd["concurrency"]),
                                 float(cmd["duration"]), int(cmd.get("max_requests", 10**6)))
            elif op == "fetch":
                out = await fetch(cmd["url"], int(cmd["clients"]), cmd.get("headers", {}),
                                  float(cmd.get("timeout", 120)))
            else:
                out = {"error": f"unknown op {op!r}"}
        except Exception as e:
            out = {"error": repr(e)[:500]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
