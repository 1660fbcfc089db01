"""HTTP plumbing shared by every upstream kind.

Redirects are followed by hand so that credentials and extra headers go only to the origin
(scheme, host, port) they were configured for: a presigned object-store or blob URL must never
see the feed's ``Authorization`` header. 429 answers are retried a bounded number of times,
and for pages within a time budget: a page is worth waiting for only as long as the client does.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from nightproxy.config import mask_path

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
MAX_RATE_LIMIT_RETRIES = 3
MAX_RETRY_AFTER = 30.0
#: Pages and listings are read whole, so a hostile upstream must not make us buffer gigabytes.
MAX_PAGE_BYTES = 64 * 1024 * 1024
#: Bytes asked of a page body per read.
_PAGE_READ = 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Origin = tuple[str, str, int]


class UpstreamError(Exception):
    """An upstream could not answer. The message never carries credentials or signed URLs.

    ``page``: what failed is the content of the one page asked for (malformed, unreadable),
    not the upstream: the circuit breaker does not count it against the whole upstream.
    ``local``: this server ran out of something (descriptors, memory) before the upstream
    was even asked: not the upstream's failure, and the client should try again.
    """

    def __init__(
        self,
        upstream: str,
        reason: str,
        *,
        status: int | None = None,
        page: bool = False,
        local: bool = False,
    ) -> None:
        super().__init__(f"upstream {upstream!r}: {reason}")
        self.upstream = upstream
        self.reason = reason
        self.status = status
        self.page = page
        self.local = local


SHORTAGE: Final = "this server is out of file descriptors or memory"
#: errnos that say this process or machine is short of resources, not that the peer failed.
SHORTAGE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def is_shortage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is this machine running out of descriptors or memory."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in SHORTAGE_ERRNOS:
            return True
        # aiohttp's connector errors keep the OSError as ``os_error`` as well as the cause.
        wrapped = getattr(current, "os_error", None)
        if isinstance(wrapped, OSError) and wrapped.errno in SHORTAGE_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, (parts.hostname or "").lower(), port)


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP Basic (RFC 7617).

    Built by hand rather than with ``aiohttp.BasicAuth``, which aiohttp 3.14 deprecates.
    Latin-1 like aiohttp did, UTF-8 for anything Latin-1 cannot hold.
    """
    if ":" in username:
        raise ValueError('a ":" is not allowed in a Basic auth username')
    raw = f"{username}:{password}"
    try:
        encoded = raw.encode("latin-1")
    except UnicodeEncodeError:
        encoded = raw.encode("utf-8")
    return "Basic " + base64.b64encode(encoded).decode("ascii")


