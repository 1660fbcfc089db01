"""Big pages: a 200,000-link project page and a 1,000,000-project root page.

Measures, for a real ``nightproxy serve`` process in front of a loopback upstream:

- the time of the first request of the page (the upstream fetch, parse, merge, render);
- the latency of ``/healthz`` meanwhile (asked back to back the whole time): the event loop's
  responsiveness while the page is processed;
- the server's peak RSS (``VmHWM``) and its RSS some seconds afterwards.

Each scenario runs in a fresh server process (so that each peak is its own), ``--reps`` times;
the table shows medians. Standard library only; the server is this checkout's code.

    python bench/bigpages.py                 # both scenarios, 3 repetitions
    python bench/bigpages.py --links 50000 --projects 200000 --reps 1   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
TAGS = (
    "cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp311-cp311-macosx_11_0_arm64",
    "cp312-cp312-macosx_11_0_arm64",
    "cp311-cp311-win_amd64",
    "cp312-cp312-win_amd64",
)
#: How long after the request the "RSS after" is read.
SETTLE_SECONDS = 5.0


# -- the upstream (a child process serving generated pages) -----------------------------------


def project_page(links: int) -> bytes:
    """A PEP 503 page of ``links`` nightly wheels of ``big``, with hashes, as feeds write them."""
    out = ["<!DOCTYPE html>\n<html><head><title>Links for big</title></head><body>\n"]
    for n in range(links):
        version = f"1.0.dev{n // len(TAGS)}"
        name = f"big-{version}-{TAGS[n % len(TAGS)]}.whl"
        sha = hashlib.sha256(name.encode()).hexdigest()
        out.append(
            f'<a href="https://files.example.invalid/packages/{sha[:2]}/{sha[2:4]}/{name}'
            f'#sha256={sha}" data-requires-python="&gt;=3.10">{name}</a><br/>\n'
        )
    out.append("</body></html>\n")
    return "".join(out).encode()


def root_page(projects: int) -> bytes:
    """A PEP 691 project list of ``projects`` names, with serials, as the public index has."""
    names = [{"_last-serial": 1000 + n, "name": f"Project_{n:07d}-x"} for n in range(projects)]
    return json.dumps(
        {"meta": {"_last-serial": 99, "api-version": "1.1"}, "projects": names},
        separators=(",", ":"),
    ).encode()


def serve_upstream(port: int, links: int, projects: int) -> None:
    pages = {"/simple/big/": (project_page(links), "text/html")}
    pages["/simple/"] = (root_page(projects), "application/vnd.pypi.simple.v1+json")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            found = pages.get(self.path)
            if found is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, content_type = found
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


# -- measuring ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (less sensitive than wall time to a
    machine shared with other work)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(port: int, path: str, headers: dict[str, str], timeout: float = 600) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, len(response.read())
    finally:
        conn.close()


def wait_for(port: int, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited at start-up")
        try:
            if get(port, "/healthz", {}, timeout=2)[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


class HealthProbe:
    """``/healthz`` asked back to back on one kept-alive connection; the slowest answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        while not self._stop.is_set():
            started = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.005)
        conn.close()

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_server(upstream: str, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "cache": {"dir": str(work / "cache"), "max_size": "1GiB"},
        "index": {"ttl": "10m"},
        "retention": {"dev_max_age": "off"},
        "upstreams": [{"name": "up", "kind": "simple", "url": upstream, "timeout": "300s"}],
    }
    path = work / "nightproxy.yaml"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = (work / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightproxy", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    wait_for(port, proc)
    return proc, port


def measure(upstream: str, path: str, requests: list[dict[str, str]]) -> dict[str, float]:
    """One fresh server: each request of ``path`` in turn, /healthz asked all along."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = run_server(upstream, Path(tmp))
        try:
            before = status_kib(proc.pid, "VmRSS")
            with HealthProbe(port) as probe:
                time.sleep(0.2)
                cpu_before = cpu_seconds(proc.pid)
                started = time.perf_counter()
                sizes = []
                for headers in requests:
                    status, size = get(port, path, headers)
                    if status != 200:
                        raise RuntimeError(f"{path}: HTTP {status}")
                    sizes.append(size)
                seconds = time.perf_counter() - started
                cpu = cpu_seconds(proc.pid) - cpu_before
            peak = status_kib(proc.pid, "VmHWM")
            time.sleep(SETTLE_SECONDS)
            after = status_kib(proc.pid, "VmRSS")
            warm_started = time.perf_counter()
            get(port, path, requests[0])
            warm = time.perf_counter() - warm_started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "warm_ms": warm * 1000,
        "healthz_max_ms": max(probe.latencies) * 1000,
        "healthz_answers": len(probe.latencies),
        "rss_before_mib": before / 1024,
        "peak_mib": peak / 1024,
        "rss_after_mib": after / 1024,
        "body_mib": sizes[0] / 2**20,
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--links", type=int, default=200_000)
    parser.add_argument("--projects", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.links, args.projects)
        return
    port = free_port()
    upstream_proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-upstream",
            str(port),
            "--links",
            str(args.links),
            "--projects",
            str(args.projects),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert upstream_proc.stdout is not None
        upstream_proc.stdout.readline()  # "ready", once the pages are generated
        upstream = f"http://127.0.0.1:{port}/simple/"
        scenarios: list[tuple[str, str, list[dict[str, str]]]] = [
            (f"{args.links:,}-link page, JSON (pip)", "/simple/big/", [{"Accept": PIP_ACCEPT}]),
            (
                f"{args.links:,}-link page, JSON then HTML then JSON+gzip",
                "/simple/big/",
                [
                    {"Accept": PIP_ACCEPT},
                    {"Accept": "text/html"},
                    {"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip"},
                ],
            ),
            (f"root page of {args.projects:,} projects, HTML", "/simple/", [{"Accept": "*/*"}]),
        ]
        rows = []
        for label, path, requests in scenarios:
            runs = []
            for _ in range(args.reps):
                runs.append(measure(upstream, path, requests))
                print(f"  {label}: {runs[-1]}", file=sys.stderr, flush=True)
            rows.append((label, median_of(runs)))
    finally:
        upstream_proc.terminate()
        upstream_proc.wait(30)
    print(f"\nmedians of {args.reps} runs, each in a fresh server process\n")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores\n")
    print(
        "| scenario | first answer (s) | server CPU (s) | warm answer (ms) "
        "| /healthz slowest meanwhile (ms) | /healthz answers meanwhile | RSS before (MiB) "
        f"| peak RSS (MiB) | RSS {SETTLE_SECONDS:.0f} s after (MiB) | body (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, m in rows:
        print(
            f"| {label} | {m['seconds']:.2f} | {m['cpu_seconds']:.1f} | {m['warm_ms']:.0f} "
            f"| {m['healthz_max_ms']:.0f} "
            f"| {m['healthz_answers']:.0f} | {m['rss_before_mib']:.0f} | {m['peak_mib']:.0f} "
            f"| {m['rss_after_mib']:.0f} | {m['body_mib']:.1f} |"
        )


if __name__ == "__main__":
    main()
