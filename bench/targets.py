"""Processes the benchmark starts: its nginx (upstream + static reference) and the proxies.

Every process is started in its own session (process group) and registered in ``PROCS`` so
that ``kill_all`` (called from ``finally`` and ``atexit``) ends the whole tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

PROCS: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = log.open("ab")
    try:
        # a neutral cwd: never import the package from the source tree by accident
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd or log.parent,
                                start_new_session=True)
    finally:
        out.close()
    PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # the group may outlive its leader (workers): always finish it off
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(2)
    if proc in PROCS:
        PROCS.remove(proc)


def kill_all() -> None:
    for p in list(PROCS):
        stop(p, grace=2.0)


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 60.0,
             follow: bool = True) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as e:
        return e.code, e.read() if e.fp else b"", dict(e.headers.items()) if e.headers else {}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float, log: Path) -> float:
    """Poll ``url`` until it answers 2xx; returns seconds waited. Raises with the log tail."""
    t0 = time.perf_counter()
    last = ""
    while time.perf_counter() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {tail(log)}")
        try:
            status, _, _ = http_get(url, timeout=2.0)
            if 200 <= status < 300:
                return time.perf_counter() - t0
            last = f"HTTP {status}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.02)
    raise RuntimeError(f"not ready after {timeout:.0f}s ({last}): {tail(log)}")


def tail(log: Path, n: int = 200) -> str:
    """The last line of ``log`` (where a traceback says what went wrong) and where the log is."""
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        lines = []
    return f"{(lines or ['(empty log)'])[-1][-n:]} (log: {log.name})"


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def settle(max_wait: float = 15.0, window: float = 0.25, quiet: float = 0.15) -> float:
    """Wait until the machine is nearly idle; return the seconds waited.

    A slow target keeps working on the requests a load generator left in flight after its
    window ended (devpi-server answers a 2,000-file page in seconds); whichever target is
    measured next would share the two cores with that backlog. Waiting for quiet keeps one
    target's leftovers out of the next one's figures.
    """
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        b0, t0 = _cpu_jiffies()
        time.sleep(window)
        b1, t1 = _cpu_jiffies()
        if t1 > t0 and (b1 - b0) / (t1 - t0) < quiet:
            break
    return time.monotonic() - start


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


# --------------------------------------------------------------------------- nginx

NGINX_CONF = """\
{user}worker_processes 2;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    types {{
        text/html html;
        application/vnd.pypi.simple.v1+json json;
        application/octet-stream whl;
    }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    open_file_cache max=4000 inactive=60s;
    gzip off;
    gzip_static on;
    client_body_temp_path {work}/tmp_body;
    proxy_temp_path {work}/tmp_proxy;
    fastcgi_temp_path {work}/tmp_fastcgi;
    uwsgi_temp_path {work}/tmp_uwsgi;
    scgi_temp_path {work}/tmp_scgi;
    log_format bench '$remote_addr [$time_local] "$request" $status $body_bytes_sent';
    # PEP 691 content negotiation: JSON when the client lists the v1 JSON type.
    map $http_accept $pep691_ext {{
        default html;
        "~*application/vnd\\.pypi\\.simple\\.v1\\+json" json;
    }}
{servers}
}}
"""

NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        access_log {log} bench{buffer};
        location ~ ^/(m[0-9]+/|many/)?simple/ {{
            add_header Vary "Accept, Accept-Encoding";
            try_files $uri/index.$pep691_ext $uri =404;
        }}
        location / {{ }}
    }}
"""


