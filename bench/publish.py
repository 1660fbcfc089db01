"""Publishing benchmark: twine uploads to nightproxy's hosted feed, pypiserver and devpi-server.

    python bench/publish.py [--reps N] [--targets nightproxy,pypiserver,devpi] [--prune-files N]

Scenarios, each target in the same run, round-robin per repetition, medians reported:

- ``20 wheels``: one ``twine upload`` of 20 wheels of 1-4 MB;
- ``50 MB``: one ``twine upload`` of one 50 MB wheel;
- ``8 uploaders``: 8 ``twine upload`` processes at once, 5 wheels of 1-4 MB each.

Each figure: uploads per second and MB per second over the wall time of the twine commands
(twine's own start-up included, the same for every target), and the server's peak RSS over
the scenario (read from /proc every 20 ms).

Then a prune over a hosted feed of ``--prune-files`` files (100,000 by default): the time
``nightproxy feed prune`` takes, and the latency and errors of project pages fetched from the
running server meanwhile.

The harness uses the standard library only. pypiserver (with passlib), devpi-server,
devpi-client and twine live in ``bench/.work/publish-venv``; none is a project dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
VENV = WORK / "publish-venv"
PACKAGES = ["pypiserver", "passlib", "devpi-server", "devpi-client", "twine"]
TOKEN = "npf_publish-benchmark-token-0123456789"
USER, PASSWORD = "bench", "bench-password"
ALL_TARGETS = ("nightproxy", "pypiserver", "devpi")
MB = 1000 * 1000


def log(message: str) -> None:
    print(f"[publish] {message}", file=sys.stderr, flush=True)


def venv_bin(name: str) -> str:
    return str(VENV / "bin" / name)


def ensure_venv() -> None:
    marker = VENV / ".packages"
    if marker.exists() and marker.read_text() == " ".join(PACKAGES):
        return
    log(f"making {VENV} with {', '.join(PACKAGES)}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([venv_bin("pip"), "install", "-q", *PACKAGES], check=True)
    marker.write_text(" ".join(PACKAGES))


def log_file(path: Path) -> int:
    """A descriptor for a server's log (the child keeps its own copy; ours is left to exit)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


# -- wheels ----------------------------------------------------------------------------------


def build_wheel(dest: Path, name: str, version: str, size: int, seed: int) -> Path:
    """A real wheel with ``size`` bytes of incompressible payload."""
    dest.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    rng = random.Random(seed)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{dist}/__init__.py", f'__version__ = "{version}"\n')
        archive.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n"
        )
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        with archive.open(f"{dist}/payload.bin", "w", force_zip64=True) as member:
            left = size
            while left:
                chunk = rng.randbytes(min(left, 1 << 20))
                member.write(chunk)
                left -= len(chunk)
        archive.writestr(f"{info}/RECORD", "")
    return path


def wheel_set(root: Path, tag: str, count: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    return [
        build_wheel(root, f"pkg{n}", f"1.0.dev{seed}", rng.randint(1 * MB, 4 * MB), seed * 100 + n)
        for n in range(count)
    ]


# -- targets ---------------------------------------------------------------------------------


class Target:
    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def upload_url(self) -> str:
        raise NotImplementedError

    def credentials(self) -> tuple[str, str]:
        return USER, PASSWORD

    def start(self) -> None:
        raise NotImplementedError

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Nightproxy(Target):
    name = "nightproxy"

    def start(self) -> None:
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        config = self.root / "nightproxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "cache": {"dir": str(self.root / "cache")},
                    "logging": {"level": "WARNING"},
                    "upstreams": [
                        {
                            "name": "feed",
                            "kind": "hosted",
                            "path": str(self.root / "feed"),
                            "admins": [f"sha256:{digest}"],
                            "publishers": {"pkg0": {"tokens": [f"sha256:{digest}"]}},
                        }
                    ],
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nightproxy",
                "serve",
                "--config",
                str(config),
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file(self.root / "log"),
        )
        wait_http(f"http://127.0.0.1:{self.port}/healthz")

    @property
    def upload_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/feeds/feed/"

    def credentials(self) -> tuple[str, str]:
        return "__token__", TOKEN


