"""HTTPS at nightproxy itself, with certificates that rotate without a restart.

The listening sockets keep one ``SSLContext`` for their whole life. A reload builds a new,
complete context from the files (off the event loop) and makes it current; the listening
context's SNI callback hands each new connection the current one while its handshake begins
(OpenSSL calls it for every ClientHello, with or without a server name). So a new connection
gets the new certificate, a connection already open keeps the one it shook hands with, and a
half-written pair of files (a certificate whose key is not there yet) is refused and the old
certificate served on until the next try succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

from nightproxy.config import Config, ConfigError

log = logging.getLogger(__name__)

#: How often the certificate and key files are checked for a change.
POLL_INTERVAL = 5.0

_Stamp = tuple[tuple[int, int, int, int], ...]


class TlsError(Exception):
    """The certificate or key cannot be loaded: the reason, without a traceback."""


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsError(f"{exc.filename or cert}: no such file") from None
    except ssl.SSLError as exc:
        # A key that is not the certificate's, or a file that is not PEM.
        raise TlsError(f"cannot use {cert} with {key}: {exc.reason or exc}") from None
    except OSError as exc:
        raise TlsError(f"cannot read {exc.filename or cert}: {exc.strerror or exc}") from None
    return context


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    """What changes when a file is rewritten or replaced (renamed over, re-linked)."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0, 0))
            continue
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
    return tuple(stamps)


class TlsCertificates:
    """The server's certificate and key, reloaded on request (SIGHUP) or when the files change."""

    def __init__(self, cert: Path, key: Path, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.cert = cert
        self.key = key
        self.poll_interval = poll_interval
        self._stamp = _stamp((cert, key))
        #: The context listening sockets are made with; fixed for their life.
        self.server_context = _context(cert, key)
        self.server_context.sni_callback = self._pick
        self._current = self.server_context
        #: Successful reloads since start (for tests and logs).
        self.reloads = 0
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[bool]] = set()

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        current = self._current
        if conn.context is not current:
            conn.context = current

    async def reload(self, *, why: str) -> bool:
        """Load the files again and serve new connections with them; False (and the old
        certificate kept) if they cannot be used."""
        async with self._lock:
            stamp = await asyncio.to_thread(_stamp, (self.cert, self.key))
            try:
                context = await asyncio.to_thread(_context, self.cert, self.key)
            except TlsError as exc:
                log.warning(
                    "TLS certificate not reloaded (%s): %s; serving the previous one", why, exc
                )
                return False
            self._current = context
            self._stamp = stamp
            self.reloads += 1
            log.info("TLS certificate reloaded from %s (%s)", self.cert, why)
            return True

    def request_reload(self) -> None:
        """For a signal handler: reload soon, on the loop."""
        task = asyncio.get_running_loop().create_task(self.reload(why="SIGHUP"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def watch(self) -> None:
        """Reload whenever the files change, until cancelled."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                stamp = await asyncio.to_thread(_stamp, (self.cert, self.key))
                if stamp != self._stamp:
                    # Tried once per change: a failed pair is retried when a file changes again.
                    self._stamp = stamp
                    await self.reload(why="the files changed")
            except Exception:
                log.exception("checking the TLS certificate files failed")


def load_tls(config: Config) -> TlsCertificates | None:
    """``server.tls`` loaded, None without it; a file that cannot be used is a config error."""
    tls = config.server.tls
    if tls is None:
        return None
    try:
        return TlsCertificates(tls.cert, tls.key)
    except TlsError as exc:
        raise ConfigError(config.source, "server.tls", str(exc)) from None
