"""Several worker processes on one port (``serve --workers N``), as real processes.

The fake upstream runs in the test's event loop; ``nightproxy serve`` runs as a subprocess
whose workers are its children, found through ``/proc``. Requests go over fresh connections
(``force_close``) so that they spread over the workers: the kernel hands each new connection
to whichever worker accepts it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from nightproxy.index.health import BREAKER_THRESHOLD
from nightproxy.server.workers import METRICS_DIR
from tests.conftest import PIP_ACCEPT, StartFake, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import free_port, nightproxy_serve
from tests.wheels import build_wheel, sha256_file

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


async def wait_for(predicate: object, what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


def write_config(tmp_path: Path, fake: FakeSimpleIndex) -> Path:
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"upstreams:\n  - name: main\n    kind: simple\n    url: {simple_url(fake)}\n"
    )
    return config


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, fake: FakeSimpleIndex, workers: int, **options: Any
) -> AsyncIterator[tuple[asyncio.subprocess.Process, URL]]:
    """``serve --workers N`` over ``fake``, once all N workers run: (the parent, its URL)."""
    port = free_port()
    args = ["--config", str(write_config(tmp_path, fake)), "--workers", str(workers)]
    async with nightproxy_serve(args, port, **options) as proc:
        await all_started(proc.pid, workers, tmp_path / "cache")
        yield proc, URL(f"http://127.0.0.1:{port}/")


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a new connection per request."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def file_url(http: aiohttp.ClientSession, base: URL, project: str) -> URL:
    page = base.join(URL(f"/simple/{project}/"))
    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200
        doc = json.loads(await resp.read())
    return page.join(URL(doc["files"][0]["url"]))


async def fetch(http: aiohttp.ClientSession, url: URL) -> tuple[int, str, str]:
    async with http.get(url) as resp:
        body = await resp.read()
        return resp.status, resp.headers.get("X-Nightproxy-Cache", "-"), sha(body)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.mark.parametrize("workers", [2, 4])
async def test_workers_serve_pages_and_files(
    one_wheel: FakeSimpleIndex, fresh: aiohttp.ClientSession, tmp_path: Path, workers: int
) -> None:
    """With 2 and 4 workers, the index, project pages and the file are answered on every new
    connection, with the right bytes."""
    (entry,) = one_wheel.projects["demo"].files.values()
    async with serving(tmp_path, one_wheel, workers) as (_proc, base):
        url = await file_url(fresh, base, "demo")
        for _ in range(4 * workers):
            async with fresh.get(base.join(URL("/simple/"))) as resp:
                assert resp.status == 200
            status, _cache, digest = await fetch(fresh, url)
            assert (status, digest) == (200, entry.sha256)


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] in {"T", "t"}


async def all_started(parent: int, count: int, cache: Path) -> None:
    """Until ``count`` workers run and each is past its start-up (it shares its metrics from
    then on): a test that stops some with SIGSTOP must not stop one half started, which may
    hold a lock the others wait for."""

    def started() -> bool:
        pids = children(parent)
        return len(pids) == count and all(
            (cache / METRICS_DIR / f"worker-{pid}.json").exists() for pid in pids
        )

    await wait_for(started, f"{count} workers started")


@contextlib.contextmanager
def only(workers: set[int], running: int) -> Iterator[None]:
    """Every worker but ``running`` stopped (SIGSTOP), so that it takes the new connections.

    Entered once the others are really stopped: a worker busy on another core when the signal
    is sent could still accept a connection or two meant for ``running``.
    """
    stopped = workers - {running}
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + WAIT
    while not all(_stopped(pid) for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def sockets_of(pid: int) -> int:
    """How many sockets the process has open."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


@pytest.mark.parametrize("workers", [2, 4])
async def test_a_file_cached_by_one_worker_is_a_hit_on_every_worker(
    one_wheel: FakeSimpleIndex, fresh: aiohttp.ClientSession, tmp_path: Path, workers: int
) -> None:
    """Once one worker has cached a file, each worker (made the only one running in turn)
    answers it as a hit: the upstream is asked once."""
    (entry,) = one_wheel.projects["demo"].files.values()
    async with serving(tmp_path, one_wheel, workers) as (proc, base):
        pids = children(proc.pid)
        url = await file_url(fresh, base, "demo")
        assert await fetch(fresh, url) == (200, "miss", entry.sha256)
        for pid in pids:
            with only(pids, pid):
                assert await fetch(fresh, url) == (200, "hit", entry.sha256)
    assert one_wheel.count("GET", "/files/") == 1


