"""Byte-range reads of an upstream file, for reading a wheel's metadata without the wheel."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import aiohttp

from nightproxy.upstreams.base import RangeBody
from nightproxy.upstreams.http import Credentials, UpstreamError, describe_url, request

log = logging.getLogger(__name__)

#: Byte offsets fit in 20 decimal digits; anything longer is hostile, not a file.
_MAX_DIGITS = 20


def _number(text: str) -> int | None:
    # isdigit() alone accepts "²" and other non-ASCII digits that int() refuses.
    if not (0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit()):
        return None
    return int(text)


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """``bytes FIRST-LAST/TOTAL`` as ``(first, last, total)``; None for anything else.

    An unknown total (``/*``) is None too: a reader of a zip's end needs the file's size.
    """
    if value is None:
        return None
    unit, _, rest = value.strip().partition(" ")
    span, _, total_text = rest.strip().partition("/")
    first_text, _, last_text = span.partition("-")
    if unit.lower() != "bytes":
        return None
    first, last, total = _number(first_text), _number(last_text), _number(total_text)
    if first is None or last is None or total is None or not first <= last < total:
        return None
    return first, last, total


def _strong(etag: str | None) -> bool:
    return etag is not None and not etag.startswith("W/")


class HttpRangeReader:
    """Range reads of one file that all see the same bytes: the file the page listed.

    Later reads go straight to where the first one ended up after redirects (a presigned URL
    stays valid for minutes), carry ``If-Range`` with the first read's strong ETag, and must
    report the same total size, ETag and Last-Modified. The first read must match the size
    (and ETag, where the listing gave one) the page listed. A file replaced since it was
    listed, or between two reads, makes the reader answer None, never bytes of another file.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: str,
        url: str,
        *,
        credentials: Credentials,
        timeout: aiohttp.ClientTimeout,
        signer: Callable[[str], Mapping[str, str]] | None = None,
        encoded: bool = False,
        expected_size: int | None = None,
        expected_etag: str | None = None,
    ) -> None:
        self._session = session
        self._upstream = upstream
        self._url = url
        self._credentials = credentials
        self._timeout = timeout
        self._signer = signer
        self._encoded = encoded
        self._total = expected_size
        self._etag = expected_etag
        self._last_modified: str | None = None
        self._reads = 0

    async def __call__(self, start: int | None, length: int) -> RangeBody | None:
        spec = f"bytes=-{length}" if start is None else f"bytes={start}-{start + length - 1}"
        headers = {"Range": spec, "Accept-Encoding": "identity"}
        if _strong(self._etag):
            assert self._etag is not None
            headers["If-Range"] = self._etag
        async with request(
            self._session,
            self._upstream,
            "GET",
            self._url,
            credentials=self._credentials,
            timeout=self._timeout,
            headers=headers,
            encoded=self._encoded,
            signer=self._signer,
        ) as response:
            where = describe_url(str(response.url))
            if response.status != 206:
                # 200 (ranges ignored, or If-Range failed: the body is left unread and the
                # connection dropped), 405, 416, or an error the full download will report.
                log.debug("no range read from %s: HTTP %d", where, response.status)
                return None
            parsed = parse_content_range(response.headers.get("Content-Range"))
            if parsed is None:
                return None
            first, last, total = parsed
            expected = max(total - length, 0) if start is None else start
            if first != expected or last != min(expected + length, total) - 1:
                return None
            etag = response.headers.get("ETag")
            modified = response.headers.get("Last-Modified")
            if (
                (self._total is not None and total != self._total)
                or (self._etag is not None and etag != self._etag)
                or (self._reads and modified != self._last_modified)
            ):
                log.info("%s is not the file that was listed, or changed between reads", where)
                return None
            want = last - first + 1
            if response.content_length is not None and response.content_length != want:
                return None
            parts: list[bytes] = []
            got = 0
            try:
                # One byte more than asked for tells a server that sent too much.
                while got <= want and (part := await response.content.read(want + 1 - got)):
                    parts.append(part)
                    got += len(part)
            except TimeoutError as exc:
                raise UpstreamError(self._upstream, "timed out reading a byte range") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(
                    self._upstream, f"{type(exc).__name__} reading a byte range"
                ) from exc
            if got != want:
                return None
            self._reads += 1
            self._total = total
            self._etag = etag
            self._last_modified = modified
            # Redirects are done: the next reads skip them (the URL keeps its exact bytes).
            self._url = str(response.url)
            self._encoded = True
            return RangeBody(start=first, data=b"".join(parts), total=total)
