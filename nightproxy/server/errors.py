"""Error answers whose status line says why.

pip and uv print only the status line of a failed request (``502 Bad Gateway for url ...``),
so a bare 502 tells a CI log nothing. The reason phrase carries a short, single-line summary
(``502 no upstream could serve numpy (feed: timed out)``); the body keeps the whole detail.
"""

from __future__ import annotations

from aiohttp import web

from nightproxy.index.service import AllUpstreamsFailedError
from nightproxy.upstreams.http import is_shortage

#: Seconds a client is asked to wait when the server is short of descriptors or memory.
RETRY_AFTER = "1"
#: Long enough for a project and one upstream's reason, short enough for one log line.
REASON_MAX = 120


def reason_phrase(summary: str) -> str:
    """``summary`` as a safe reason phrase: printable ASCII on one line, cut short."""
    text = "".join(ch if 32 <= ord(ch) < 127 else " " for ch in summary)
    text = " ".join(text.split())
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3].rstrip() + "..."


def bad_gateway(detail: str, *, summary: str | None = None) -> web.HTTPBadGateway:
    """A 502 with ``detail`` as its plain-text body and ``summary`` (default: the detail's
    first line) in its status line."""
    first = summary if summary is not None else detail.strip().splitlines()[0] if detail else ""
    return web.HTTPBadGateway(reason=reason_phrase(first) or None, text=detail.rstrip("\n") + "\n")


def try_again(detail: str) -> web.HTTPServiceUnavailable:
    """A 503 with ``Retry-After``: this server is short of descriptors or memory, which says
    nothing about the file or its upstreams (never a 404 or a 5xx that a client caches)."""
    return web.HTTPServiceUnavailable(
        reason="server short of resources, try again",
        text=f"the server is short of resources ({detail}); try again\n",
        headers={"Retry-After": RETRY_AFTER},
    )


def upstreams_failed(exc: AllUpstreamsFailedError) -> web.HTTPException:
    """What a client gets when no upstream could answer: 502, or 503 if this server could
    not even ask one."""
    if exc.local:
        return try_again(exc.summary)
    return bad_gateway(str(exc), summary=exc.summary)


def download_failed(exc: Exception) -> web.HTTPException:
    """A download that failed before its first byte: 502, or 503 for a local shortage."""
    if is_shortage(exc):
        return try_again("out of file descriptors or memory")
    return bad_gateway(f"upstream download failed: {exc}")