async def test_a_killed_worker_is_started_again_and_the_server_keeps_answering(
    one_wheel: FakeSimpleIndex, fresh: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """SIGKILL to one worker: every request still gets its answer (the other worker takes
    the new connections), and the parent starts a new worker in its place."""
    async with serving(tmp_path, one_wheel, 2) as (proc, base):
        before = children(proc.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        for _ in range(20):
            async with fresh.get(base.join(URL("/simple/demo/"))) as resp:
                assert resp.status == 200
        now: set[int] = set()

        def replaced() -> bool:
            nonlocal now
            now = children(proc.pid)
            return len(now) == 2 and victim not in now

        await wait_for(replaced, "a new worker in place of the killed one")
        assert now - before
        url = await file_url(fresh, base, "demo")
        assert (await fetch(fresh, url))[0] == 200


async def test_sigterm_drains_every_worker_and_the_parent_logs_it(
    slow_fake: FakeSimpleIndex, fresh: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """SIGTERM to the parent while a download is held upstream: the client still gets the
    whole file, every process exits, the parent exits 0 and says it stopped."""
    fake = slow_fake
    (entry,) = fake.projects["demo"].files.values()
    options = {"stderr": asyncio.subprocess.PIPE, "sigterm": False}
    async with serving(tmp_path, fake, 2, **options) as (proc, base):
        workers = children(proc.pid)
        url = await file_url(fresh, base, "demo")
        async with fresh.get(url) as resp:
            assert resp.status == 200
            first = await resp.content.readany()
            assert first
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)  # the workers are draining: the download must go on
            fake.slow.release.set()
            body = first + await asyncio.wait_for(resp.read(), WAIT)
        async with asyncio.timeout(3 * WAIT):
            _out, err = await proc.communicate()
    stderr = err.decode(errors="replace")
    assert sha(body) == sha256_file(entry.path)
    assert proc.returncode == 0, stderr
    assert "SIGTERM: stopping 2 workers" in stderr
    assert "nightproxy.server.workers: stopped" in stderr
    assert "Traceback" not in stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


async def test_workers_stop_when_the_parent_is_killed(
    one_wheel: FakeSimpleIndex, tmp_path: Path
) -> None:
    """SIGKILL to the parent leaves no worker behind: each notices and stops by itself."""
    async with serving(tmp_path, one_wheel, 2, sigterm=False) as (proc, _base):
        workers = children(proc.pid)
        proc.kill()
        await proc.wait()
        await wait_for(
            lambda: not any(Path(f"/proc/{pid}/stat").exists() for pid in workers),
            "the workers gone",
        )


async def test_metrics_and_status_page_add_up_across_workers(
    one_wheel: FakeSimpleIndex, fresh: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Requests spread over the workers sum to what was sent, whichever worker answers
    ``/metrics`` or the status page (other workers' figures are up to a second behind)."""
    pages = 30
    async with serving(tmp_path, one_wheel, 2) as (_proc, base):
        url = await file_url(fresh, base, "demo")  # one page request
        for _ in range(pages - 1):
            async with fresh.get(base.join(URL("/simple/demo/"))) as resp:
                assert resp.status == 200
        for _ in range(4):
            assert (await fetch(fresh, url))[0] == 200
        text = ""

        async def scrape() -> str:
            async with fresh.get(base.join(URL("/metrics"))) as resp:
                return await resp.text()

        async with asyncio.timeout(WAIT):
            while metric(text, "nightproxy_requests_total", route="/simple/{project}/") < pages:
                text = await scrape()
                await asyncio.sleep(0.1)
        for _ in range(10):
            text = await scrape()
            assert metric(text, "nightproxy_requests_total", route="/simple/{project}/") == pages
            hits = metric(text, "nightproxy_cache_requests_total", result="hit")
            assert hits + metric(text, "nightproxy_cache_requests_total", result="miss") == 4
            async with fresh.get(base) as resp:
                assert f"<td>{hits / 4:.1%}</td>" in await resp.text()


async def test_readiness_is_the_whole_servers_whichever_worker_answers(
    start_fake: StartFake, fresh: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Two workers, an empty cache, and an upstream that fails the requests of one worker's
    connection: every worker then answers /readyz 503, not only the one that saw it fail
    (a balancer asking whichever worker accepts must not see readiness flap)."""
    fake = await start_fake(FakeSimpleIndex())
    fake.down = True
    async with serving(tmp_path, fake, 2) as (_proc, base):
        async with aiohttp.ClientSession() as one:  # one kept-alive connection: one worker
            for _ in range(BREAKER_THRESHOLD):
                async with one.get(base.join(URL("/simple/demo/"))) as resp:
                    # Read to the end, or an older aiohttp client drops the connection (and
                    # the next request may reach the other worker).
                    await resp.read()
                    assert resp.status == 502
            async with one.get(base.join(URL("/readyz"))) as resp:
                assert resp.status == 503
        in_a_row = 0
        async with asyncio.timeout(WAIT):
            while in_a_row < 12:
                async with fresh.get(base.join(URL("/readyz"))) as resp:
                    in_a_row = in_a_row + 1 if resp.status == 503 else 0
                    body = await resp.json()
                await asyncio.sleep(0.05)
        assert body["upstreams"]["main"]["state"] == "down"


async def test_one_cold_file_asked_by_32_clients_over_the_workers_is_fetched_once(
    start_fake: StartFake, tmp_path: Path
) -> None:
    """32 clients ask for one cold file, half of them accepted by each of 2 workers (the
    other one stopped meanwhile): the upstream sends it once, and every client gets the
    right bytes."""
    fake = FakeSimpleIndex()
    wheel = build_wheel(tmp_path / "wheels", "demo", "1.0", payload_size=1024 * 1024)
    fake.add_file("demo", wheel)
    fake.slow_file.add(wheel.name)
    fake.slow.chunk_size = 64 * 1024
    fake.slow.delay = 0.01
    # Held after its first chunk until every client is in: a client that finished early
    # would close its socket and the count of accepted ones below would never be reached.
    fake.slow.hold = True
    await start_fake(fake)
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with (
        serving(tmp_path, fake, 2) as (proc, base),
        aiohttp.ClientSession(connector=connector) as http,
    ):
        first, second = sorted(children(proc.pid))
        url = await file_url(http, base, "demo")
        clients: list[asyncio.Task[tuple[int, str, str]]] = []
        try:
            for pid in (first, second):
                with only({first, second}, pid):
                    before = sockets_of(pid)
                    clients += [asyncio.create_task(fetch(http, url)) for _ in range(16)]
                    await wait_for(lambda p=pid, b=before: sockets_of(p) >= b + 16, "accepted")
            fake.slow.release.set()
            answers = await asyncio.wait_for(asyncio.gather(*clients), 3 * WAIT)
        finally:
            for client in clients:
                client.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    assert {(status, digest) for status, _cache, digest in answers} == {(200, sha256_file(wheel))}
    assert fake.count("GET", "/files/") == 1