class Nginx:
    """One nginx: ``upstream_port`` is what the proxies pull from (its access log counts
    upstream GETs), ``reference_port`` is the "nginx direct" target (static copy)."""

    def __init__(self, work: Path, fixture_root: Path) -> None:
        self.work = work
        self.root = fixture_root
        self.upstream_port = free_port()
        self.reference_port = free_port()
        self.upstream_log = work / "upstream-access.log"
        self.reference_log = work / "reference-access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def reference(self) -> str:
        return f"http://127.0.0.1:{self.reference_port}"

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.work.mkdir(parents=True, exist_ok=True)
        for log in (self.upstream_log, self.reference_log):
            log.unlink(missing_ok=True)
        servers = NGINX_SERVER.format(port=self.upstream_port, root=self.root,
                                      log=self.upstream_log, buffer="")
        servers += NGINX_SERVER.format(port=self.reference_port, root=self.root,
                                       log=self.reference_log, buffer=" buffer=256k flush=1s")
        conf = NGINX_CONF.format(user="user root;\n" if os.geteuid() == 0 else "",
                                 work=self.work, servers=servers)
        path = self.work / "nginx.conf"
        path.write_text(conf)
        log = self.work / "nginx.out"
        self.proc = spawn([binary, "-p", str(self.work), "-c", str(path)], log)
        wait_http(f"{self.upstream}/simple/", self.proc, 15, log)
        wait_http(f"{self.reference}/simple/", self.proc, 15, log)

    def upstream_log_size(self) -> int:
        try:
            return self.upstream_log.stat().st_size
        except FileNotFoundError:
            return 0

    def upstream_bytes_since(self, offset: int, needle: str) -> int:
        """Body bytes the upstream sent for requests whose line contains ``needle``."""
        with self.upstream_log.open("rb") as f:
            f.seek(offset)
            data = f.read().decode(errors="replace")
        return sum(int(line.rsplit(" ", 1)[1]) for line in data.splitlines()
                   if needle in line and line.rsplit(" ", 1)[1].isdigit())

    def upstream_gets_since(self, offset: int, needle: str) -> int:
        with self.upstream_log.open("rb") as f:
            f.seek(offset)
            data = f.read().decode(errors="replace")
        return sum(1 for line in data.splitlines() if f"GET {needle}" in line)


# --------------------------------------------------------------------------- targets


class Target:
    """A server that answers the simple API. ``index_url`` ends with '/'."""

    name = "?"
    proxy = True

    def __init__(self, work: Path, venv: Path, upstream_simple: str) -> None:
        self.work = work
        self.venv = venv
        self.upstream_simple = upstream_simple
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_error: str | None = None
        self.generation = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        raise NotImplementedError

    @property
    def log(self) -> Path:
        return self.work / f"{self.name}-{self.generation}.log"

    def cache_dir(self) -> Path:
        return self.work / f"{self.name}-cache-{self.generation}"

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PROXPI_"))}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> None:
        raise NotImplementedError

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def restart_fresh(self) -> None:
        """Stop, then start again with an empty cache (for cold scenarios that need it)."""
        self.stop()
        old = self.cache_dir()
        self.generation += 1
        shutil.rmtree(old, ignore_errors=True)
        # A directory of this generation may be left by an earlier run of the harness in the
        # same work directory (the last generation is never removed): it would be warm.
        shutil.rmtree(self.cache_dir(), ignore_errors=True)
        self.start()


class NginxDirect(Target):
    name = "nginx"
    proxy = False

    def __init__(self, nginx: Nginx) -> None:
        super().__init__(nginx.work, Path(), "")
        self.nginx = nginx
        self.port = nginx.reference_port

    @property
    def index_url(self) -> str:
        return f"{self.base}/simple/"

    def start(self) -> None:
        self.proc = self.nginx.proc

    def stop(self) -> None:  # nginx's life is the harness's
        pass

    def restart_fresh(self) -> None:
        pass


class Proxpi(Target):
    name = "proxpi"

    @property
    def index_url(self) -> str:
        return f"{self.base}/index/"

    def start(self) -> None:
        self.port = free_port()
        env = self.env()
        env.update({
            "PROXPI_INDEX_URL": self.upstream_simple,
            "PROXPI_CACHE_DIR": str(self.cache_dir()),
            "PROXPI_LOGGING_LEVEL": "WARNING",
        })
        # As proxpi's own container image runs it (gunicorn --preload proxpi.server:app), with
        # threads so that concurrent clients are served at all (its cache is per process).
        argv = [self.bin("gunicorn"), "--preload", "--bind", f"127.0.0.1:{self.port}",
                "--workers", "1", "--threads", "32", "--timeout", "120",
                "--logger-class", "proxpi.server._GunicornLogger", "proxpi.server:app"]
        self.proc = spawn(argv, self.log, env=env)
        wait_http(f"{self.base}/health", self.proc, 30, self.log)


