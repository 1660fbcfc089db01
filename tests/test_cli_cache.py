"""What ``nightproxy cache stats | prune | export | import`` print for a person at a terminal.

A real proxy on loopback fills the cache from two fake feeds (one publishing sha256 and
metadata, one publishing neither); the commands then run as real subprocesses, piped or in a
pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from nightproxy.cache.store import CacheStore
from nightproxy.cli.common import human_size
from nightproxy.config import load_config, parse_size
from tests.conftest import JSON_TYPE, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex, FakeStaticTree
from tests.test_cli import clean_env
from tests.wheels import build_wheel, sha256_file

WAIT = 60.0  # upper bound for one command; never an assertion about speed
DAY = 86400.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Warm:
    config: Path
    cache_dir: Path
    #: filename -> (sha256, size) of the wheels, in download order
    wheels: dict[str, tuple[str, int]]
    #: every blob's size (the wheels and one METADATA file)
    total: int


async def fetch(http: aiohttp.ClientSession, url: URL) -> bytes:
    async with http.get(url) as resp:
        assert resp.status == 200, url
        return await resp.read()


@pytest.fixture
async def warm(
    http: aiohttp.ClientSession, start_fake: StartFake, start_proxy: StartProxy, tmp_path: Path
) -> Warm:
    """A stopped proxy's cache: demo's wheel and its METADATA from a feed with hashes, and
    torch's wheel from a static tree that publishes none."""
    hashed, tree = FakeSimpleIndex(), FakeStaticTree()
    demo = build_wheel(tmp_path / "w", "demo", "1.0", payload_size=40_000, seed=1)
    torch = build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261120", payload_size=60_000, seed=2)
    hashed.add_file("demo", demo)
    tree.add_file("torch", torch)
    await start_fake(hashed)
    await start_fake(tree)
    cache_dir = tmp_path / "cache"
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache:\n  dir: {cache_dir}\n  max_size: 20GiB\n"
        "retention:\n  dev_max_age: off\n"
        "upstreams:\n"
        f"  - {{name: hashed, kind: simple, url: '{simple_url(hashed)}'}}\n"
        f"  - {{name: tree, kind: simple, url: '{tree.url('/whl/nightly/')}'}}\n"
    )
    proxy = await start_proxy(load_config(config))
    metadata = b""
    for wheel in (demo, torch):
        project = wheel.name.split("-")[0]
        page = proxy.make_url(f"/simple/{project}/")
        async with http.get(page, headers={"Accept": JSON_TYPE}) as resp:
            assert resp.status == 200
            files = {f["filename"]: f for f in json.loads(await resp.read())["files"]}
        url = page.join(URL(files[wheel.name]["url"]))
        assert await fetch(http, url) == wheel.read_bytes()
        if wheel is demo:
            metadata = await fetch(http, url.with_name(url.name + ".metadata"))
    await proxy.close()
    wheels = {w.name: (sha256_file(w), w.stat().st_size) for w in (demo, torch)}
    return Warm(config, cache_dir, wheels, sum(s for _h, s in wheels.values()) + len(metadata))


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nightproxy", *map(str, args)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def in_terminal(*args: str | Path) -> tuple[int, str]:
    """Run the command with stdin, stdout and stderr on a pseudo-terminal; its exit status and
    everything it drew, escape sequences removed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightproxy", *map(str, args)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=clean_env(TERM="xterm", COLUMNS="120"),
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout=WAIT)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, ANSI.sub("", out.decode(errors="replace"))


def make_old(cache_dir: Path, sha: str, days: float) -> None:
    """Record that the blob ``sha`` was last used ``days`` ago, as the store itself would."""
    store = CacheStore(cache_dir, 2**63, float("inf"))
    store.open(clean_tmp=False)
    try:
        store.touch(sha, time.time() - days * DAY)
        store.flush()
    finally:
        store.close()


def blobs(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "blobs").rglob("*") if p.is_file()}


# -- sizes ----------------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**60))
def test_human_size_reads_back_within_five_percent(n: int) -> None:
    """``human_size`` is ``n`` to within 5%, below 1024 of its unit, and exact under 1 KiB;
    the config's own size parser reads it back."""
    text = human_size(n)
    number = float(text.split()[0])
    assert number < 1024 or text.endswith(" TiB")
    back = parse_size(text.replace(" ", ""), "size", Path("-"))
    assert abs(back - n) <= n * 0.05
    if n < 1024:
        assert text == f"{n} B"


def test_stats_text_shows_human_sizes_against_the_budget(warm: Warm) -> None:
    """The text form says how much of the budget is used in KiB/GiB and as a percentage, not
    in raw byte counts."""
    done = cli("cache", "stats", "--config", warm.config)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^ *size: \d+(\.\d)? KiB of 20 GiB \(<1%\)$", done.stdout, re.M), done.stdout
    assert str(warm.total) not in done.stdout


def test_stats_text_percentage_of_an_explicit_budget(warm: Warm, tmp_path: Path) -> None:
    """With a budget four times what is held, the text form says 25%."""
    config = tmp_path / "quarter.yaml"
    config.write_text(
        warm.config.read_text().replace("max_size: 20GiB", f"max_size: {4 * warm.total}B")
    )
    done = cli("cache", "stats", "--config", config)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^ *size: [\d.]+ KiB of [\d.]+ KiB \(25%\)$", done.stdout, re.M), done.stdout