def split_userinfo(url: str) -> tuple[str, str | None]:
    """Move ``user:password@`` out of a URL into a Basic ``Authorization`` value."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    auth = basic_authorization(unquote(parts.username or ""), unquote(parts.password or ""))
    return clean, auth


def proxy_authorization(
    proxy_auth: str | None, url: str
) -> tuple[dict[str, str], dict[str, str] | None]:
    """Where a proxy's ``Proxy-Authorization`` goes for a request to ``url``: (headers of the
    request itself, headers of its CONNECT tunnel or None).

    A plain-HTTP request goes to the proxy as it is; an HTTPS one through a CONNECT tunnel,
    whose own request is the only one the proxy reads headers from (the tunnelled request
    must not carry the proxy's password to the origin).
    """
    if proxy_auth is None:
        return {}, None
    if urlsplit(url).scheme == "https":
        return {}, {"Proxy-Authorization": proxy_auth}
    return {"Proxy-Authorization": proxy_auth}, None


def describe_url(url: str) -> str:
    """What may appear in logs and errors: scheme, host and path, never a query, user-info or
    a path token (``/t/<token>/``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, mask_path(parts.path), "", ""))


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one upstream may send, and to which origin only."""

    origins: frozenset[Origin]
    #: An ``Authorization`` header value (see ``basic_authorization``), or None.
    auth: str | None = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    #: The outbound HTTP proxy for every hop of this upstream (credentials moved into
    #: ``proxy_auth``); None leaves it to the environment (``HTTPS_PROXY``, ``NO_PROXY``).
    proxy: str | None = field(default=None, repr=False)
    proxy_auth: str | None = field(default=None, repr=False)

    @classmethod
    def for_upstream(
        cls,
        origins: frozenset[Origin],
        *,
        auth: str | None,
        headers: Mapping[str, str],
        proxy: str | None,
    ) -> Credentials:
        """The credentials of one upstream, with its ``proxy:`` URL split from its userinfo."""
        proxy_auth = None
        if proxy is not None:
            proxy, proxy_auth = split_userinfo(proxy)
        return cls(origins, auth, headers, proxy, proxy_auth)

    def covers(self, url: str) -> bool:
        return origin_of(url) in self.origins

    def for_url(self, url: str) -> tuple[str | None, Mapping[str, str]]:
        if self.covers(url):
            return self.auth, self.headers
        return None, {}


async def read_page_body(
    response: aiohttp.ClientResponse,
    upstream: str,
    what: str = "a page",
    *,
    limit: int | None = None,
) -> bytes:
    """A page's whole body, at most ``limit`` bytes (``MAX_PAGE_BYTES``); a cut or stalled
    body is UpstreamError."""
    if limit is None:
        limit = MAX_PAGE_BYTES
    if response.content_length is not None and response.content_length > limit:
        raise UpstreamError(upstream, f"{what} is too large")
    parts: list[bytes] = []
    size = 0
    try:
        # StreamReader.read(n) returns what has arrived so far: loop to the end of the body.
        while chunk := await response.content.read(_PAGE_READ):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise UpstreamError(upstream, f"{what} is too large")
    except TimeoutError as exc:
        raise UpstreamError(upstream, f"timed out reading {what}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(upstream, f"{type(exc).__name__} reading {what}") from exc
    return b"".join(parts)


def _retry_after(response: aiohttp.ClientResponse) -> float:
    value = response.headers.get("Retry-After", "1")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 1.0


@asynccontextmanager
async def request(
    session: aiohttp.ClientSession,
    upstream: str,
    method: str,
    url: str,
    *,
    credentials: Credentials,
    timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str] | None = None,
    follow_redirects: bool = True,
    encoded: bool = False,
    read_bufsize: int | None = None,
    signer: Callable[[str], Mapping[str, str]] | None = None,
    retry_budget: float | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Yield the final response of ``url`` after redirects and bounded 429 retries.

    ``headers`` go to every hop; ``signer`` (request signing such as SigV4) is asked for
    headers per hop, and only for the credentials' own origins, like ``Authorization``.

    ``retry_budget``: seconds that all 429 waits together may take. A 429 whose Retry-After
    does not fit in what is left fails at once (UpstreamError, status 429), so that a page
    request gives up while the client still waits and other upstreams or a stale copy can
    answer. None (file downloads) allows the full ``MAX_RATE_LIMIT_RETRIES`` waits.

    Transport failures and timeouts become ``UpstreamError``. Non-2xx final statuses are
    yielded as they are: the caller decides what a 404 or 304 means.
    """
    current = url
    hops = 0
    rate_limited = 0
    loop = asyncio.get_running_loop()
    deadline = None if retry_budget is None else loop.time() + retry_budget
    while True:
        try:
            auth, extra = credentials.for_url(current)
        except ValueError as exc:
            # A port that is not a number, from a page link or a redirect.
            raise UpstreamError(upstream, "unusable URL") from exc
        merged: CIMultiDict[str] = CIMultiDict(extra)
        if headers:
            merged.update(headers)
        if auth is not None and "Authorization" not in merged:
            merged["Authorization"] = auth
        if signer is not None and credentials.covers(current):
            merged.update(signer(current))
        to_proxy, tunnel_headers = proxy_authorization(credentials.proxy_auth, current)
        merged.update(to_proxy)
        try:
            response = await session.request(
                method,
                # Signed URLs must go out byte for byte as they were signed.
                URL(current, encoded=True) if encoded else current,
                headers=merged,
                timeout=timeout,
                allow_redirects=False,
                read_bufsize=read_bufsize,
                proxy=credentials.proxy,
                proxy_headers=tunnel_headers,
            )
        except TimeoutError as exc:
            raise UpstreamError(upstream, f"timed out on {describe_url(current)}") from exc
        except aiohttp.ClientError as exc:
            if is_shortage(exc):
                raise UpstreamError(upstream, SHORTAGE, local=True) from exc
            raise UpstreamError(
                upstream, f"{type(exc).__name__} on {describe_url(current)}"
            ) from exc
        except OSError as exc:
            if not is_shortage(exc):
                raise
            raise UpstreamError(upstream, SHORTAGE, local=True) from exc
        except ValueError as exc:
            # yarl refusing a URL we were asked to send as it is (``encoded``).
            raise UpstreamError(upstream, "unusable URL") from exc
        try:
            if (
                response.status in _REDIRECTS
                and follow_redirects
                and "Location" in response.headers
            ):
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise UpstreamError(upstream, "too many redirects", status=response.status)
                try:
                    target = urljoin(current, response.headers["Location"])
                    parts = urlsplit(target)
                    _port = parts.port  # raises for a port that is not a number
                except ValueError as exc:
                    raise UpstreamError(
                        upstream, "redirect to an unusable URL", status=response.status
                    ) from exc
                if parts.scheme not in {"http", "https"}:
                    raise UpstreamError(upstream, "redirect to a non-HTTP URL")
                if response.status == 303 and method not in {"GET", "HEAD"}:
                    method = "GET"
                current = target
                response.release()
                continue
            if response.status == 429 and rate_limited < MAX_RATE_LIMIT_RETRIES:
                rate_limited += 1
                delay = _retry_after(response)
                if deadline is not None and loop.time() + delay > deadline:
                    raise UpstreamError(
                        upstream,
                        f"rate-limited (HTTP 429, retry after {delay:.0f}s) on "
                        f"{describe_url(current)}",
                        status=429,
                    )
                log.warning(
                    "upstream %r rate-limited us on %s; retrying in %.1fs",
                    upstream,
                    describe_url(current),
                    delay,
                )
                response.release()
                await asyncio.sleep(delay)
                continue
            yield response
            return
        finally:
            response.release()