class PypiServer(Target):
    name = "pypiserver"

    def start(self) -> None:
        packages = self.root / "packages"
        packages.mkdir(parents=True, exist_ok=True)
        htpasswd = self.root / "htpasswd"
        subprocess.run(
            [
                venv_bin("python"),
                "-c",
                "import sys; from passlib.apache import HtpasswdFile as H; "
                "h = H(sys.argv[1], new=True); h.set_password(sys.argv[2], sys.argv[3]); h.save()",
                str(htpasswd),
                USER,
                PASSWORD,
            ],
            check=True,
        )
        self.proc = subprocess.Popen(
            [
                venv_bin("pypi-server"),
                "run",
                "-p",
                str(self.port),
                "-i",
                "127.0.0.1",
                "-P",
                str(htpasswd),
                "-a",
                "update",
                "--log-stream",
                "none",
                str(packages),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file(self.root / "log"),
        )
        wait_http(f"http://127.0.0.1:{self.port}/health")

    @property
    def upload_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class Devpi(Target):
    name = "devpi"

    def start(self) -> None:
        server_dir = self.root / "devpi"
        subprocess.run(
            [
                venv_bin("devpi-init"),
                "--serverdir",
                str(server_dir),
                "--no-root-pypi",
                "--root-passwd",
                PASSWORD,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.proc = subprocess.Popen(
            [
                venv_bin("devpi-server"),
                "--serverdir",
                str(server_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file(self.root / "log"),
        )
        url = f"http://127.0.0.1:{self.port}"
        wait_http(url + "/+api")
        client = {**os.environ, "DEVPI_CLIENTDIR": str(self.root / "devpi-client")}
        for argv in (
            ["use", url],
            ["login", "root", "--password", PASSWORD],
            ["user", "-c", USER, f"password={PASSWORD}"],
            ["login", USER, "--password", PASSWORD],
            ["index", "-c", "dev", "volatile=True"],
        ):
            subprocess.run(
                [venv_bin("devpi"), *argv],
                check=True,
                env=client,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    @property
    def upload_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{USER}/dev/"


TARGETS = {cls.name: cls for cls in (Nightproxy, PypiServer, Devpi)}


# -- measuring -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    peak = [rss_kib(pid)]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def twine(target: Target, files: list[Path]) -> subprocess.Popen[bytes]:
    user, password = target.credentials()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINE_")}
    return subprocess.Popen(
        [
            venv_bin("twine"),
            "upload",
            "--non-interactive",
            "--disable-progress-bar",
            "--repository-url",
            target.upload_url,
            "-u",
            user,
            "-p",
            password,
            *map(str, files),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def upload(target: Target, batches: list[list[Path]]) -> tuple[float, int, int]:
    """(seconds, files, bytes) of one twine process per batch, all at once."""
    started = time.perf_counter()
    procs = [twine(target, batch) for batch in batches]
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(
                f"{target.name}: twine failed:\n{out.decode(errors='replace')[-2000:]}"
            )
    seconds = time.perf_counter() - started
    files = [f for batch in batches for f in batch]
    return seconds, len(files), sum(f.stat().st_size for f in files)


def scenario_batches(name: str, root: Path, rep: int) -> list[list[Path]]:
    seed = rep * 10 + {"20 wheels": 1, "50 MB": 2, "8 uploaders": 3}[name]
    if name == "20 wheels":
        return [wheel_set(root / f"s{seed}", "", 20, seed)]
    if name == "50 MB":
        return [[build_wheel(root / f"s{seed}", "pkg0", f"1.0.dev{seed}", 50 * MB, seed)]]
    return [wheel_set(root / f"s{seed}-{n}", "", 5, seed * 10 + n) for n in range(8)]


def run_publish(targets: list[str], reps: int, scratch: Path) -> dict[str, dict[str, list]]:
    wheels = scratch / "wheels"
    results: dict[str, dict[str, list]] = {}
    running: list[Target] = []
    try:
        for name in targets:
            target = TARGETS[name](scratch / name)
            target.root.mkdir(parents=True)
            log(f"starting {name}")
            target.start()
            running.append(target)
        for rep in range(reps):
            for scenario in ("20 wheels", "50 MB", "8 uploaders"):
                batches = scenario_batches(scenario, wheels, rep)
                order = running[rep % len(running) :] + running[: rep % len(running)]
                for target in order:
                    before = rss_kib(target.pid())
                    with peak_rss(target.pid()) as peak:
                        seconds, files, size = upload(target, batches)
                    row = results.setdefault(target.name, {}).setdefault(scenario, [])
                    row.append((seconds, files, size, peak[0], before))
                    log(
                        f"rep {rep} {scenario} {target.name}: {seconds:.2f} s, "
                        f"peak RSS {peak[0] / 1024:.0f} MiB"
                    )
    finally:
        for target in running:
            target.stop()
    return results


# -- prune -----------------------------------------------------------------------------------


def seed_feed(feed: Path, files: int) -> None:
    """A hosted feed of ``files`` files (50 projects x 4 platforms x dev builds over 100 days),
    written as nightproxy's local storage lays it out (blobs, links, records)."""
    sys.path.insert(0, str(REPO))
    from nightproxy.hosted.records import RecordDB

    blobs = feed / ".nightproxy" / "blobs"
    blobs.mkdir(parents=True)
    db = RecordDB(feed / ".nightproxy" / "feed.sqlite")
    platforms = [
        "cp312-cp312-manylinux_2_17_x86_64",
        "cp312-cp312-win_amd64",
        "cp312-cp312-macosx_11_0_arm64",
        "cp311-cp311-manylinux_2_17_x86_64",
    ]
    per_group = max(1, files // (50 * len(platforms)))
    now = time.time()
    rows = []
    for project in range(50):
        for platform in platforms:
            for build in range(per_group):
                filename = f"proj{project}-1.0.dev{build}-{platform}.whl"
                data = filename.encode()
                sha = hashlib.sha256(data).hexdigest()
                path = blobs / sha[:2] / sha
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(data)
                named = feed / f"proj{project}" / filename
                named.parent.mkdir(exist_ok=True)
                os.link(path, named)
                when = now - (per_group - build) * (100 * 86400 / per_group)
                rows.append(
                    (
                        f"proj{project}",
                        filename,
                        sha,
                        "0" * 64,
                        len(data),
                        when,
                        when,
                        "seed",
                        None,
                        None,
                    )
                )
    db.close()  # the schema is made; the rows go in one transaction
    with contextlib.closing(sqlite3.connect(feed / ".nightproxy" / "feed.sqlite")) as conn:
        conn.executemany(
            "INSERT INTO files (project, filename, sha256, blake2_256, size, upload_time, "
            "aged_from, uploader, metadata_sha256, requires_python) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.commit()


def run_prune(files: int, scratch: Path) -> dict[str, object]:
    root = scratch / "prune"
    feed = root / "feed"
    log(f"seeding a feed of {files} files")
    seed_feed(feed, files)
    config = root / "nightproxy.yaml"
    config.write_text(
        json.dumps(
            {
                "cache": {"dir": str(root / "cache")},
                "logging": {"level": "WARNING"},
                "upstreams": [
                    {
                        "name": "feed",
                        "kind": "hosted",
                        "path": str(feed),
                        "retention": {"dev_max_age": "30d", "keep_latest": 5, "trash": "7d"},
                        "admins": [f"sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}"],
                    }
                ],
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "nightproxy", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file(root / "log"),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=600)
        opened = time.perf_counter() - started
        base = f"http://127.0.0.1:{port}/simple/"
        latencies: list[float] = []
        errors = [0]
        stop = threading.Event()

        def fetch_pages(seconds_list: list[float]) -> None:
            n = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"{base}proj{n % 50}/", timeout=30) as r:
                        r.read()
                except OSError:
                    errors[0] += 1
                seconds_list.append(time.perf_counter() - t0)
                n += 1

        before: list[float] = []
        stop.clear()
        thread = threading.Thread(target=fetch_pages, args=(before,), daemon=True)
        thread.start()
        time.sleep(5)
        stop.set()
        thread.join()
        stop.clear()
        thread = threading.Thread(target=fetch_pages, args=(latencies,), daemon=True)
        thread.start()
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "nightproxy", "feed", "prune", "--config", str(config)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        prune_seconds = time.perf_counter() - t0
        time.sleep(2)  # the pages right after: the server reads the changed feed
        stop.set()
        thread.join()
        deleted = out.splitlines()[0]
        return {
            "files": files,
            "server_open_s": opened,
            "prune_s": prune_seconds,
            "deleted": deleted,
            "pages_before": len(before),
            "p50_before_ms": statistics.median(before) * 1000,
            "pages_during": len(latencies),
            "p50_during_ms": statistics.median(latencies) * 1000,
            "max_during_ms": max(latencies) * 1000,
            "errors": errors[0],
        }
    finally:
        server.terminate()
        server.wait(30)


# -- report ----------------------------------------------------------------------------------


def report(results: dict[str, dict[str, list]], prune: dict[str, object] | None) -> str:
    lines = [
        "| scenario | target | uploads/s | MB/s | peak RSS (MiB) | RSS growth (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in ("20 wheels", "50 MB", "8 uploaders"):
        for target, scenarios in results.items():
            runs = scenarios.get(scenario, [])
            if not runs:
                continue
            seconds = statistics.median(r[0] for r in runs)
            files, size = runs[0][1], runs[0][2]
            peak = max(r[3] for r in runs) / 1024
            growth = max(r[3] - r[4] for r in runs) / 1024
            lines.append(
                f"| {scenario} | {target} | {files / seconds:.1f} | "
                f"{size / MB / seconds:.1f} | {peak:.0f} | {growth:.0f} |"
            )
    if prune is not None:
        lines += ["", "| prune | value |", "|---|---|"]
        lines += [
            f"| {k} | {v if not isinstance(v, float) else f'{v:.2f}'} |" for k, v in prune.items()
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--targets", default=",".join(ALL_TARGETS))
    parser.add_argument("--prune-files", type=int, default=100_000)
    parser.add_argument("--no-prune", action="store_true")
    args = parser.parse_args()
    ensure_venv()
    WORK.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="publish-", dir=WORK))
    try:
        results = run_publish(args.targets.split(","), args.reps, scratch)
        prune = None if args.no_prune else run_prune(args.prune_files, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report(results, prune))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
