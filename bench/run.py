"""nightproxy benchmark: nightproxy against proxpi, devpi-server and nginx, in one run.

    python bench/run.py [--quick] [--targets nightproxy,proxpi,devpi,nginx] [--big] [--reps N]

See bench/README.md. Standard library only: the harness's own tools (proxpi, devpi, the
load client's aiohttp, uv, nightproxy itself) live in bench/.work/venv, never in the project.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
VENV = WORK / "venv"
sys.path.insert(0, str(BENCH))

import fixture  # noqa: E402
import targets as tg  # noqa: E402

ALL_TARGETS = ("nightproxy", "proxpi", "devpi", "nginx")
#: Warm installs per repetition (one with --quick); the repetition's figure is their median.
WARM_INSTALLS = 3
#: Targets whose failures make --quick exit non-zero. Peers may fail: their cells say why.
REQUIRED_TARGETS = frozenset({"nightproxy", "nginx"})
VENV_PACKAGES = ["proxpi", "gunicorn", "devpi-server", "devpi-client", "aiohttp", "uv", "pip"]
ACCEPT_HTML = "text/html"
ACCEPT_JSON = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
               "text/html;q=0.01")
HEADERS = {
    "html": {"Accept": ACCEPT_HTML},
    "json": {"Accept": ACCEPT_JSON},
    "jsongz": {"Accept": ACCEPT_JSON, "Accept-Encoding": "gzip, deflate, br"},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV"))}


def setup_venv() -> str | None:
    """Create bench/.work/venv with the peers, the load client and nightproxy (editable).

    With uv beside this interpreter or on PATH the venv is made and filled by uv (about 3 s
    here, against 22 s for venv and pip), which keeps ``--quick`` on a clean clone inside its
    2 minutes; otherwise by ``venv`` and pip. Returns why nightproxy could not be installed,
    or None."""
    py = VENV / "bin" / "python"
    stamp = VENV / ".bench-stamp"
    want = " ".join(VENV_PACKAGES)
    # Beside the interpreter first: pip puts the test extra's uv there, off PATH in a venv
    # that is not activated (the same rule as tests/support.py's tool()).
    beside = Path(sys.executable).parent / "uv"
    uv = str(beside) if beside.is_file() else shutil.which("uv")

    def install(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = ([uv, "pip", "install", "-q", "--python", str(py), *args] if uv
               else [str(py), "-m", "pip", "install", "-q", *args])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)

    if not py.exists():
        log(f"creating bench venv ({'uv' if uv else 'venv and pip'})")
        create = ([uv, "venv", "-q", "--python", sys.executable, str(VENV)] if uv
                  else [sys.executable, "-m", "venv", str(VENV)])
        subprocess.run(create, check=True, timeout=300)
    if not stamp.exists() or stamp.read_text() != want:
        log("installing peers and load tools into bench venv")
        r = install(*VENV_PACKAGES)
        if r.returncode != 0:
            raise RuntimeError(f"installing {want} failed: {r.stderr.strip()[-400:]}")
        stamp.write_text(want)
    proj_stamp = VENV / ".nightproxy-stamp"
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if proj_stamp.exists() and proj_stamp.read_text() == key:
        return None
    log("installing <repo> (editable) into bench venv")
    r = install("-e", str(REPO))
    if r.returncode != 0:
        return "install -e failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]
    proj_stamp.write_text(key)
    return None


def ensure_debian(binary: str, packages: list[str]) -> bool:
    if shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists():
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for pkg in packages:
        log(f"apt-get install {pkg}")
        r = subprocess.run(["apt-get", "install", "-y", "-q", pkg], env=env, capture_output=True,
                           timeout=600, check=False)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600,
                           check=False)
            r = subprocess.run(["apt-get", "install", "-y", "-q", pkg], env=env,
                               capture_output=True, timeout=600, check=False)
        if r.returncode == 0:
            return True
    return bool(shutil.which(binary))


# --------------------------------------------------------------------------- load tools


class LoadClient:
    """bench/load.py in its own process, driven over stdin/stdout JSON lines."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [str(VENV / "bin" / "python"), str(BENCH / "load.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, start_new_session=True)
        tg.PROCS.append(self.proc)  # type: ignore[arg-type]

    def call(self, cmd: dict[str, Any], timeout: float,
             while_waiting: Callable[[], None] | None = None) -> dict[str, Any]:
        assert self.proc.stdin
        assert self.proc.stdout
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.01)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError("load client exited")
                out: dict[str, Any] = json.loads(line)
                if "error" in out:
                    raise RuntimeError(out["error"])
                return out
            if while_waiting:
                while_waiting()
        # a stuck client is replaced so later scenarios still run
        tg.stop(self.proc)  # type: ignore[arg-type]
        self.__init__()  # type: ignore[misc]
        raise TimeoutError(f"load client: no answer in {timeout:.0f}s")


