"""Publishing benchmark: twine uploads to nightproxy's hosted feed, pypiserver and devpi-server.

    python bench/publish.py [--quick] [--reps N] [--targets nightproxy,pypiserver,devpi]
                            [--tree PATH] [--prune-files N] [--no-prune]

See bench/README.md ("Publishing"). Standard library only, like run.py: twine, pypiserver,
devpi-server and nightproxy run from bench/.work/venv, never from the project's dependencies.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime as dt
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
import targets as tg  # noqa: E402

WORK = run.WORK / "publish"
VENV = run.VENV
ALL_TARGETS = ("nightproxy", "pypiserver", "devpi")
#: Installed into the bench venv beside run.py's tools (waitress: pypiserver's "auto" server).
EXTRA_PACKAGES = ["pypiserver", "passlib", "waitress", "twine"]
PROJECT = "benchpkg"
FEED = "bench"
USER = "bench"
MB = 1_000_000
MIB = 1 << 20
#: The issue's bound on a 500 MB upload's RSS growth.
RSS_BOUND_MIB = 32
PLATFORMS = (
    "cp312-cp312-manylinux_2_17_x86_64", "cp312-cp312-manylinux_2_17_aarch64",
    "cp312-cp312-macosx_11_0_arm64", "cp312-cp312-win_amd64",
    "cp313-cp313-manylinux_2_17_x86_64", "cp313-cp313-manylinux_2_17_aarch64",
    "cp313-cp313-macosx_11_0_arm64", "cp313-cp313-win_amd64",
)
#: Retention of the pruned feed: builds older than this go, except each group's newest.
MAX_AGE_DAYS = 30
KEEP_LATEST = 5
#: The pruned feed's builds are spread over this many days, oldest to newest.
SPREAD_DAYS = 60
#: A prebuilt feed older than this is built again (its files age towards the threshold).
TEMPLATE_MAX_AGE_S = 12 * 3600
ACCEPT_JSON = run.ACCEPT_JSON
log = run.log
Metric = run.Metric


# --------------------------------------------------------------------------- wheels


def wheel_name(project: str, version: str, tag: str = "py3-none-any") -> str:
    return f"{project}-{version}-{tag}.whl"


def write_wheel(out: Path, project: str, version: str, tag: str, payload: int, seed: int) -> Path:
    """A real wheel (METADATA, WHEEL, RECORD) with ``payload`` random, stored bytes.

    Kept between runs: the same name is always the same size, so a file that exists is reused.
    """
    path = out / wheel_name(project, version, tag)
    if path.exists() and path.stat().st_size > payload:
        return path
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rng = random.Random(seed)
    dist_info = f"{project}-{version}.dist-info"
    sha = hashlib.sha256()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(f"{project}/payload.bin", date_time=(2026, 12, 7, 0, 0, 0))
        with zf.open(info, "w", force_zip64=payload > 1 << 30) as member:
            left = payload
            while left:
                chunk = rng.randbytes(min(left, 4 * MIB))
                sha.update(chunk)
                member.write(chunk)
                left -= len(chunk)
        meta = (f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
                "Summary: publishing benchmark payload\n\n")
        wheel = f"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: false\nTag: {tag}\n"
        zf.writestr(f"{dist_info}/METADATA", meta)
        zf.writestr(f"{dist_info}/WHEEL", wheel)
        record = (f"{project}/payload.bin,sha256={sha.hexdigest()},{payload}\n"
                  f"{dist_info}/METADATA,,\n{dist_info}/WHEEL,,\n{dist_info}/RECORD,,\n")
        zf.writestr(f"{dist_info}/RECORD", record)
    tmp.rename(path)
    return path


class Plan:
    """The files of every scenario and repetition: the same bytes for every target."""

    def __init__(self, quick: bool, local: bool) -> None:
        self.quick = quick
        self.local = local
        # --quick: a smoke run of every scenario, small enough for a minute on a busy machine
        self.small_count = 3 if quick else 20
        self.small_mb = (1, 2) if quick else (1, 4)
        self.big_mb = 5 if quick else 50
        self.uploaders = 2 if quick else 8
        self.per_uploader = 1 if quick else 3
        self.huge_mb = 20 if quick else 500

    def version(self, n: int) -> str:
        # nightly builds: a dev version with the build's timestamp as the local part
        return f"1.0.dev0+{2026120700 + n}" if self.local else f"1.0.dev{n}"

    def sizes(self, count: int, lo: int, hi: int, seed: int) -> list[int]:
        """``count`` sizes spread evenly over [lo, hi] MB, shuffled (the same set every rep)."""
        sizes = [int((lo + (hi - lo) * i / max(count - 1, 1)) * MB) for i in range(count)]
        random.Random(seed).shuffle(sizes)
        return sizes

    def files(self, rep: int) -> dict[str, list[list[Path]]]:
        """Per scenario, the file lists of its uploaders (one list, or one per uploader)."""
        # a name is always the same size within a mode, and --quick's sizes are other ones
        out = WORK / ("wheels-quick" if self.quick else "wheels")
        base = 1000 * (rep + 1)
        small = [write_wheel(out, PROJECT, self.version(base + i), "py3-none-any", size, base + i)
                 for i, size in enumerate(self.sizes(self.small_count, *self.small_mb, rep))]
        big = write_wheel(out, PROJECT, self.version(base + 100), "py3-none-any",
                          self.big_mb * MB, base + 100)
        conc: list[list[Path]] = []
        sizes = self.sizes(self.uploaders * self.per_uploader, *self.small_mb, rep + 7)
        for u in range(self.uploaders):
            # a CI matrix: each uploader is one platform's job with its own builds
            conc.append([write_wheel(out, PROJECT, self.version(base + 200 + j), PLATFORMS[u],
                                     sizes[u * self.per_uploader + j], base + 200 + 10 * u + j)
                         for j in range(self.per_uploader)])
        huge = write_wheel(out, PROJECT, self.version(base + 300), "py3-none-any",
                           self.huge_mb * MB, base + 300)
        return {"small": [small], "big": [[big]], "conc": conc, "huge": [[huge]]}


# --------------------------------------------------------------------------- targets


class Uploadable:
    """A server that accepts twine uploads. ``upload_url``, ``user`` and ``password`` are what
    twine is given; ``page(project)`` is the project's simple page."""

    name = "?"
    auth = "?"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = secrets.token_urlsafe(24)
        self.user = USER

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upload_url(self) -> str:
        raise NotImplementedError

    def page(self, project: str) -> str:
        return f"{self.base}/simple/{project}/"

    @property
    def log(self) -> Path:
        return self.work / f"{self.name}.log"

    def env(self) -> dict[str, str]:
        env = run.clean_env()
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        tg.stop(self.proc)
        self.proc = None


