"""Content negotiation for simple-API pages (PEP 691), and HTTP q-value lists."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Literal

from nightproxy.simple_api.parse import HTML_TYPE, JSON_TYPE

Format = Literal["json", "html"]

#: Media types we can produce, in our order of preference on a tie.
_OFFERS: tuple[tuple[str, Format], ...] = (
    (JSON_TYPE, "json"),
    (HTML_TYPE, "html"),
    ("text/html", "html"),
)
#: The ``Content-Type`` of the page answering each media type asked for: the one asked for.
CONTENT_TYPES: Mapping[str, str] = {
    JSON_TYPE: JSON_TYPE,
    HTML_TYPE: HTML_TYPE,
    "text/html": "text/html; charset=utf-8",
}

#: PEP 691's meta-version: whatever version the server thinks best, which is always v1 here
#: (the response still names the concrete v1 type, as the PEP requires).
_LATEST: Mapping[str, str] = {
    "application/vnd.pypi.simple.latest+json": JSON_TYPE,
    "application/vnd.pypi.simple.latest+html": HTML_TYPE,
}
#: ``?format=`` values, and the media type each asks for.
_FORMAT_ALIASES: Mapping[str, str] = {
    JSON_TYPE: JSON_TYPE,
    HTML_TYPE: HTML_TYPE,
    "application/vnd.pypi.simple.latest+json": JSON_TYPE,
    "application/vnd.pypi.simple.latest+html": HTML_TYPE,
    "text/html": "text/html",
    "json": JSON_TYPE,
    "html": "text/html",
}
#: The page format each media type is rendered in.
FORMATS: Mapping[str, Format] = {JSON_TYPE: "json", HTML_TYPE: "html", "text/html": "html"}


#: Which offer a wildcard at equal q gets: curl's and browsers' ``*/*`` gets HTML.
_WILDCARD_PREFERENCE: Mapping[str, int] = {"text/html": 2, JSON_TYPE: 1, HTML_TYPE: 0}


def weighted_list(header: str) -> list[tuple[str, float]]:
    """An HTTP list with q-values (Accept, Accept-Encoding) as lower-cased (token, q) pairs."""
    entries = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if not math.isfinite(q):
            q = 0.0
        entries.append((media.lower(), q))
    return entries


def _specificity(media_range: str, offer: str) -> int | None:
    """How specifically ``media_range`` names ``offer``: 2 exact, 1 ``type/*``, 0 ``*/*``."""
    if media_range == offer:
        return 2
    if media_range.endswith("/*") and offer.startswith(media_range[:-1]):
        return 1
    if media_range == "*/*":
        return 0
    return None


@lru_cache(maxsize=256)
def negotiate(accept: str | None, format_param: str | None = None) -> Format | None:
    """Pick the page format; None means nothing the client accepts (406). See ``media``."""
    chosen = media(accept, format_param)
    return None if chosen is None else FORMATS[chosen]


@lru_cache(maxsize=256)
def media(accept: str | None, format_param: str | None = None) -> str | None:
    """Pick the media type to answer with (a key of ``CONTENT_TYPES``); None means nothing
    the client accepts (406).

    ``?format=`` wins over ``Accept`` (as the public index does). No Accept header means HTML,
    the PEP 503 default. q-values are honoured with and without spaces. As RFC 9110 says, an
    offer's quality is that of the most specific range naming it, so ``json;q=0, */*`` never
    picks JSON. At equal q an exact media type beats a wildcard, and a bare ``*/*`` (curl,
    browsers, old tools) gets HTML. PEP 691's ``latest`` types count as the v1 ones. The
    answer is the type asked for: ``application/vnd.pypi.simple.v1+html`` is answered as
    such, not as ``text/html`` (PEP 691).
    """
    if format_param:
        # A "+" left unescaped in a query string arrives as a space.
        return _FORMAT_ALIASES.get(format_param.strip().lower().replace(" ", "+"))
    if not accept or not accept.strip():
        return "text/html"
    entries = [(_LATEST.get(media, media), q) for media, q in weighted_list(accept)]
    best: tuple[float, int, int, str] | None = None
    for rank, (offer, _fmt) in enumerate(_OFFERS):
        matches = [
            (spec, q) for media, q in entries if (spec := _specificity(media, offer)) is not None
        ]
        if not matches:
            continue
        top = max(spec for spec, _q in matches)
        q = max(q for spec, q in matches if spec == top)
        if q <= 0:
            continue
        exact = top == 2
        candidate = (q, int(exact), -rank if exact else _WILDCARD_PREFERENCE[offer], offer)
        if best is None or candidate[:3] > best[:3]:
            best = candidate
    return best[3] if best else None