def test_stats_json_keeps_raw_byte_counts(warm: Warm) -> None:
    """``--json`` is for programs: bytes and budget stay whole numbers of bytes."""
    done = cli("cache", "stats", "--json", "--config", warm.config)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["files"], data["bytes"], data["budget"]) == (3, warm.total, 20 * 2**30)


# -- prune ----------------------------------------------------------------------------------------


def test_prune_dry_run_lists_each_file_with_its_project_size_last_use_and_reason(
    warm: Warm,
) -> None:
    """A dry run names every file it would evict: filename, project, human size, last use and
    why (too old, or over the budget); nothing is deleted."""
    (demo, (_demo_sha, _)), (torch, (torch_sha, _)) = warm.wheels.items()
    make_old(warm.cache_dir, torch_sha, days=20)
    before = blobs(warm.cache_dir)
    done = cli(
        "cache", "prune", "--dry-run", "--max-age", "14d", "--max-size", "1B",
        "--config", warm.config,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[2:]}
    size = r"\d+(\.\d)? KiB"
    assert re.search(rf"^{re.escape(torch)} +torch +{size} +.*\(20 d ago\) +unused for 20 d "
                     r"\(max age 14d\)$", lines[torch]), lines  # fmt: skip
    assert re.search(rf"^{re.escape(demo)} +demo +{size} .* over budget \(1 B\)$", lines[demo])
    assert re.search(r" demo +\d+(\.\d)? (B|KiB) .* over budget", lines[demo + ".metadata"])
    assert done.stdout.startswith(f"would evict 3 files, {warm.total} bytes")
    assert blobs(warm.cache_dir) == before


def test_prune_says_only_how_many_went_unless_verbose(warm: Warm) -> None:
    """A real prune prints one count line; ``-v`` adds the same table as a dry run."""
    (demo, _), (_, (torch_sha, _)) = warm.wheels.items()
    make_old(warm.cache_dir, torch_sha, days=20)
    done = cli("cache", "prune", "--max-age", "14d", "--config", warm.config)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("evicted 1 files")
    assert torch_sha not in blobs(warm.cache_dir)
    done = cli("cache", "prune", "-v", "--max-size", "1B", "--config", warm.config)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].startswith("evicted 2 files")
    assert rows[1].split() == ["FILE", "PROJECT", "SIZE", "LAST", "USE", "WHY"]
    assert {row.split()[0] for row in rows[2:]} == {demo, demo + ".metadata"}
    assert blobs(warm.cache_dir) == set()


# -- export / import ------------------------------------------------------------------------------


def test_export_and_import_draw_progress_on_a_terminal(warm: Warm, tmp_path: Path) -> None:
    """In a pseudo-terminal, export and import draw a progress bar with the bytes copied; the
    summary line follows it."""
    archive = tmp_path / "c.tar"
    code, screen = in_terminal("cache", "export", archive, "--config", warm.config)
    assert code == 0, screen
    assert re.search(r"export .*\d+(\.\d)?/\d+(\.\d)? KiB", screen), screen
    assert "exported 3 files" in screen
    code, screen = in_terminal("cache", "import", archive, "--cache-dir", tmp_path / "new")
    assert code == 0, screen
    assert re.search(r"import .*\d+(\.\d)?/\d+(\.\d)? KiB", screen), screen
    assert "imported 3 files" in screen


def test_export_and_import_print_only_the_summary_when_piped(warm: Warm, tmp_path: Path) -> None:
    """Without a terminal (a CI log), no progress bar: stderr stays empty and stdout holds the
    summary lines only."""
    archive = tmp_path / "c.tar"
    done = cli("cache", "export", archive, "--config", warm.config)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert (
        done.stdout
        == f"exported 3 files, {warm.total} bytes ({human_size(warm.total)}) to {archive}\n"
    )
    done = cli("cache", "import", archive, "--cache-dir", tmp_path / "new", "--trust-aliases")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        f"imported 3 files, {warm.total} bytes ({human_size(warm.total)}) from {archive}"
    ]


def test_import_names_the_kinds_of_aliases_it_left_out(warm: Warm, tmp_path: Path) -> None:
    """Without ``--trust-aliases`` the import says it left out one alias of a file of a feed
    without sha256 and one alias of a wheel's metadata, each in its own words: the metadata
    line does not speak of feeds without sha256."""
    archive = tmp_path / "c.tar"
    assert cli("cache", "export", archive, "--config", warm.config).returncode == 0
    done = cli("cache", "import", archive, "--cache-dir", tmp_path / "new")
    assert done.returncode == 0, done.stderr
    (file_line,) = [line for line in done.stdout.splitlines() if "file aliases" in line]
    (meta_line,) = [line for line in done.stdout.splitlines() if "metadata aliases" in line]
    assert file_line.startswith("left out 1 file aliases")
    assert "without sha256" in file_line
    assert meta_line.startswith("left out 1 metadata aliases")
    assert "wheel" in meta_line
    assert "sha256" not in meta_line