class Devpi(Target):
    name = "devpi"

    @property
    def index_url(self) -> str:
        return f"{self.base}/root/up/+simple/"

    def start(self) -> None:
        self.port = free_port()
        serverdir = self.cache_dir()
        env = self.env()
        if not (serverdir / ".nodeinfo").exists():
            subprocess.run([self.bin("devpi-init"), "--serverdir", str(serverdir),
                            "--no-root-pypi"], check=True, env=env, capture_output=True,
                           timeout=120)
        argv = [self.bin("devpi-server"), "--serverdir", str(serverdir), "--host", "127.0.0.1",
                "--port", str(self.port)]
        self.proc = spawn(argv, self.log, env=env)
        wait_http(f"{self.base}/+api", self.proc, 60, self.log)
        status, _, _ = http_get(f"{self.base}/root/up/+api", timeout=10)
        if status != 200:
            self._create_mirror(env)

    def _create_mirror(self, env: dict[str, str]) -> None:
        """root/up = type=mirror of the upstream, through devpi's own client."""
        clientdir = str(self.work / f"devpi-client-{self.generation}")
        devpi = [self.bin("devpi"), "--clientdir", clientdir]
        steps = [
            [*devpi, "use", f"{self.base}/"],
            [*devpi, "login", "root", "--password", ""],
            [*devpi, "index", "-c", "root/up", "type=mirror",
             f"mirror_url={self.upstream_simple}", "volatile=False"],
        ]
        for argv in steps:
            r = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
            if r.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(argv[3:5])}: {r.stdout[-300:]!r} {r.stderr[-300:]!r}")


class Nightproxy(Target):
    name = "nightproxy"

    def __init__(self, work: Path, venv: Path, upstream_simple: str,
                 upstreams: list[tuple[str, str]] | None = None, label: str = "nightproxy",
                 tree: Path | None = None, workers: int = 1) -> None:
        super().__init__(work, venv, upstream_simple)
        self.upstreams = upstreams or [("up1", upstream_simple)]
        self.label = label
        self.cache_override: Path | None = None
        #: Another source tree to run (``PYTHONPATH``; the cwd is neutral, see ``spawn``).
        self.tree = tree
        self.workers = workers

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        return env

    @property
    def log(self) -> Path:
        return self.work / f"{self.label}-{self.generation}.log"

    def cache_dir(self) -> Path:
        return self.cache_override or self.work / f"{self.label}-cache-{self.generation}"

    @property
    def index_url(self) -> str:
        return f"{self.base}/simple/"

    def write_config(self) -> Path:
        # JSON is a subset of YAML: no YAML writer needed in the harness.
        cfg = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "cache": {"dir": str(self.cache_dir()), "max_size": "20GiB", "max_age": "14d"},
            "index": {"ttl": "10m"},
            "retention": {"dev_max_age": "3650d", "keep_latest": 3},
            "upstreams": [{"name": n, "kind": "simple", "url": u} for n, u in self.upstreams],
        }
        path = self.work / f"{self.label}.yaml"
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        return path

    def spawn_only(self) -> None:
        self.port = free_port()
        cfg = self.write_config()
        argv = [self.bin("nightproxy"), "serve", "--config", str(cfg)]
        if self.workers != 1:
            argv += ["--workers", str(self.workers)]
        self.proc = spawn(argv, self.log, env=self.env())

    def start(self) -> None:
        if not Path(self.bin("nightproxy")).exists():
            raise RuntimeError(
                "nightproxy is not installed in the bench venv (pip install -e failed?)")
        self.spawn_only()
        assert self.proc is not None
        wait_http(f"{self.base}/simple/", self.proc, 60, self.log)
