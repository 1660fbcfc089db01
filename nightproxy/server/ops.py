"""Operations endpoints: liveness, readiness, metrics, and the status page for people."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from html import escape

from aiohttp import web

from nightproxy import __version__
from nightproxy.config import mask_url
from nightproxy.index.health import UpstreamHealth
from nightproxy.server import keys
from nightproxy.server.feeds_status import FEEDS_STYLE, feeds_html
from nightproxy.server.fleet import shared_status, shared_status_rows
from nightproxy.server.metrics import CONTENT_TYPE


def setup_ops_routes(app: web.Application) -> None:
    app.router.add_get("/", status_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def _upstream_json(health: UpstreamHealth) -> dict[str, object]:
    return {
        "state": health.state,
        "last_success": _iso(health.last_success),
        "last_error": health.last_error,
        "last_error_at": _iso(health.last_error_at),
        "warning": health.warning,
    }


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 while at least one upstream or the cache can serve, else 503."""
    app = request.app
    store = app[keys.STORE]
    # Permissions alone do not show a full disk: a write that failed lately does.
    writable = not store.write_failing() and await asyncio.to_thread(
        os.access, store.tmp_dir, os.W_OK
    )
    # The whole server's view, not only this worker's: a balancer asks whichever worker
    # accepts, and must not see readiness flap with it.
    health = await app[keys.METRICS].server_health()
    upstreams = {name: _upstream_json(h) for name, h in health.items()}
    # A down upstream is probed in the background (the index's readiness probe), and counts
    # as able to serve again only once it has answered: an unready pod gets no traffic, so
    # readiness cannot wait for a client's request to succeed, nor guess from the breaker.
    serving_upstream = any(not h.unavailable for h in health.values())
    cache_can_serve = store.file_count > 0
    # Without a writable cache, upstreams can still serve pages and streamed files, but a
    # proxy that cannot keep what it fetches is not ready for a fleet of CI jobs.
    ready = (serving_upstream and writable) or cache_can_serve
    body = {
        "status": "ready" if ready else "unavailable",
        "version": __version__,
        "config": str(app[keys.CONFIG].source),
        "cache": {
            "dir": str(store.root),
            "writable": writable,
            "files": store.file_count,
            "bytes": store.used_bytes,
            "budget": store.max_size,
        },
        "upstreams": upstreams,
    }
    shared = shared_status(app)
    if shared is not None:
        # A failing shared store degrades the replica but does not stop it: it serves from
        # its disk and the upstreams meanwhile.
        body["shared"] = shared
        tier = app[keys.SHARED]
        if ready and tier is not None and not tier.health.ok:
            body["status"] = "degraded"
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[keys.METRICS].render_whole()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _age(when: datetime | None, now: float) -> str:
    if when is None:
        return "unknown"
    seconds = max(0.0, now - when.timestamp())
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


async def status_page(request: web.Request) -> web.Response:
    """Plain server-rendered HTML: readable without CSS or JavaScript."""
    app = request.app
    config = app[keys.CONFIG]
    store = app[keys.STORE]
    index = app[keys.INDEX]
    whole = await app[keys.METRICS].whole_server()
    now = time.time()
    ratio = whole.hit_ratio
    rows_up = []
    for upstream in config.upstreams:
        health = whole.health.get(upstream.name) or index.health[upstream.name]
        where = mask_url(upstream.url) if upstream.url else str(upstream.path)
        rows_up.append(
            f"<tr><td>{escape(upstream.name)}</td><td>{escape(upstream.kind)}</td>"
            f"<td>{escape(where)}</td><td class='state-{health.state}'>{health.state}</td>"
            f"<td>{escape(_iso(health.last_success) or '-')}</td>"
            f"<td>{escape(health.last_error or '-')}</td></tr>"
        )
    warnings = "".join(
        f"<p class='warning'>Upstream {escape(name)}: {escape(health.warning)}</p>\n"
        for name, health in index.health.items()
        if health.warning
    )
    rows_proj = [
        f"<tr><td>{escape(project)}</td><td>{escape(upstream)}</td><td>{escape(version)}</td>"
        f"<td>{escape(_age(uploaded, now))}</td></tr>"
        for project, upstream, version, uploaded in index.newest_builds()
    ]
    if not rows_proj:
        rows_proj.append("<tr><td colspan='4'>No project has been requested yet.</td></tr>")
    used = store.used_bytes
    budget = store.max_size
    hosted = await feeds_html(app[keys.FEEDS])
    html = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>nightproxy status</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #999; padding: 0.3em 0.8em; text-align: left; }}
.warning {{ color: #960; }}
.state-ok {{ color: #060; }} .state-stale {{ color: #960; }} .state-down {{ color: #a00; }}
{FEEDS_STYLE}
</style>
</head>
<body>
<h1>nightproxy {escape(__version__)}</h1>
<p>Index: <a href="/simple/">/simple/</a> &middot; <a href="/metrics">metrics</a>
&middot; <a href="/readyz">readiness</a></p>
<h2>Upstreams</h2>
{warnings}<table id="upstreams">
<thead><tr><th>Name</th><th>Kind</th><th>Feed</th><th>State</th><th>Last success</th>
<th>Last error</th></tr></thead>
<tbody>
{"".join(rows_up)}
</tbody>
</table>
<h2>Cache</h2>
<table id="cache">
<tbody>
<tr><th>Size</th><td>{_size(used)} of {_size(budget)} ({used / budget:.1%})</td></tr>
<tr><th>Files</th><td>{store.file_count}</td></tr>
<tr><th>Hit ratio</th><td>{"-" if ratio is None else f"{ratio:.1%}"}</td></tr>
<tr><th>Downloads in flight</th><td>{whole.in_flight:.0f}</td></tr>
{shared_status_rows(app)}
</tbody>
</table>
<h2>Newest builds</h2>
<table id="projects">
<thead><tr><th>Project</th><th>Upstream</th><th>Newest version</th><th>Age</th></tr></thead>
<tbody>
{"".join(rows_proj)}
</tbody>
</table>
{hosted}
</body>
</html>
"""
    return web.Response(text=html, content_type="text/html", charset="utf-8")