def _ms(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    if not m:
        raise ValueError(s)
    v = float(m.group(1))
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def _bytes(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)B", s.strip())
    if not m:
        raise ValueError(s)
    return float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def run_wrk(url: str, headers: dict[str, str], conc: int, duration: float) -> dict[str, Any]:
    threads = max(1, min(2, conc))
    # wrk takes whole seconds only
    argv = ["wrk", "-t", str(threads), "-c", str(conc), "-d", f"{max(1, round(duration))}s",
            "--latency",
            "--timeout", "30s"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    out = r.stdout
    if r.returncode != 0:
        raise RuntimeError(f"wrk exited {r.returncode}: {r.stderr.strip()[:200]}")
    res: dict[str, Any] = {}
    m = re.search(r"(\d+) requests in ([\d.]+\w+), ([\d.]+\w+) read", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output: {out[:200]!r}")
    res["requests"] = int(m.group(1))
    elapsed = _ms(m.group(2)) / 1e3
    res["mbps"] = _bytes(m.group(3)) / elapsed / 1e6
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    for q, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        res[key] = _ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        nums = [int(x) for x in re.findall(r"\d+", m.group(1))]
        # the last field is timeouts; read/write errors at the end of a run are harmless.
        res["timeouts"] = nums[-1] if nums else 0
    return res


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_better: bool
    nightproxy_only: bool = False


class Results:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self.order: list[str] = []
        self.values: dict[tuple[str, str], list[float]] = {}
        #: The repetition each value was measured in, to pair targets' values of one repetition.
        self.value_reps: dict[tuple[str, str], list[int]] = {}
        self.rep = 0
        self.failures: dict[tuple[str, str], str] = {}
        self.notes: dict[tuple[str, str], str] = {}
        self.check_failures: list[str] = []

    def metric(self, m: Metric) -> None:
        if m.key not in self.metrics:
            self.metrics[m.key] = m
            self.order.append(m.key)

    def add(self, key: str, target: str, value: float | None) -> None:
        if value is None:
            self.fail(key, target, "no value")
            return
        self.values.setdefault((key, target), []).append(float(value))
        self.value_reps.setdefault((key, target), []).append(self.rep)

    def fail(self, key: str, target: str, reason: str) -> None:
        self.failures.setdefault((key, target), reason.replace("|", "/").replace("\n", " ")[:160])

    def check_failed(self, what: str) -> None:
        log(f"CHECK FAILED: {what}")
        self.check_failures.append(what)

    def median(self, key: str, target: str) -> float | None:
        v = self.values.get((key, target))
        return statistics.median(v) if v else None

    def paired_ratios(self, key: str, a: str, b: str) -> list[float]:
        """``a / b`` within each repetition both were measured in (their windows minutes
        apart at most), so that drift of the machine between repetitions cancels out."""
        def by_rep(target: str) -> dict[int, float]:
            return dict(zip(self.value_reps.get((key, target), []),
                            self.values.get((key, target), []), strict=True))
        av, bv = by_rep(a), by_rep(b)
        return [av[r] / bv[r] for r in sorted(av.keys() & bv.keys()) if bv[r] > 0]


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"  # a uv install in seconds: 0.081, not 0.08


def render_table(res: Results, names: list[str], reps: int) -> str:
    peers = [n for n in names if n not in ("nightproxy", "nginx")]
    head = ["scenario", *names]
    if "nginx" in names and "nightproxy" in names:
        head.append("nightproxy / nginx")
    if peers and "nightproxy" in names:
        head.append("nightproxy / best peer")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in res.order:
        m = res.metrics[key]
        row = [f"{m.label} ({m.unit}, {'higher' if m.higher_better else 'lower'} is better)"]
        ref = res.median(key, "nginx")
        for n in names:
            v = res.median(key, n)
            if v is not None:
                cell = fmt(v)
                nvals = len(res.values[(key, n)])
                if nvals < reps:
                    cell += f" (n={nvals})"
                if ref and n != "nginx" and ref > 0:
                    cell += f" ({v / ref:.2f}x nginx)"
                if (key, n) in res.notes:
                    cell += f" {res.notes[(key, n)]}"
            elif (key, n) in res.failures:
                cell = f"failed: {res.failures[(key, n)]}"
            elif m.nightproxy_only and n != "nightproxy":
                cell = "—"
            else:
                cell = "—"
            row.append(cell)
        npv = res.median(key, "nightproxy")
        if "nightproxy / nginx" in head:
            cell = f"{npv / ref:.2f}x" if npv is not None and ref else "—"
            paired = res.paired_ratios(key, "nightproxy", "nginx")
            if len(paired) >= 2:
                cell += f" ({min(paired):.2f}-{max(paired):.2f})"
            row.append(cell)
        if "nightproxy / best peer" in head:
            pv = [x for x in (res.median(key, p) for p in peers) if x is not None]
            best = (max(pv) if m.higher_better else min(pv)) if pv else None
            row.append(f"{npv / best:.2f}x" if npv is not None and best else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- scenarios

HREF = re.compile(r'href="([^"]+)"')


def published_url(t: tg.Target, project: str, filename: str) -> str:
    """The URL ``t``'s project page links for ``filename``, without its fragment."""
    page = t.index_url + project + "/"
    status, body, _ = tg.http_get(page, {"Accept": ACCEPT_HTML}, timeout=120)
    if status != 200:
        raise RuntimeError(f"page {project}: HTTP {status}")
    for raw in HREF.findall(body.decode(errors="replace")):
        href = raw.replace("&amp;", "&")
        if urllib.parse.urlsplit(href).path.rsplit("/", 1)[-1] == filename:
            return urllib.parse.urljoin(page, href.split("#", 1)[0])
    raise RuntimeError(f"{filename} not on {t.name}'s page")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.reps: int = args.reps
        self.res = Results()
        self.wrk = shutil.which("wrk") is not None
        self.load: LoadClient | None = None
        self.nginx: tg.Nginx | None = None
        self.targets: list[tg.Target] = []
        self.fx: fixture.Fixture | None = None
        # --quick: 2 MB, since devpi-server fetches the file once per client (its herd of 5 MB
        # took 2.4 s of each repetition's 7).
        self.herd_mb = 2 if self.quick else 50
        # durations (seconds) of one measurement window
        self.page_dur = 0.25 if self.quick else 2.0
        self.dl_dur = 0.4 if self.quick else 3.0
        self.url_cache: dict[tuple[str, str, str], str] = {}
        self.page_counts: dict[str, int] = {}

    # ---- helpers
    def generator(self) -> str:
        rates = "wrk" if self.wrk and not self.quick else "bench/load.py (aiohttp)"
        return (f"{rates} for request rates and warm downloads, bench/load.py (aiohttp, separate "
                "process) for cold downloads and herds"
                + (" (--quick: sub-second windows, which wrk cannot do)" if self.quick else ""))

    def file_url(self, t: tg.Target, project: str, filename: str) -> str:
        """The URL ``t`` publishes for ``filename`` (found on its project page)."""
        key = (t.name, project, filename)
        if key not in self.url_cache:
            self.url_cache[key] = published_url(t, project, filename)
        return self.url_cache[key]

    def rate(self, url: str, headers: dict[str, str], conc: int, dur: float) -> dict[str, Any]:
        if self.wrk and not self.quick:
            out = run_wrk(url, headers, conc, dur)
            if out["requests"] < 3:  # a slow target: give it a longer window once
                out = run_wrk(url, headers, conc, dur * 5)
        else:
            assert self.load
            cmd = {"op": "rate", "url": url, "headers": headers, "concurrency": conc,
                   "duration": dur, "max_requests": 200000}
            out = self.load.call(cmd, timeout=dur + 120)
        if out.get("errors"):
            raise RuntimeError(f"{out['errors']} non-200 responses")
        if not out["requests"]:
            raise RuntimeError("no request completed")
        return out

    def fetch(self, url: str, clients: int, rss_pid: int | None = None
              ) -> tuple[list[dict[str, Any]], int]:
        assert self.load
        peak = [0]

        def sample() -> None:
            if rss_pid is not None:
                peak[0] = max(peak[0], tg.tree_rss_bytes(rss_pid))

        out = self.load.call({"op": "fetch", "url": url, "clients": clients, "timeout": 300},
                             timeout=360, while_waiting=sample if rss_pid else None)
        return out["clients"], peak[0]

    def measure(self, key: str, t: tg.Target, fn: Callable[[], None]) -> None:
        if not self.quick:
            waited = tg.settle()
            if waited > 2:
                log(f"  waited {waited:.1f}s for the machine to go quiet before {t.name} {key}")
        try:
            fn()
        except Exception as e:
            log(f"  {t.name} {key}: {type(e).__name__}: {e}")
            self.res.fail(key, t.name, f"{type(e).__name__}: {e}")

    # ---- setup
    def setup(self) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        np_error = setup_venv()
        if not ensure_debian("nginx", ["nginx-light", "nginx"]):
            raise SystemExit("nginx is not available and could not be installed")
        if not self.wrk and ensure_debian("wrk", ["wrk"]):
            self.wrk = shutil.which("wrk") is not None
        log(f"load generator: {self.generator()}")
        t0 = time.perf_counter()
        self.fx = fixture.build(WORK / "fixture", self.reps, self.args.big, self.herd_mb)
        log(f"fixture ready in {time.perf_counter() - t0:.1f}s")
        run_dir = WORK / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        self.nginx = tg.Nginx(run_dir / "nginx", self.fx.root)
        self.nginx.start()
        self.load = LoadClient()
        up = f"{self.nginx.upstream}/simple/"
        for name in self.args.targets:
            t: tg.Target
            if name == "nginx":
                t = tg.NginxDirect(self.nginx)
            elif name == "proxpi":
                t = tg.Proxpi(run_dir, VENV, up)
            elif name == "devpi":
                t = tg.Devpi(run_dir, VENV, up)
            elif name in self.args.variants:
                tree, workers = self.args.variants[name]
                t = tg.Nightproxy(run_dir, VENV, up, label=name, tree=tree, workers=workers)
                t.name = name
            else:
                t = tg.Nightproxy(run_dir, VENV, up, workers=self.args.workers)
            self.targets.append(t)
            t0 = time.perf_counter()
            try:
                if name == "nightproxy" and np_error:
                    raise RuntimeError(np_error)
                t.start()
                log(f"started {name} at {t.index_url} in {time.perf_counter() - t0:.1f}s")
            except Exception as e:
                t.start_error = f"{type(e).__name__}: {e}"[:300]
                log(f"{name} failed to start: {t.start_error}")
                t.stop()

    # ---- scenario definitions
    def page_cases(self) -> list[tuple[str, int]]:
        """(format, concurrency) of the warm 2,000-file page runs. --quick keeps the uv case at
        c=32 (a slow peer needs seconds per c=32 window) and HTML/JSON at c=1."""
        if self.quick:
            return [("html", 1), ("json", 1), ("jsongz", 32)]
        return [(f, c) for f in HEADERS for c in (1, 32)]

    def define_metrics(self) -> None:
        m = self.res.metric
        for fmt_, c in self.page_cases():
            lbl = {"html": "HTML", "json": "JSON", "jsongz": "JSON+gzip"}[fmt_]
            m(Metric(f"page_{fmt_}_c{c}_rps", f"2,000-file page {lbl} c={c}", "req/s", True))
            m(Metric(f"page_{fmt_}_c{c}_p50", f"2,000-file page {lbl} c={c} p50", "ms", False))
            m(Metric(f"page_{fmt_}_c{c}_p99", f"2,000-file page {lbl} c={c} p99", "ms", False))
        m(Metric("small_c32_rps", "one-file page HTML c=32", "req/s", True))
        for c in ((8,) if self.quick else (1, 8)):
            m(Metric(f"dl_c{c}_mbps", f"warm 50 MB download c={c}", "MB/s", True))
        m(Metric("cold_ttfb", "cold 50 MB time to first byte", "ms", False))
        m(Metric("cold_total", "cold 50 MB total", "ms", False))
        m(Metric("herd_gets", f"herd: 32 clients, one cold {self.herd_mb} MB file: upstream GETs",
                 "count", False))
        m(Metric("herd_median", f"herd: 32 clients, one cold {self.herd_mb} MB file: client median",
                 "ms", False))
        what = "cold 1 GB download" if self.args.big else "cold 50 MB download (no --big)"
        m(Metric("rss_peak", f"peak RSS of the process tree during {what}", "MB", False))
        tools = ("uv",) if self.quick else ("pip", "uv")
        for tool in tools:
            for state in ("cold", "warm"):
                m(Metric(f"{tool}_{state}", f"{tool} install of 2 wheels, {state}", "s", False))
        for fmt_ in ("html", "json"):
            m(Metric(f"merged_{fmt_}_rps",
                     f"page merged from 3 upstreams x 2,000 files {fmt_} c=32", "req/s", True,
                     nightproxy_only=True))
            m(Metric(f"merged_{fmt_}_p99", f"merged page {fmt_} c=32 p99", "ms", False,
                     nightproxy_only=True))
        m(Metric("startup", f"start-up with {self.args.startup_files:,} cached files", "s", False,
                 nightproxy_only=True))
        what = f"`.metadata` of a cold {fixture.FAT_WHEEL_MB} MB wheel, feed without PEP 658"
        m(Metric("meta_ms", f"{what}: time", "ms", False, nightproxy_only=True))
        m(Metric("meta_kb", f"{what}: KiB read upstream", "KiB", False, nightproxy_only=True))

    def prime(self, t: tg.Target) -> None:
        """Warm every page and file the warm scenarios use (cold pages are fetched once)."""
        for fmt_, h in HEADERS.items():
            st, _, _ = tg.http_get(t.index_url + "bigproj/", h, timeout=300)
            if st != 200:
                raise RuntimeError(f"bigproj page {fmt_}: HTTP {st}")
        tg.http_get(t.index_url + "onefile/", HEADERS["html"], timeout=60)
        url = self.file_url(t, "blob", "blob-50.0-py3-none-any.whl")
        want = self.fx.entry("blob", "blob-50.0-py3-none-any.whl").sha256 if self.fx else ""
        for _ in range(60):  # proxpi redirects while it is still caching: wait for a 200
            st, body, _ = tg.http_get(url, timeout=120, follow=False)
            if st == 200:
                if hashlib.sha256(body).hexdigest() != want:
                    self.res.check_failed(f"{t.name}: warm blob-50 sha256 mismatch")
                break
            time.sleep(0.25)
        self.count_page_files(t)

    def count_page_files(self, t: tg.Target) -> None:
        _, body, _ = tg.http_get(t.index_url + "bigproj/", HEADERS["json"], timeout=120)
        try:
            n = len(json.loads(body)["files"])
        except (ValueError, KeyError):
            n = body.count(b"<a ")
        if n != fixture.BIG_FILES:
            log(f"  note: {t.name} lists {n} files on bigproj (upstream has {fixture.BIG_FILES})")
        self.page_counts[t.name] = n

    def rep_target(self, t: tg.Target, rep: int) -> None:
        name = t.name
        r = self.res
        for fmt_, c in self.page_cases():
            def page(fmt_: str = fmt_, c: int = c) -> None:
                out = self.rate(t.index_url + "bigproj/", HEADERS[fmt_], c, self.page_dur)
                r.add(f"page_{fmt_}_c{c}_rps", name, out["rps"])
                r.add(f"page_{fmt_}_c{c}_p50", name, out["p50_ms"])
                r.add(f"page_{fmt_}_c{c}_p99", name, out["p99_ms"])
            self.measure(f"page_{fmt_}_c{c}_rps", t, page)

        def small() -> None:
            out = self.rate(t.index_url + "onefile/", HEADERS["html"], 32, self.page_dur)
            r.add("small_c32_rps", name, out["rps"])
        self.measure("small_c32_rps", t, small)

        for c in ((8,) if self.quick else (1, 8)):
            def dl(c: int = c) -> None:
                url = self.file_url(t, "blob", "blob-50.0-py3-none-any.whl")
                out = self.rate(url, {}, c, self.dl_dur)
                r.add(f"dl_c{c}_mbps", name, out["mbps"])
            self.measure(f"dl_c{c}_mbps", t, dl)

        def cold() -> None:
            assert self.fx
            fn = f"coldblob-{rep}.0-py3-none-any.whl"
            url = self.file_url(t, "coldblob", fn)
            clients, peak = self.fetch(url, 1, rss_pid=None if self.args.big else t.pid())
            c0 = clients[0]
            if c0.get("status") != 200 or c0.get("sha256") != self.fx.entry("coldblob", fn).sha256:
                r.check_failed(f"{name}: cold download {fn}: {c0}")
                raise RuntimeError("bad body")
            r.add("cold_ttfb", name, c0["ttfb_ms"])
            r.add("cold_total", name, c0["total_ms"])
            if c0.get("redirected"):
                r.notes[("cold_ttfb", name)] = "(redirected to upstream)"
            if not self.args.big:
                r.add("rss_peak", name, peak / 1e6)
        self.measure("cold_ttfb", t, cold)

        def herd() -> None:
            assert self.fx
            assert self.nginx
            fn = f"herdblob-{self.herd_mb}.{rep}-py3-none-any.whl"
            url = self.file_url(t, "herdblob", fn)
            off = self.nginx.upstream_log_size()
            clients, _ = self.fetch(url, 32)
            want = self.fx.entry("herdblob", fn).sha256
            bad = [c for c in clients if c.get("status") != 200 or c.get("sha256") != want]
            if bad:
                r.check_failed(f"{name}: herd {len(bad)}/32 wrong bodies, e.g. {bad[0]}")
                r.fail("herd_median", name, f"{len(bad)}/32 wrong bodies")
            r.add("herd_median", name, statistics.median(c.get("total_ms", 0) for c in clients))
            if t.proxy:
                time.sleep(0.3)  # let background fetches show up in the access log
                gets = self.nginx.upstream_gets_since(off, f"/files/herdblob/{fn}")
                r.add("herd_gets", name, gets)
                if (name == "nightproxy" or name in self.args.variants) and gets != 1:
                    r.check_failed(f"{name}: herd made {gets} upstream GETs (want 1)")
        self.measure("herd_median", t, herd)

        if name == "nightproxy":
            self.measure("meta_ms", t, lambda: self.metadata_by_ranges(t, rep))

        tools = ("uv",) if self.quick else ("pip", "uv")
        for tool in tools:
            for state in ("cold", "warm"):
                def inst(tool: str = tool, state: str = state) -> None:
                    if state == "cold":
                        r.add(f"{tool}_{state}", name, self.install(t, tool, f"{tool}cold{rep}-b"))
                        return
                    # A warm uv install takes ~80 ms, about what one stray writeback or reclaim
                    # burst on a shared machine costs: a repetition's figure is a median too.
                    times = 1 if self.quick else WARM_INSTALLS
                    runs = [self.install(t, tool, "warm-b") for _ in range(times)]
                    r.add(f"{tool}_{state}", name, statistics.median(runs))
                self.measure(f"{tool}_{state}", t, inst)

    def install(self, t: tg.Target, tool: str, req: str) -> float:
        """Install ``req`` (and its dependency) through ``t`` into a throwaway dir; seconds."""
        with tempfile.TemporaryDirectory(dir=WORK) as d:
            env = clean_env()
            py = str(VENV / "bin" / "python")
            if tool == "pip":
                argv = [py, "-m", "pip", "install", "--isolated", "--no-cache-dir",
                        "--disable-pip-version-check", "--no-input", "--index-url", t.index_url,
                        "--target", d, req]
            else:
                argv = [str(VENV / "bin" / "uv"), "pip", "install", "--no-config", "--no-cache",
                        "--index-url", t.index_url, "--python", py, "--target", d, req]
                env["UV_NO_PROGRESS"] = "1"
            t0 = time.perf_counter()
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300,
                                  check=False)
            elapsed = time.perf_counter() - t0
            base = req.rsplit("-", 1)[0].replace("-", "_")
            ok = proc.returncode == 0 and all(
                (Path(d) / f"{base}_{x}" / "__init__.py").exists() for x in ("a", "b"))
            if not ok:
                msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
                self.res.check_failed(f"{t.name}: {tool} install {req} failed: {msg[0][:200]}")
                raise RuntimeError(f"install failed: {msg[0][:120]}")
            return elapsed

    def metadata_by_ranges(self, t: tg.Target, rep: int) -> None:
        """``.metadata`` of a big wheel the upstream has no ``.metadata`` for: the time, and
        what the upstream sent for it (the wheel itself is ``FAT_WHEEL_MB``)."""
        assert self.nginx
        fn = f"fatwheel-1.{rep}-py3-none-any.whl"
        url = self.file_url(t, "fatwheel", fn) + ".metadata"
        off = self.nginx.upstream_log_size()
        t0 = time.perf_counter()
        status, body, _ = tg.http_get(url, timeout=120)
        elapsed = (time.perf_counter() - t0) * 1000
        if status != 200 or body != fixture.fat_wheel_metadata("fatwheel", f"1.{rep}"):
            self.res.check_failed(f"{t.name}: {fn}.metadata: HTTP {status}, {body[:80]!r}")
            raise RuntimeError(f"{fn}.metadata: HTTP {status}")
        time.sleep(0.3)  # let the access log catch up
        self.res.add("meta_ms", t.name, elapsed)
        self.res.add("meta_kb", t.name,
                     self.nginx.upstream_bytes_since(off, f"/files/fatwheel/{fn}") / 1024)

    # ---- nightproxy-only
    def nightproxy_only(self) -> None:
        if "nightproxy" not in self.args.targets:
            return
        assert self.nginx
        run_dir = WORK / "run"
        ups = [(f"m{u}", f"{self.nginx.upstream}/m{u}/simple/") for u in (1, 2, 3)]
        np = tg.Nightproxy(run_dir, VENV, ups[0][1], upstreams=ups, label="nightproxy-merged")
        np.name = "nightproxy"
        try:
            np.start()
            for fmt_, h in HEADERS.items():
                st, _, _ = tg.http_get(np.index_url + "bigproj/", h, timeout=120)
                if st != 200:
                    raise RuntimeError(f"merged bigproj page {fmt_}: HTTP {st}")
            st, body, _ = tg.http_get(np.index_url + "bigproj/", HEADERS["json"], timeout=60)
            with_n = len(json.loads(body).get("files", [])) if st == 200 else -1
            self.res.notes[("merged_json_rps", "nightproxy")] = f"({with_n} files on page)"
            for _ in range(self.reps):
                for fmt_ in ("html", "json"):
                    def merged(fmt_: str = fmt_) -> None:
                        out = self.rate(np.index_url + "bigproj/", HEADERS[fmt_], 32, self.page_dur)
                        self.res.add(f"merged_{fmt_}_rps", "nightproxy", out["rps"])
                        self.res.add(f"merged_{fmt_}_p99", "nightproxy", out["p99_ms"])
                    self.measure(f"merged_{fmt_}_rps", np, merged)
        except Exception as e:
            for fmt_ in ("html", "json"):
                self.res.fail(f"merged_{fmt_}_rps", "nightproxy", f"{type(e).__name__}: {e}")
        finally:
            np.stop()
        self.startup()

    def startup(self) -> None:
        assert self.nginx
        assert self.fx
        n = self.args.startup_files
        try:
            cache = populate_nightproxy_cache(self, n)
        except HookMissingError as e:
            self.res.fail("startup", "nightproxy", f"n/a: hook missing ({e})")
            return
        except Exception as e:
            self.res.fail("startup", "nightproxy", f"populate: {type(e).__name__}: {e}")
            return
        run_dir = WORK / "run"
        many = f"{self.nginx.upstream}/many/simple/"
        for _ in range(self.reps):
            np = tg.Nightproxy(run_dir, VENV, many, label="nightproxy-startup")
            np.cache_override = cache
            try:
                t0 = time.perf_counter()
                np.spawn_only()
                assert np.proc
                tg.wait_http(f"{np.base}/simple/", np.proc, 120, np.log)
                self.res.add("startup", "nightproxy", time.perf_counter() - t0)
            except Exception as e:
                self.res.fail("startup", "nightproxy", f"{type(e).__name__}: {e}")
            finally:
                np.stop()

    # ---- main loop
    def run(self) -> None:
        self.define_metrics()
        live: list[tg.Target] = []
        for t in self.targets:
            if t.start_error:
                for key in self.res.order:
                    if not self.res.metrics[key].nightproxy_only or t.name == "nightproxy":
                        self.res.fail(key, t.name, t.start_error)
                continue
            try:
                t0 = time.perf_counter()
                self.prime(t)
                log(f"primed {t.name} in {time.perf_counter() - t0:.1f}s")
                live.append(t)
            except Exception as e:
                log(f"{t.name}: priming failed: {e}")
                for key in self.res.order:
                    if not self.res.metrics[key].nightproxy_only:
                        self.res.fail(key, t.name, f"priming: {e}")
        # warm installs are warm: one untimed install through each target first
        for t in live:
            for tool in (("uv",) if self.quick else ("pip", "uv")):
                try:
                    self.install(t, tool, "warm-b")
                except Exception as e:
                    log(f"{t.name}: warm-up install ({tool}) failed: {e}")
        for rep in range(self.reps):
            self.res.rep = rep
            order = live[rep % len(live):] + live[:rep % len(live)] if live else []
            for t in order:
                t0 = time.perf_counter()
                self.rep_target(t, rep)
                log(f"rep {rep + 1}/{self.reps} {t.name}: {time.perf_counter() - t0:.1f}s")
        if self.args.big:
            self.big_rss(live)
        if any(t.name == "nightproxy" and not t.start_error for t in self.targets):
            self.nightproxy_only()

    def big_rss(self, live: list[tg.Target]) -> None:
        assert self.fx
        fn = "gigablob-1.0-py3-none-any.whl"
        want = self.fx.entry("gigablob", fn).sha256
        for rep in range(self.reps):
            self.res.rep = rep
            for t in live:
                def one(t: tg.Target = t) -> None:
                    t.restart_fresh()
                    self.url_cache.pop((t.name, "gigablob", fn), None)
                    url = self.file_url(t, "gigablob", fn)
                    clients, peak = self.fetch(url, 1, rss_pid=t.pid())
                    if clients[0].get("sha256") != want:
                        self.res.check_failed(f"{t.name}: 1 GB sha256 mismatch")
                    self.res.add("rss_peak", t.name, peak / 1e6)
                self.measure("rss_peak", t, one)

    def missing_cells(self, names: list[str]) -> list[str]:
        out = []
        for key in self.res.order:
            m = self.res.metrics[key]
            for n in names:
                if n not in REQUIRED_TARGETS or (m.nightproxy_only and n != "nightproxy"):
                    continue
                if key == "herd_gets" and n == "nginx":
                    continue
                if self.res.median(key, n) is None:
                    out.append(f"{key}[{n}]: {self.res.failures.get((key, n), 'no number')}")
        return out


class HookMissingError(Exception):
    pass


def populate_nightproxy_cache(bench: Bench, n: int) -> Path:
    """HOOK: a nightproxy cache directory holding ``n`` cached files (start-up scenario).

    nightproxy's cache format is not final, so the cache is made by nightproxy itself: if
    ``nightproxy.cache`` offers ``bench_populate(dir, n, upstream_url)`` it is used (fast path for
    the cache's owners to provide); otherwise a nightproxy instance is pointed at an upstream of
    ``n`` tiny files and every file is fetched through it. The result is kept in bench/.work and
    reused while nightproxy/cache/ is unchanged. Raises HookMissingError only if the import fails.
    """
    assert bench.nginx
    assert bench.fx
    py = str(VENV / "bin" / "python")
    probe = subprocess.run([py, "-c", "import nightproxy.cache as c; "
                            "print(hasattr(c, 'bench_populate'))"],
                           capture_output=True, text=True, timeout=60, check=False, cwd=WORK)
    if probe.returncode != 0:
        raise HookMissingError((probe.stderr.strip().splitlines() or ["import failed"])[-1][:120])
    src = REPO / "nightproxy" / "cache"
    h = hashlib.sha256()
    for p in sorted(src.rglob("*.py")):
        h.update(p.read_bytes())
    key = h.hexdigest()[:16]
    cache = WORK / f"startup-cache-{n}-{key}"
    if (cache / ".bench-complete").exists():
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    fixture.build_many(bench.fx.root, n)
    many = f"{bench.nginx.upstream}/many/simple/"
    if probe.stdout.strip() == "True":
        subprocess.run([py, "-c", "import sys, nightproxy.cache as c; "
                        "c.bench_populate(sys.argv[1], int(sys.argv[2]), sys.argv[3])",
                        str(cache), str(n), many], check=True, timeout=1800)
    else:
        log(f"populating a nightproxy cache with {n:,} files through nightproxy itself")
        np = tg.Nightproxy(WORK / "run", VENV, many, label="nightproxy-populate")
        np.cache_override = cache
        try:
            np.start()
            projects = (n + 99) // 100
            st, body, _ = tg.http_get(np.index_url, HEADERS["json"], timeout=120)
            if st != 200:
                raise RuntimeError(f"root page HTTP {st}")
            deadline = time.monotonic() + (1800 if not bench.quick else 300)
            for j in range(projects):
                if time.monotonic() > deadline:
                    raise TimeoutError("populating took too long")
                page = f"{np.index_url}many{j:05d}/"
                st, body, _ = tg.http_get(page, HEADERS["json"], timeout=120)
                files = json.loads(body)["files"]
                urls = [urllib.parse.urljoin(page, f["url"]) for f in files]
                _fetch_all(urls)
        finally:
            np.stop()
    (cache / ".bench-complete").write_text(str(n))
    return cache


def _fetch_all(urls: list[str], workers: int = 16) -> None:
    errors: list[str] = []

    def worker(chunk: list[str]) -> None:
        for u in chunk:
            st, _, _ = tg.http_get(u, timeout=60)
            if st != 200:
                errors.append(f"{u}: HTTP {st}")

    threads = [threading.Thread(target=worker, args=(urls[i::workers],)) for i in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    if errors:
        raise RuntimeError(f"{len(errors)} fetches failed, e.g. {errors[0]}")


# --------------------------------------------------------------------------- main


def machine() -> str:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return f"nproc {os.cpu_count()}, memory {mem}, {platform.platform()}"


def git_commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True, check=False, timeout=30)
    return r.stdout.strip() or "(no commit)"


def versions() -> str:
    py = str(VENV / "bin" / "python")
    code = ("import importlib.metadata as m\n"
            "for p in ('nightproxy','proxpi','devpi-server','gunicorn','aiohttp','uv','pip'):\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: print(p, 'not installed')\n")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    out = ", ".join(r.stdout.split("\n")[:-1])
    nv = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False, timeout=30)
    return out + ", " + nv.stderr.strip().replace("nginx version: ", "")


#: Hand-written analysis below this heading in RESULTS.md survives a new run.
NOTES_HEADING = "## What was changed for speed"


def kept_notes(path: Path) -> str:
    """The hand-written part of an existing results file, to append after the new table."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find(NOTES_HEADING)
    return "\n" + old[at:] if at >= 0 else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced set, < 2 minutes")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--big", action="store_true", help="add the cold 1 GB download (peak RSS)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per figure (>= 5)")
    ap.add_argument("--startup-files", type=int, default=None,
                    help="cached files for nightproxy's start-up scenario (default 100,000; "
                         "1,000 with --quick)")
    ap.add_argument("--workers", type=int, default=1,
                    help="nightproxy's worker processes (serve --workers)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=TREE[:WORKERS]",
                    help="another nightproxy column: the source tree TREE (a checkout, e.g. "
                         "`git worktree add /tmp/before <commit>`) with WORKERS processes; "
                         "repeatable. Measured in the same run, round-robin with the others")
    args = ap.parse_args()
    args.variants = {}
    for spec in args.variant:
        vname, _, rest = spec.partition("=")
        tree, _, nworkers = rest.partition(":")
        if not vname or not tree or vname in ALL_TARGETS:
            ap.error(f"--variant {spec!r}: want NAME=TREE[:WORKERS], NAME not a target's")
        args.variants[vname] = (Path(tree).resolve(), int(nworkers or 1))
    args.targets = [x.strip() for x in args.targets.split(",") if x.strip()]
    bad = [x for x in args.targets if x not in ALL_TARGETS]
    if bad:
        ap.error(f"unknown targets {bad}; choose from {ALL_TARGETS}")
    if args.reps < 5:
        ap.error("--reps must be at least 5 (every figure is a median of >= 5 runs)")
    if args.startup_files is None:
        args.startup_files = 1_000 if args.quick else 100_000
    # stable column order: nginx first (the reference), then nightproxy, then peers
    args.targets = [x for x in ("nginx", "nightproxy", "proxpi", "devpi") if x in args.targets]
    args.targets[2:2] = list(args.variants)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(tg.kill_all)
    t_start = time.perf_counter()
    bench = Bench(args)
    setup_s = 0.0
    try:
        bench.setup()
        setup_s = time.perf_counter() - t_start
        bench.run()
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        if bench.load:
            tg.stop(bench.load.proc)  # type: ignore[arg-type]
        for t in bench.targets:
            t.stop()
        if bench.nginx:
            tg.stop(bench.nginx.proc)
        tg.kill_all()
    elapsed = time.perf_counter() - t_start
    table = render_table(bench.res, args.targets, args.reps)
    counts = ", ".join(f"{k}: {v}" for k, v in bench.page_counts.items())
    header = [
        f"# nightproxy benchmark{' (--quick)' if args.quick else ''}",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- commit: {git_commit()}",
        f"- versions: {versions()}",
        f"- load generator: {bench.generator()}",
        f"- nightproxy: this tree, {args.workers} worker(s)"
        + "".join(f"; {n}: {tree}, {w} worker(s)" for n, (tree, w) in args.variants.items()),
        f"- each figure: median of {args.reps} runs, targets interleaved round-robin; "
        f"run took {elapsed:.0f}s (set-up: venv, fixture, starting the targets, {setup_s:.0f}s)",
        f"- files listed on bigproj's page (upstream has {fixture.BIG_FILES}): {counts or '—'}",
        "",
        table,
        "",
    ]
    starts = [f"- {t.name} did not start: {t.start_error}" for t in bench.targets if t.start_error]
    checks = [f"- check failed: {c}" for c in bench.res.check_failures]
    text = "\n".join(header + starts + checks) + "\n"
    print(text)
    out = WORK / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md"
    out.write_text(text + kept_notes(out))
    log(f"wrote {out} ({elapsed:.0f}s)")
    missing = bench.missing_cells(args.targets)
    required_checks = [c for c in bench.res.check_failures
                       if c.split(":", 1)[0] in REQUIRED_TARGETS]
    if args.quick and (missing or required_checks):
        for m in missing:
            log(f"missing: {m}")
        for c in required_checks:
            log(f"failed check: {c}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
