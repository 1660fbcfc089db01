"""``nightproxy check --probe``: contact every upstream once and say what it found.

A wrong URL otherwise fails silently: a feed configured without its ``/simple/`` answers 404
for every project, and the index merely looks empty. The probe reads each feed's project list
and one project page (a pinned project where there is one), and turns what it finds into a
verdict a person can act on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from packaging.utils import NormalizedName

from nightproxy.config import Config
from nightproxy.model import ProjectPage
from nightproxy.upstreams.base import NotFound, Upstream
from nightproxy.upstreams.http import UpstreamError

Verdict = Literal["ok", "warning", "failed"]
_ROOT_HINT = "(is the URL the index root, ending in /simple/ for a simple index?)"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    upstream: str
    kind: str
    verdict: Verdict
    #: What was found, in one line ("1,234 projects; numpy: 42 files").
    detail: str
    seconds: float


def _projects_to_try(config: Config, upstream: str) -> list[NormalizedName]:
    """Projects pinned to this upstream first: they must be there."""
    return sorted(name for name, p in config.projects.items() if upstream in p.upstreams)


async def _probe_one(upstream: Upstream, wanted: list[NormalizedName]) -> tuple[Verdict, str]:
    try:
        names = await upstream.fetch_project_list()
    except UpstreamError as exc:
        hint = f" {_ROOT_HINT}" if exc.status == 404 else ""
        return "failed", f"{exc.reason}{hint}"
    if names is not None and not names and not wanted:
        return "warning", f"the feed lists no projects {_ROOT_HINT}"
    listed = "cannot list its projects" if names is None else f"{len(names):,} projects"
    candidates = wanted or sorted(names or ())[:1]
    if not candidates:
        return "ok", f"reachable; {listed}"
    project = candidates[0]
    try:
        result = await upstream.fetch_project(project)
    except UpstreamError as exc:
        return "failed", f"{listed}; {project}: {exc.reason}"
    if isinstance(result, NotFound):
        hint = f" {_ROOT_HINT}" if names is None else ""
        return "warning", f"{listed}; {project}: not found{hint}"
    files = len(result.files) if isinstance(result, ProjectPage) else 0
    return "ok", f"{listed}; {project}: {files} files"


async def probe(
    config: Config, upstreams: Mapping[str, Upstream], *, timeout: float = 60.0
) -> list[ProbeResult]:
    """Probe every upstream at once, each within ``timeout`` seconds, in config order."""

    async def timed(name: str, upstream: Upstream) -> ProbeResult:
        started = time.monotonic()
        try:
            verdict, detail = await asyncio.wait_for(
                _probe_one(upstream, _projects_to_try(config, name)), timeout
            )
        except TimeoutError:
            verdict, detail = "failed", f"no answer in {timeout:.0f}s"
        return ProbeResult(name, upstream.config.kind, verdict, detail, time.monotonic() - started)

    return list(await asyncio.gather(*(timed(n, u) for n, u in upstreams.items())))


def worst(results: Iterable[ProbeResult]) -> Verdict:
    verdicts = {r.verdict for r in results}
    return "failed" if "failed" in verdicts else "warning" if "warning" in verdicts else "ok"