def venv_bin(name: str) -> str:
    return str(VENV / "bin" / name)


class NightproxyFeed(Uploadable):
    name = "nightproxy"
    auth = "a publisher token of the project (HTTP Basic, `__token__`)"

    def __init__(self, work: Path, tree: Path | None, feed_dir: Path | None = None,
                 retention: dict[str, Any] | None = None) -> None:
        super().__init__(work)
        self.user = "__token__"
        self.tree = tree
        self.feed_dir = feed_dir or work / "feed"
        self.retention = retention or {"dev_max_age": "30d", "keep_latest": 5, "trash": "7d"}
        self.config = work / "nightproxy.yaml"

    @property
    def upload_url(self) -> str:
        return f"{self.base}/feeds/{FEED}/"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["BENCH_UPLOAD_TOKEN"] = self.password
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        return env

    def write_config(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        # JSON is YAML; the token comes from the environment, as a deployment would have it
        cfg = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "cache": {"dir": str(self.work / "cache")},
            "upstreams": [{
                "name": FEED, "kind": "hosted", "path": str(self.feed_dir),
                "retention": self.retention,
                "publishers": {PROJECT: {"tokens": ["${BENCH_UPLOAD_TOKEN}"]}},
            }],
        }
        self.config.write_text(json.dumps(cfg, indent=2) + "\n")

    def spawn(self) -> None:
        self.port = tg.free_port()
        self.write_config()
        self.proc = tg.spawn([venv_bin("nightproxy"), "serve", "--config", str(self.config)],
                             self.log, env=self.env())

    def start(self) -> None:
        self.spawn()
        tg.wait_http(f"{self.base}/simple/", self.proc, 120, self.log)


class PypiServer(Uploadable):
    name = "pypiserver"
    auth = "htpasswd (`-a update -P`, passlib's default apr_md5_crypt)"

    @property
    def upload_url(self) -> str:
        return f"{self.base}/"

    def start(self) -> None:
        packages = self.work / "packages"
        packages.mkdir(parents=True, exist_ok=True)
        htpasswd = self.work / "htpasswd"
        code = ("import sys\nfrom passlib.apache import HtpasswdFile\n"
                "h = HtpasswdFile(sys.argv[1], new=True)\n"
                "h.set_password(sys.argv[2], sys.argv[3])\nh.save()\n")
        subprocess.run([venv_bin("python"), "-c", code, str(htpasswd), self.user, self.password],
                       check=True, timeout=60, env=self.env())
        self.port = tg.free_port()
        # the "auto" server: waitress, as pypiserver picks it when installed
        argv = [venv_bin("pypi-server"), "run", "-i", "127.0.0.1", "-p", str(self.port),
                "-a", "update", "-P", str(htpasswd), "--disable-fallback", str(packages)]
        self.proc = tg.spawn(argv, self.log, env=self.env())
        tg.wait_http(f"{self.base}/health", self.proc, 60, self.log)


