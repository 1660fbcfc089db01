"""What aiohttp itself reaches on this machine: the ceiling under nightproxy's page figures.

Fetches the warm pages of the benchmark's scenarios from a running server (normally the
nightproxy that ``run.py`` started), serves exactly those bytes and headers from a bare aiohttp
handler (no routing work, no logging, no metrics), and measures it with the same wrk command as
``run.py``, next to the reference server when one is given:

    python bench/ceiling.py --source http://127.0.0.1:PORT --reference http://127.0.0.1:PORT2 \\
        [--processes 2] [--reps 5]

It also serves those same bytes from nginx (a static tree with the same PEP 691 negotiation as
``run.py``'s reference, ``gzip_static`` for the gzip representation): the machine's limit for
*these* pages, which tells a gap that is the page's size from one that is nightproxy's work.

And it serves them from a bare asyncio protocol (no HTTP framework at all: find the end of the
request, pick the representation, one write of prepared bytes): the floor of what any Python
server pays per request here.

``--processes 2`` runs two such servers of each kind on one port (SO_REUSEPORT), as many as the
machine has cores. A figure nightproxy cannot beat is a property of the framework and the
machine, not something left undone in nightproxy; this script is how that claim is checked.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from run import run_wrk
from targets import Nginx, free_port, stop

ACCEPT_JSON = "application/vnd.pypi.simple.v1+json"
#: (label, path, request headers), as run.py's page scenarios ask.
CASES = [
    ("2,000-file page HTML", "/simple/bigproj/", {"Accept": "text/html"}),
    ("2,000-file page JSON", "/simple/bigproj/", {"Accept": ACCEPT_JSON}),
    (
        "2,000-file page JSON+gzip",
        "/simple/bigproj/",
        {"Accept": ACCEPT_JSON, "Accept-Encoding": "gzip, deflate, br"},
    ),
    ("one-file page HTML", "/simple/onefile/", {"Accept": "text/html"}),
]
KEPT_HEADERS = ("Content-Type", "Content-Encoding", "ETag", "Vary", "Cache-Control")


def fetch(url: str, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """The raw (still encoded) body and the representation headers of one GET."""
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
        kept = {k: resp.headers[k] for k in KEPT_HEADERS if resp.headers.get(k)}
    if kept.get("Content-Encoding") == "gzip":
        gzip.decompress(body)  # it really is what it says
    return body, kept


Pages = dict[str, tuple[bytes, dict[str, str]]]


def variant(path: str, accept: str, accept_encoding: str) -> str:
    """The key of one representation of one page."""
    if ACCEPT_JSON not in accept:
        return f"{path}|html"
    return f"{path}|json-gz" if "gzip" in accept_encoding else f"{path}|json"


def static_tree(root: Path, pages: Pages) -> None:
    """The pages as files where nginx's negotiation finds them (``index.html``, ``index.json``,
    ``index.json.gz`` in each page's directory)."""
    names = {"html": "index.html", "json": "index.json", "json-gz": "index.json.gz"}
    for key, (body, _headers) in pages.items():
        path, kind = key.split("|")
        folder = root / path.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / names[kind]).write_bytes(body)
        if kind == "json-gz" and not (folder / "index.json").exists():
            (folder / "index.json").write_bytes(gzip.decompress(body))
    (root / "simple" / "index.html").write_text("<!DOCTYPE html><html><body></body></html>\n")


def serve(port: int, pages: Pages) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        h = request.headers
        key = variant(request.path, h.get("Accept", ""), h.get("Accept-Encoding", ""))
        body, headers = pages[key]
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)


def serve_raw(port: int, pages: Pages) -> None:
    import asyncio
    import os

    # Status line and headers prepared once per representation.
    prepared = {}
    for key, (body, headers) in pages.items():
        lines = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in headers.items())]
        lines.append(f"Content-Length: {len(body)}")
        prepared[key] = (("\r\n".join(lines) + "\r\n\r\n").encode(), body)

    class Raw(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.fd = transport.get_extra_info("socket").fileno()
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
                target = head.split(" ", 2)[1]
                fields = {}
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
                key = variant(target, fields.get("accept", ""), fields.get("accept-encoding", ""))
                self.reply(*prepared[key])

        def reply(self, head: bytes, body: bytes) -> None:
            sent = 0
            if self.transport.get_write_buffer_size() == 0:
                try:
                    sent = os.writev(self.fd, (head, body))
                except BlockingIOError:
                    sent = 0
            if sent < len(head):
                self.transport.write(head[sent:] + body)
            elif sent < len(head) + len(body):
                self.transport.write(memoryview(body)[sent - len(head) :])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Raw, "127.0.0.1", port, reuse_port=True, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="server whose page bytes are served")
    ap.add_argument("--reference", help="server measured alongside (nginx's reference port)")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()

    pages: Pages = {}
    for _label, path, headers in CASES:
        key = variant(path, headers["Accept"], headers.get("Accept-Encoding", ""))
        pages[key] = fetch(args.source.rstrip("/") + path, headers)

    ctx = multiprocessing.get_context("spawn")
    procs = []
    servers = {}
    for name, target in (("bare aiohttp", serve), ("bare asyncio", serve_raw)):
        port = free_port()
        for _ in range(args.processes):
            procs.append(ctx.Process(target=target, args=(port, pages), daemon=True))
            procs[-1].start()
        servers[name] = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                fetch(servers[name] + "/simple/onefile/", {"Accept": "text/html"})
                break
            except OSError:
                time.sleep(0.1)
    scratch = tempfile.TemporaryDirectory(prefix="nightproxy-ceiling-")
    same = Nginx(Path(scratch.name) / "nginx", Path(scratch.name) / "tree")
    try:
        static_tree(Path(scratch.name) / "tree", pages)
        same.start()
        servers["nginx, same bytes"] = same.reference
        servers["source"] = args.source.rstrip("/")
        if args.reference:
            servers["reference"] = args.reference.rstrip("/")
        rows = []
        for label, path, headers in CASES:
            got: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.reps):
                for name, base in servers.items():  # interleaved, like run.py
                    got[name].append(run_wrk(base + path, headers, 32, args.seconds)["rps"])
            rows.append((label, {name: statistics.median(v) for name, v in got.items()}))
    finally:
        for proc in procs:
            proc.terminate()
        stop(same.proc)
        scratch.cleanup()
    names = list(servers)
    print(f"processes for the bare server: {args.processes}; wrk -t2 -c32, median of {args.reps}")
    ratios = [
        (n, "reference") for n in ("bare aiohttp", "bare asyncio", "nginx, same bytes", "source")
    ]
    ratios += [("source", "nginx, same bytes"), ("source", "bare asyncio")]
    print(
        "| scenario (c=32, req/s) | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{a} / {b}" for a, b in ratios)
        + " |"
    )
    print("|---|" + "---|" * (len(names) + len(ratios)))
    for label, med in rows:
        cells = " | ".join(f"{med[n]:,.0f}" for n in names)
        shares = " | ".join(
            f"{med[a] / med[b]:.2f}x" if a in med and b in med else "—" for a, b in ratios
        )
        print(f"| {label} | {cells} | {shares} |")
    sizes = ", ".join(f"{key}: {len(body):,} B" for key, (body, _h) in pages.items())
    print(f"\npage sizes served: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
