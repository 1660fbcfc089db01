"""Error answers whose status line says why.

pip and uv print only the status line of a failed request (``502 Bad Gateway for url ...``),
so a bare 502 tells a CI log nothing. The reason phrase carries a short, single-line summary
(``502 no upstream could serve numpy (feed: timed out)``); the body keeps the whole detail.
"""

from __future__ import annotations

from aiohttp import web

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