class DevpiServer(Uploadable):
    name = "devpi"
    auth = "a devpi user's password (HTTP Basic), index `bench/dev`"

    @property
    def upload_url(self) -> str:
        return f"{self.base}/{USER}/dev/"

    def page(self, project: str) -> str:
        return f"{self.base}/{USER}/dev/+simple/{project}/"

    def start(self) -> None:
        serverdir = self.work / "server"
        env = self.env()
        # devpi-init takes seconds: its fresh server directory is made once and copied
        blank = WORK / "devpi-init"
        if not (blank / ".nodeinfo").exists():
            shutil.rmtree(blank, ignore_errors=True)
            subprocess.run([venv_bin("devpi-init"), "--serverdir", str(blank), "--no-root-pypi"],
                           check=True, env=env, capture_output=True, timeout=300)
        shutil.copytree(blank, serverdir)
        self.port = tg.free_port()
        argv = [venv_bin("devpi-server"), "--serverdir", str(serverdir), "--host", "127.0.0.1",
                "--port", str(self.port)]
        self.proc = tg.spawn(argv, self.log, env=env)
        tg.wait_http(f"{self.base}/+api", self.proc, 90, self.log)
        # the user and its index through devpi's JSON API (what devpi-client sends)
        basic = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        for url, body, auth in (
            (f"{self.base}/{self.user}", {"password": self.password}, {}),
            (self.upload_url.rstrip("/"), {"type": "stage", "bases": [], "volatile": True},
             {"Authorization": f"Basic {basic}"}),
        ):
            req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                         headers={"Content-Type": "application/json",
                                                  "Accept": "application/json", **auth})
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()
            except urllib.error.HTTPError as e:
                raise RuntimeError(f"PUT {url}: HTTP {e.code} {e.read()[:200]!r}") from None


def make_targets(names: list[str], tree: Path | None) -> list[Uploadable]:
    out: list[Uploadable] = []
    for name in names:
        work = WORK / "run" / name
        if name == "nightproxy":
            out.append(NightproxyFeed(work, tree))
        elif name == "pypiserver":
            out.append(PypiServer(work))
        else:
            out.append(DevpiServer(work))
    return out


# --------------------------------------------------------------------------- measuring


def in_parallel(fn: Callable[[Uploadable], None], targets: list[Uploadable]) -> None:
    threads = [threading.Thread(target=fn, args=(t,)) for t in targets]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


