"""``nightproxy check --probe``: every upstream contacted once, with a verdict a person can act
on. The CLI runs as a real subprocess against fake feeds on loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from tests.conftest import StartFake
from tests.fakes import FakeSimpleIndex
from tests.test_cli import clean_env
from tests.wheels import build_wheel


async def _probe(tmp_path: Path, upstreams: str) -> tuple[int, str]:
    config = tmp_path / "nightproxy.yaml"
    config.write_text(f"cache: {{dir: {tmp_path / 'cache'}}}\nupstreams:\n{upstreams}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nightproxy",
        "check",
        "--probe",
        "--config",
        str(config),
        env=clean_env(),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _feed(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"))
    started: FakeSimpleIndex = await start_fake(fake)
    return started


def _line(output: str, upstream: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(f"{upstream} ("))


async def test_probe_reports_a_working_feed(
    tmp_path: Path, start_fake: StartFake, wheelhouse: Path
) -> None:
    """A feed that lists its projects is OK, with its project count and a page's file count."""
    feed = await _feed(start_fake, wheelhouse)
    status, out = await _probe(
        tmp_path, f"  - {{name: good, kind: simple, url: '{feed.base_url}simple/'}}\n"
    )
    assert status == 0, out
    assert _line(out, "good").startswith("good (simple): OK: 1 projects; demo: 1 files")


async def test_probe_warns_about_a_url_without_simple(
    tmp_path: Path, start_fake: StartFake, wheelhouse: Path
) -> None:
    """A simple feed configured at its host's root, without ``/simple/``, is called out rather
    than passing silently."""
    feed = await _feed(start_fake, wheelhouse)
    status, out = await _probe(
        tmp_path, f"  - {{name: bare, kind: simple, url: '{feed.base_url}'}}\n"
    )
    line = _line(out, "bare")
    assert "OK" not in line.split(":")[1], out
    assert "/simple/" in line
    assert status in (0, 1)


async def test_probe_fails_on_an_unreachable_feed(tmp_path: Path) -> None:
    """A feed nobody answers for is FAILED and the command exits 1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, out = await _probe(
        tmp_path, f"  - {{name: gone, kind: simple, url: 'http://127.0.0.1:{port}/simple/'}}\n"
    )
    assert status == 1, out
    assert _line(out, "gone").startswith("gone (simple): FAILED:")


async def test_probe_checks_the_projects_pinned_to_a_feed(
    tmp_path: Path, start_fake: StartFake, wheelhouse: Path
) -> None:
    """A project pinned to a feed that the feed does not have is a warning naming it."""
    feed = await _feed(start_fake, wheelhouse)
    upstreams = (
        f"  - {{name: good, kind: simple, url: '{feed.base_url}simple/'}}\n"
        "projects:\n  missing-project: [good]\n"
    )
    status, out = await _probe(tmp_path, upstreams)
    assert status == 0, out
    assert "WARNING: 1 projects; missing-project: not found" in _line(out, "good")
