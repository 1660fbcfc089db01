"""Reading a file another replica is filling, from that replica, as its bytes arrive.

The fill lease names the holder's peer URL; ``GET <url>fills/<key>`` there streams the running
fill (its last byte held back until the holder verified the whole file, exactly as for its own
clients) or the finished copy on its disk. Peers prove they belong to the fleet with a token
derived from the store's secret key, which every replica has and nobody else should.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from nightproxy.upstreams.base import FILE_READ_BUFFER, Download, HttpDownload

PEER_HEADER = "X-Nightproxy-Peer"
PEER_PATH = "fills/"


def peer_token(secret: str) -> str:
    return hmac.new(secret.encode(), b"nightproxy peer v1", hashlib.sha256).hexdigest()


def token_matches(secret: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(peer_token(secret), presented)


class PeerUnavailableError(Exception):
    """The peer did not answer: it is gone (until its lease says otherwise)."""


class PeerLacksFileError(PeerUnavailableError):
    """The peer answered but has no such fill or file here (the worker process that answered
    is not the one filling, or the copy was evicted): worth asking again shortly."""


@asynccontextmanager
async def open_peer(
    session: aiohttp.ClientSession,
    base_url: str,
    key: str,
    *,
    token: str,
    connect_timeout: float,
    read_timeout: float,
) -> AsyncIterator[Download]:
    """Stream ``key`` from the peer at ``base_url``."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    try:
        response = await session.get(
            f"{base_url}{PEER_PATH}{key}",
            headers={PEER_HEADER: token, "Accept-Encoding": "identity"},
            timeout=timeout,
            allow_redirects=False,
            read_bufsize=FILE_READ_BUFFER,
        )
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise PeerUnavailableError(f"peer {base_url}: {type(exc).__name__}") from exc
    try:
        if response.status == 404:
            raise PeerLacksFileError(f"peer {base_url}: no such fill there")
        if response.status != 200:
            raise PeerUnavailableError(f"peer {base_url}: HTTP {response.status}")
        yield HttpDownload(response, "fleet peer")
    finally:
        response.release()