class PeakRss:
    """The peak RSS of a process tree, sampled from /proc every 10 ms while in the block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tg.tree_rss_bytes(self.pid))
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self.peak = tg.tree_rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tg.tree_rss_bytes(self.pid))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants so far (from /proc)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rfind(b")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def twine_argv(t: Uploadable, files: list[Path]) -> list[str]:
    return [venv_bin("twine"), "upload", "--repository-url", t.upload_url, "-u", t.user,
            "-p", t.password, "--non-interactive", "--disable-progress-bar",
            *[str(f) for f in files]]


def twine_env() -> dict[str, str]:
    return {k: v for k, v in run.clean_env().items() if not k.startswith("TWINE_")}


def twine(t: Uploadable, groups: list[list[Path]], timeout: float) -> float:
    """Run one twine process per group at once; the seconds until the last one ended."""
    outs = [WORK / "run" / f"twine-{t.name}-{i}.out" for i in range(len(groups))]
    t0 = time.perf_counter()
    procs = []
    for group, out in zip(groups, outs, strict=True):
        with out.open("wb") as f:
            procs.append(subprocess.Popen(twine_argv(t, group), stdout=f, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=twine_env()))
    failed = []
    for proc, out in zip(procs, outs, strict=True):
        try:
            rc = proc.wait(max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        if rc != 0:
            failed.append(f"twine exit {rc}: {twine_error(out)}")
    elapsed = time.perf_counter() - t0
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(procs)} uploaders failed, e.g. {failed[0]}")
    return elapsed


def twine_error(out: Path) -> str:
    lines = [x.strip() for x in out.read_text(errors="replace").splitlines() if x.strip()]
    bad = [x for x in lines if "HTTPError" in x or "Error" in x or "error" in x]
    return ((bad or lines or ["(no output)"])[-1])[-200:]


def check_listed(t: Uploadable, files: list[Path], wait: float = 5.0) -> None:
    """Every uploaded file is on the target's project page (within ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    missing: list[str] = []
    while True:
        status, body, _ = tg.http_get(t.page(PROJECT), {"Accept": "text/html"}, timeout=60)
        text = urllib.parse.unquote(body.decode(errors="replace")) if status == 200 else ""
        missing = [f.name for f in files if f.name not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if missing:
        raise RuntimeError(f"{len(missing)} uploaded files not listed (page HTTP {status}), "
                           f"e.g. {missing[0]}")


# --------------------------------------------------------------------------- the pruned feed


def feed_layout(files: int) -> tuple[int, int]:
    """(projects, versions) for ``files`` wheels: 8 platforms a version, 50 versions a project
    (fewer projects for a small feed)."""
    versions = 50 if files >= 50 * len(PLATFORMS) * 10 else 25
    projects = max(1, files // (versions * len(PLATFORMS)))
    return projects, versions


def age_days(versions: int, v: int) -> float:
    return (versions - 1 - v) * SPREAD_DAYS / versions + 0.25


def expected_deletions(files: int) -> int:
    """What retention deletes of the feed ``build_feed`` makes: per group, the versions older
    than ``MAX_AGE_DAYS`` beyond the newest ``KEEP_LATEST``."""
    projects, versions = feed_layout(files)
    old = sum(1 for v in range(versions)
              if age_days(versions, v) > MAX_AGE_DAYS and versions - 1 - v >= KEEP_LATEST)
    return old * projects * len(PLATFORMS)


def build_feed(root: Path, files: int) -> None:
    """Run by the bench venv's Python (``--build-feed``): a hosted feed in ``root``, written
    straight into the layout and records of ``nightproxy.hosted.local`` (blobs, named hard
    links, the SQLite records with back-dated upload times), as if uploaded over 60 days."""
    from packaging.utils import canonicalize_name

    from nightproxy.hosted.local import LocalStorage
    from nightproxy.hosted.records import NewFile, RecordDB

    storage = LocalStorage(root)
    storage.blob_dir.mkdir(parents=True)
    db = RecordDB(storage.state_dir / "feed.sqlite")
    projects, versions = feed_layout(files)
    now = time.time()
    rng = random.Random(1)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        blob = storage.blob(digest)
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        return digest

    try:
        with db.write() as writer:
            for p in range(projects):
                project = canonicalize_name(f"feedproj{p:04d}")
                for v in range(versions):
                    version = f"1.0.dev{v}"
                    meta = (f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n\n"
                            ).encode()
                    meta_sha = put(meta)
                    uploaded = dt.datetime.fromtimestamp(
                        now - age_days(versions, v) * 86400, dt.UTC)
                    for tag in PLATFORMS:
                        buf = io.BytesIO()
                        with zipfile.ZipFile(buf, "w") as zf:
                            zf.writestr(f"{project}/_native.so", rng.randbytes(256))
                            zf.writestr(f"{project}-{version}.dist-info/METADATA", meta)
                            zf.writestr(f"{project}-{version}.dist-info/WHEEL",
                                        f"Wheel-Version: 1.0\nTag: {tag}\n")
                            zf.writestr(f"{project}-{version}.dist-info/RECORD", "")
                        data = buf.getvalue()
                        filename = wheel_name(project, version, tag)
                        sha = put(data)
                        named = storage.named(project, filename)
                        named.parent.mkdir(exist_ok=True)
                        os.link(storage.blob(sha), named)
                        writer.insert(NewFile(
                            project=project, filename=filename, sha256=sha,
                            blake2_256=hashlib.blake2b(data, digest_size=32).hexdigest(),
                            size=len(data), uploader="bench", requires_python=None,
                            metadata_sha256=meta_sha, upload_time=uploaded))
    finally:
        db.close()


def hosted_code_hash(tree: Path) -> str:
    h = hashlib.sha256()
    for name in ("local.py", "records.py"):
        p = tree / "nightproxy" / "hosted" / name
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:16]


def feed_template(files: int, tree: Path) -> Path:
    """The prebuilt feed (kept in bench/.work/publish while fresh and of the same code)."""
    key = f"feed-{files}-{hosted_code_hash(tree)}"
    root = WORK / key
    stamp = root / ".bench-built"
    if stamp.exists() and time.time() - float(stamp.read_text()) < TEMPLATE_MAX_AGE_S:
        return root
    for old in WORK.glob(f"feed-{files}-*"):
        shutil.rmtree(old, ignore_errors=True)
    log(f"building a hosted feed of {files:,} files in {root}")
    t0 = time.perf_counter()
    env = {**run.clean_env(), "PYTHONPATH": str(tree)}
    r = subprocess.run([venv_bin("python"), str(Path(__file__).resolve()), "--build-feed",
                        str(root), "--prune-files", str(files)], env=env, capture_output=True,
                       text=True, timeout=1800, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"building the feed failed: {r.stderr.strip()[-600:]}")
    stamp.write_text(repr(time.time()))
    log(f"  built in {time.perf_counter() - t0:.0f}s")
    return root


def copy_feed(template: Path, dest: Path) -> None:
    """A copy a prune may change: hard links for the bytes (never changed in place, only
    unlinked), a real copy of the records."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(template), str(dest)], check=True, timeout=600)
    db = dest / ".nightproxy" / "feed.sqlite"
    db.unlink()
    shutil.copyfile(template / ".nightproxy" / "feed.sqlite", db)


class PagePoller:
    """One client asking for project pages back to back, recording each answer's latency."""

    def __init__(self, base: str, projects: list[str]) -> None:
        self.base = base
        self.projects = projects
        self.samples: list[tuple[float, float, bool]] = []  # (start, seconds, ok)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []

    def _loop(self) -> None:
        rng = random.Random(3)
        while not self._stop.is_set():
            url = f"{self.base}/simple/{rng.choice(self.projects)}/"
            t0 = time.perf_counter()
            try:
                status, body, _ = tg.http_get(url, {"Accept": ACCEPT_JSON}, timeout=30)
                ok = status == 200 and b'"files"' in body
                if not ok:
                    self.errors.append(f"HTTP {status}")
            except OSError as e:
                ok = False
                self.errors.append(repr(e)[:120])
            self.samples.append((t0, time.perf_counter() - t0, ok))

    def start(self) -> PagePoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def slowest(self, t0: float, t1: float, n: int) -> list[tuple[float, float]]:
        """The ``n`` slowest answers started in [t0, t1]: (start, seconds)."""
        inside = [(s, d) for s, d, _ in self.samples if t0 <= s <= t1]
        return sorted(inside, key=lambda x: -x[1])[:n]

    def window(self, t0: float, t1: float) -> tuple[list[float], int]:
        """Latencies (seconds) of the answers started in [t0, t1], and the failures."""
        inside = [(d, ok) for s, d, ok in self.samples if t0 <= s <= t1]
        return [d for d, _ in inside], sum(1 for _, ok in inside if not ok)


def feed_query(feed_dir: Path, sql: str, *args: str) -> Any:
    """One value from the feed's records, read directly (not through the server)."""
    db = sqlite3.connect(f"file:{feed_dir / '.nightproxy' / 'feed.sqlite'}?mode=ro", uri=True,
                         timeout=30)
    try:
        row = db.execute(sql, args).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def deleted_by_retention(feed_dir: Path) -> int:
    """The feed's deletions by retention so far."""
    return int(feed_query(feed_dir, "SELECT value FROM counters WHERE name = ?",
                          "deleted:retention") or 0)


def upload_time(feed_dir: Path, filename: str) -> float:
    """When the feed accepted ``filename`` (seconds since the epoch, the server's clock)."""
    return float(feed_query(feed_dir, "SELECT upload_time FROM files WHERE filename = ?",
                            filename))


# --------------------------------------------------------------------------- the run


SCENARIOS = {
    # key: (label, how many uploaders and files)
    "small": "{n} wheels of {lo}-{hi} MB, one twine",
    "big": "one {big} MB wheel",
    "conc": "{u} twine processes at once, {k} wheels of {lo}-{hi} MB each",
}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.reps: int = args.reps
        self.res = run.Results()
        self.tree: Path = args.tree or REPO
        self.targets: list[Uploadable] = []
        self.plan = Plan(self.quick, local=True)
        self.notes: list[str] = []
        self.start_errors: dict[str, str] = {}
        self.starting: list[threading.Thread] = []
        self.settles = 0
        self.busy = 0

    # ---- set-up
    def setup(self) -> None:
        shutil.rmtree(WORK / "run", ignore_errors=True)
        (WORK / "run").mkdir(parents=True)
        # run.py's venv, with twine, pypiserver (and its htpasswd and server) beside its tools
        run.VENV_PACKAGES[:] = [*run.VENV_PACKAGES,
                                *[p for p in EXTRA_PACKAGES if p not in run.VENV_PACKAGES]]
        error = run.setup_venv()
        if error:
            raise RuntimeError(f"nightproxy could not be installed in the bench venv: {error}")
        self.define_metrics()
        self.targets = make_targets(self.args.targets, self.args.tree)
        log(f"starting {', '.join(t.name for t in self.targets)}")
        self.starting = [threading.Thread(target=self.start, args=(t,)) for t in self.targets]
        for th in self.starting:
            th.start()

    def start(self, t: Uploadable) -> None:
        try:
            t.start()
        except Exception as e:
            self.start_errors[t.name] = f"{type(e).__name__}: {e}"[:300]
            log(f"  {t.name} did not start: {self.start_errors[t.name]}")
            t.stop()

    def ready(self) -> None:
        """Wait for the targets' start; choose the versions; build the wheels."""
        for th in self.starting:
            th.join()
        self.targets = [t for t in self.targets if t.name not in self.start_errors]
        self.probe_local_versions()
        log("building the wheels")
        self.files = [self.plan.files(rep) for rep in range(self.reps)]

    def probe_local_versions(self) -> None:
        """Nightly local versions (``+2026120701``) for every target if every target takes
        them; otherwise plain dev versions for all, so that all get the same files."""
        f = write_wheel(WORK / "probe", PROJECT, "0.0.dev0+2026120700", "py3-none-any", 1024, 0)
        refused = []

        def probe(t: Uploadable) -> None:
            try:
                twine(t, [[f]], 120)
            except RuntimeError as e:
                refused.append(f"{t.name} ({e})")

        in_parallel(probe, self.targets)
        self.plan.local = not refused
        if refused:
            self.notes.append("local versions refused by " + "; ".join(refused)
                              + ": every target gets plain dev versions (`1.0.devN`)")
        else:
            self.notes.append("versions: nightly local versions (`1.0.dev0+2026120700N`), "
                              "accepted by every target")

    def define_metrics(self) -> None:
        p = self.plan
        lo, hi = p.small_mb
        small = SCENARIOS["small"].format(n=p.small_count, lo=lo, hi=hi)
        big = SCENARIOS["big"].format(big=p.big_mb)
        conc = SCENARIOS["conc"].format(u=p.uploaders, k=p.per_uploader, lo=lo, hi=hi)
        m = self.res.metric
        for key, label in (("small", small), ("conc", conc)):
            m(Metric(f"{key}_rate", f"{label}: uploads/s", "1/s", True))
            m(Metric(f"{key}_mbs", f"{label}: MB/s", "MB/s", True))
            m(Metric(f"{key}_rss", f"{label}: peak RSS", "MiB", False))
            m(Metric(f"{key}_cpu", f"{label}: server CPU time", "s", False))
            if key == "small":
                m(Metric("big_time", f"{big}: time", "s", False))
                m(Metric("big_mbs", f"{big}: MB/s", "MB/s", True))
                m(Metric("big_rss", f"{big}: peak RSS", "MiB", False))
                m(Metric("big_cpu", f"{big}: server CPU time", "s", False))
        huge = f"one {p.huge_mb} MB wheel (nightproxy only)"
        m(Metric("huge_mbs", f"{huge}: MB/s", "MB/s", True, nightproxy_only=True))
        m(Metric("huge_growth", f"{huge}: RSS growth, bound {RSS_BOUND_MIB} MiB", "MiB", False,
                 nightproxy_only=True))
        if self.args.no_prune:
            return
        n = f"{self.args.prune_files:,}"
        m(Metric("startup", f"start-up over a feed of {n} files (spawn to first page)", "s",
                 False, nightproxy_only=True))
        m(Metric("idle_p50", "project page while idle: p50", "ms", False, nightproxy_only=True))
        m(Metric("idle_max", "project page while idle: max", "ms", False, nightproxy_only=True))
        for key, label in (("cmd", "`nightproxy feed prune` beside the server"),
                           ("srv", "prune in the server, after an upload")):
            m(Metric(f"prune_{key}", f"{label}, {n} files: time", "s", False,
                     nightproxy_only=True))
            m(Metric(f"prune_{key}_p50", f"{label}: project page p50 meanwhile", "ms", False,
                     nightproxy_only=True))
            m(Metric(f"prune_{key}_max", f"{label}: project page max meanwhile", "ms", False,
                     nightproxy_only=True))
            m(Metric(f"prune_{key}_fail", f"{label}: failed page requests meanwhile", "count",
                     False, nightproxy_only=True))

    # ---- upload scenarios
    def measure(self, keys: list[str], target: str, fn: Callable[[], None]) -> bool:
        if not self.quick:
            # other jobs' load is not ours to wait out for long: count how often it stayed
            self.settles += 1
            self.busy += tg.settle(max_wait=5.0) > 4.9
        try:
            fn()
        except Exception as e:
            log(f"  {target} {keys[0]}: {type(e).__name__}: {e}")
            for key in keys:
                self.res.fail(key, target, f"{type(e).__name__}: {e}")
            return False
        return True

    def upload(self, t: Uploadable, scenario: str, groups: list[list[Path]]) -> None:
        assert t.proc is not None
        files = [f for g in groups for f in g]
        size = sum(f.stat().st_size for f in files)
        cpu = tree_cpu_seconds(t.proc.pid)
        with PeakRss(t.proc.pid) as rss:
            secs = twine(t, groups, 900)
        cpu = tree_cpu_seconds(t.proc.pid) - cpu
        check_listed(t, files)
        log(f"  {t.name} {scenario}: {len(files)} files, {size / MB:.0f} MB in {secs:.2f}s, "
            f"peak RSS {rss.peak / MIB:.0f} MiB, server CPU {cpu:.2f}s")
        self.res.add(f"{scenario}_cpu", t.name, cpu)
        if scenario == "big":
            self.res.add("big_time", t.name, secs)
        else:
            self.res.add(f"{scenario}_rate", t.name, len(files) / secs)
        self.res.add(f"{scenario}_mbs", t.name, size / MB / secs)
        self.res.add(f"{scenario}_rss", t.name, rss.peak / MIB)

    def huge(self, t: NightproxyFeed, f: Path) -> None:
        assert t.proc is not None
        pid = t.proc.pid
        before = statistics.median(tg.tree_rss_bytes(pid) for _ in range(5))
        with PeakRss(pid) as rss:
            secs = twine(t, [[f]], 900)
        check_listed(t, [f])
        growth = (rss.peak - before) / MIB
        log(f"  nightproxy {f.stat().st_size / MB:.0f} MB: {secs:.1f}s, RSS {before / MIB:.0f} "
            f"-> peak {rss.peak / MIB:.0f} MiB (+{growth:.1f})")
        self.res.add("huge_mbs", t.name, f.stat().st_size / MB / secs)
        self.res.add("huge_growth", t.name, growth)
        if growth >= RSS_BOUND_MIB:
            self.res.check_failed(f"nightproxy: a {self.plan.huge_mb} MB upload grew RSS by "
                                  f"{growth:.1f} MiB (bound {RSS_BOUND_MIB})")

    def uploads(self) -> None:
        for rep in range(self.reps):
            self.res.rep = rep
            log(f"repetition {rep + 1}/{self.reps}")
            files = self.files[rep]
            k = rep % max(len(self.targets), 1)
            order = self.targets[k:] + self.targets[:k]
            for scenario in ("small", "big", "conc"):
                keys = ([f"{scenario}_rate"] if scenario != "big" else ["big_time"]) + [
                    f"{scenario}_mbs", f"{scenario}_rss", f"{scenario}_cpu"]
                for t in order:
                    self.measure(keys, t.name, lambda t=t, g=files[scenario], s=scenario:
                                 self.upload(t, s, g))
            for t in self.targets:
                if isinstance(t, NightproxyFeed):
                    self.measure(["huge_mbs", "huge_growth"], t.name,
                                 lambda t=t, f=files["huge"][0][0]: self.huge(t, f))
        for t in self.targets:
            t.stop()

    # ---- the prune
    def prunes(self) -> None:
        if "nightproxy" not in self.args.targets or self.args.no_prune:
            return
        n = self.args.prune_files
        template = feed_template(n, self.tree)
        projects, _ = feed_layout(n)
        # the pages asked for meanwhile: 20 projects, fetched once before (a warm server)
        names = [f"feedproj{p:04d}" for p in range(0, projects, max(1, projects // 20))]
        expected = expected_deletions(n)
        self.notes.append(f"pruned feed: {projects} projects x {feed_layout(n)[1]} dev versions x "
                          f"{len(PLATFORMS)} platforms = {n:,} files, uploaded over "
                          f"{SPREAD_DAYS} days; retention dev_max_age {MAX_AGE_DAYS}d, "
                          f"keep_latest {KEEP_LATEST}: each prune deletes {expected:,}")
        trigger = write_wheel(WORK / "probe", PROJECT, "0.0.dev1", "py3-none-any", 1024, 1)
        for rep in range(self.reps):
            self.res.rep = rep
            modes = ["cmd", "srv"] if rep % 2 == 0 else ["srv", "cmd"]
            for mode in modes:
                keys = [f"prune_{mode}", f"prune_{mode}_p50", f"prune_{mode}_max",
                        f"prune_{mode}_fail"]
                # once more if it failed: a server that another job's signal stopped on
                # this shared machine must not cost a repetition
                for _attempt in range(2):
                    if self.measure(keys, "nightproxy", lambda m=mode: self.prune_once(
                            m, template, names, expected, trigger)):
                        break

    def prune_once(self, mode: str, template: Path, names: list[str], expected: int,
                   trigger: Path) -> None:
        feed_dir = WORK / "run" / "prune-feed"
        copy_feed(template, feed_dir)
        np = NightproxyFeed(WORK / "run" / f"prune-{mode}", self.args.tree, feed_dir,
                            {"dev_max_age": f"{MAX_AGE_DAYS}d", "keep_latest": KEEP_LATEST,
                             "trash": "7d"})
        idle = 0.5 if self.quick else 3.0
        after = 0.3 if self.quick else 1.0
        try:
            t0 = time.perf_counter()
            np.spawn()
            tg.wait_http(f"{np.base}/simple/", np.proc, 600, np.log)
            self.res.add("startup", "nightproxy", time.perf_counter() - t0)
            for name in names:
                tg.http_get(f"{np.base}/simple/{name}/", {"Accept": ACCEPT_JSON}, timeout=60)
            poller = PagePoller(np.base, names).start()
            try:
                t_idle = time.perf_counter()
                time.sleep(idle)
                if mode == "cmd":
                    t_start = time.perf_counter()
                    out = np.work / "prune.out"
                    with out.open("wb") as f:
                        r = subprocess.run(
                            [venv_bin("nightproxy"), "feed", "prune", FEED, "--config",
                             str(np.config)], stdout=f, stderr=subprocess.STDOUT,
                            env=np.env(), timeout=1800, check=False)
                    t_end = time.perf_counter()
                    secs = t_end - t_start
                    if r.returncode != 0:
                        raise RuntimeError(f"feed prune exit {r.returncode}: {tg.tail(out)}")
                else:
                    t_start = time.perf_counter()
                    twine(np, [[trigger]], 120)
                    while deleted_by_retention(feed_dir) < expected:
                        if time.perf_counter() - t_start > 1800:
                            raise RuntimeError("the server's prune did not finish in 30 min")
                        time.sleep(0.02)
                    t_end = time.perf_counter()
                    # from the upload's acceptance (its recorded time) to the deletions seen
                    # committed: the prune that upload woke
                    secs = time.time() - upload_time(feed_dir, trigger.name)
                time.sleep(after)
            finally:
                poller.stop()
            deleted = deleted_by_retention(feed_dir)
            if deleted != expected:
                self.res.check_failed(f"nightproxy: prune ({mode}) deleted {deleted:,} files, "
                                      f"expected {expected:,}")
            idle_lat, idle_fail = poller.window(t_idle, t_start)
            lat, fails = poller.window(t_start, t_end + after)
            if not lat or not idle_lat:
                raise RuntimeError("no page answered")
            self.res.add(f"prune_{mode}", "nightproxy", secs)
            self.res.add(f"prune_{mode}_p50", "nightproxy", statistics.median(lat) * 1000)
            self.res.add(f"prune_{mode}_max", "nightproxy", max(lat) * 1000)
            self.res.add(f"prune_{mode}_fail", "nightproxy", fails)
            self.res.add("idle_p50", "nightproxy", statistics.median(idle_lat) * 1000)
            self.res.add("idle_max", "nightproxy", max(idle_lat) * 1000)
            slowest = sorted(poller.slowest(t_start, t_end + after, 3))
            log(f"  prune ({mode}): {deleted:,} deleted in {secs:.1f}s; pages meanwhile: "
                f"{len(lat)} answered, p50 {statistics.median(lat) * 1000:.0f} ms, max "
                f"{max(lat) * 1000:.0f} ms, {fails} failed"
                + (f" ({poller.errors[0]})" if poller.errors else "")
                + "; slowest asked at " + ", ".join(f"+{s - t_start:.1f}s ({d:.1f}s)"
                                                    for s, d in slowest))
            if fails or idle_fail:
                self.res.check_failed(f"nightproxy: {fails + idle_fail} page requests failed "
                                      f"around a prune ({mode}), e.g. {poller.errors[0]}")
        finally:
            np.stop()
            shutil.rmtree(feed_dir, ignore_errors=True)

    # ---- report
    def missing(self) -> list[str]:
        return [f"{self.res.metrics[k].label}: {self.res.failures.get((k, 'nightproxy'), '—')}"
                for k in self.res.order if self.res.median(k, "nightproxy") is None]


def tool_versions() -> str:
    code = ("import importlib.metadata as m\n"
            "for p in ('nightproxy','twine','pypiserver','waitress','passlib','devpi-server'):\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: print(p, 'not installed')\n")
    r = subprocess.run([venv_bin("python"), "-c", code], capture_output=True, text=True,
                       check=False, timeout=60)
    return ", ".join(r.stdout.split("\n")[:-1])


def twine_startup() -> float:
    """Seconds of ``twine check`` on a 1 KiB wheel: the client's own start-up, in every
    upload figure above (the servers are not involved)."""
    f = write_wheel(WORK / "probe", PROJECT, "0.0.dev2", "py3-none-any", 1024, 2)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([venv_bin("twine"), "check", str(f)], capture_output=True, check=False,
                       timeout=120, env=twine_env())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt(v: float) -> str:
    """run.py's number format, with whole numbers (counts) printed whole."""
    return f"{v:.0f}" if v.is_integer() and v < 1000 else _run_fmt(v)


_run_fmt = run.fmt
run.fmt = fmt


def report(bench: Bench, elapsed: float, names: list[str]) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = run.render_table(bench.res, names, bench.reps)
    auth = "; ".join(f"{t.name}: {t.auth}" for t in make_targets(names, None))
    lines = [
        f"## Publishing (bench/publish.py{' --quick' if bench.quick else ''}), {stamp}",
        "",
        f"- machine: {run.machine()}; shared and noisy (2 cores, other helpers' test suites "
        "and benchmarks running at the same time): read ratios, not absolute figures",
        f"- commit: {run.git_commit()}; nightproxy tree: {bench.tree}",
        f"- versions: {tool_versions()}",
        f"- each figure: median of {bench.reps} runs, targets interleaved round-robin (the "
        f"first target rotates each repetition); run took {elapsed:.0f}s",
        "- client: twine from the bench venv, one process per uploader, wall time from its "
        "start to its exit"
        + ("" if bench.quick else "; twine's own start-up here (`twine check` of a 1 KiB "
           f"wheel) is {twine_startup():.2f}s and is part of every upload figure"),
        f"- auth: {auth}",
        "- servers: nightproxy `serve` (1 worker, one hosted feed on a local folder); "
        "pypiserver `run` (its auto server, waitress; `--disable-fallback`); devpi-server "
        "(default options, no root/pypi)",
        "- peak RSS: the server's whole process tree, sampled from /proc every 10 ms while the "
        "twine processes ran",
        *[f"- {n}" for n in bench.notes],
        *([f"- before each measurement the run waited up to 5 s for the machine to go quiet "
           f"(under 15% busy): it did not before {bench.busy} of {bench.settles}"]
          if bench.settles else []),
        "",
        table,
        "",
    ]
    starts = [f"- {name} did not start: {why}" for name, why in bench.start_errors.items()]
    checks = [f"- check failed: {c}" for c in bench.res.check_failures]
    return "\n".join(lines + starts + checks) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--reps", type=int, default=None, help="repetitions (>= 3; 1 with --quick)")
    ap.add_argument("--tree", type=Path, default=None,
                    help="the nightproxy source tree to run (default: this checkout)")
    ap.add_argument("--prune-files", type=int, default=None,
                    help="files of the pruned feed (default 100,000; 1,000 with --quick)")
    ap.add_argument("--no-prune", action="store_true", help="the uploads only")
    ap.add_argument("--build-feed", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_feed:
        build_feed(args.build_feed, args.prune_files)
        return 0
    args.targets = [x.strip() for x in args.targets.split(",") if x.strip()]
    if bad := [x for x in args.targets if x not in ALL_TARGETS]:
        ap.error(f"unknown targets {bad}; choose from {ALL_TARGETS}")
    args.targets = [x for x in ALL_TARGETS if x in args.targets]
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 3 and not args.quick:
        ap.error("--reps must be at least 3 (every figure is a median of >= 3 runs)")
    if args.prune_files is None:
        args.prune_files = 1_000 if args.quick else 100_000
    if args.tree is not None:
        args.tree = args.tree.resolve()

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(tg.kill_all)
    t0 = time.perf_counter()
    bench = Bench(args)
    try:
        bench.setup()
        if args.quick:
            # a smoke run: nightproxy's prunes go while the peers start (devpi-server takes
            # half a minute on a busy machine); its figures are not for comparison anyway
            bench.prunes()
            bench.ready()
            bench.uploads()
        else:
            bench.ready()
            bench.uploads()
            bench.prunes()
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        for t in bench.targets:
            t.stop()
        tg.kill_all()
    text = report(bench, time.perf_counter() - t0, args.targets)
    print(text)
    if args.quick:
        out = WORK / "RESULTS-quick.md"
        out.write_text(text)
    else:
        out = BENCH / "RESULTS.md"
        old = out.read_text() if out.exists() else ""
        out.write_text(old.rstrip("\n") + "\n\n" + text)
    log(f"wrote {out}")
    # the servers' stored copies of the wheels are not needed once measured
    for t in make_targets(args.targets, None):
        for stored in ("feed", "packages", "server"):
            shutil.rmtree(t.work / stored, ignore_errors=True)
    if args.quick and (bench.missing() or bench.res.check_failures):
        for m in bench.missing():
            log(f"missing: {m}")
        for c in bench.res.check_failures:
            log(f"failed check: {c}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
