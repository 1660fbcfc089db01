"""HTTPS with certificates rotated under a running server: new connections get the new
certificate, open ones keep theirs, and a bad pair of files never replaces a good one."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from nightproxy.server.tls import TlsCertificates, TlsError
from tests.oidc_issuer import LocalCA, https_config
from tests.support import WAIT, free_port, nightproxy_serve


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


class Served:
    def __init__(self, ca: LocalCA, tmp_path: Path) -> None:
        self.ca = ca
        self.cert = tmp_path / "server.crt"
        self.key = tmp_path / "server.key"
        self.first = ca.leaf
        ca.write_leaf(self.first, self.cert, self.key)
        self.tls = TlsCertificates(self.cert, self.key, poll_interval=0.05)
        self.port = 0

    async def open(self, server_name: str = "127.0.0.1") -> tuple[Any, Any, bytes]:
        return await open_tls(self.port, self.ca, server_name)

    async def presented(self, server_name: str = "127.0.0.1") -> bytes:
        return await presented(self.port, self.ca, server_name)


#: Room left in the first certificate files, so that later ones can take the same size.
PADDING = 1024


def write_padded(ca: LocalCA, leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """The pair, with trailing blank lines (ignored by PEM readers) to grow into."""
    ca.write_leaf(leaf, cert, key)
    for path in (cert, key):
        path.write_bytes(path.read_bytes() + b"\n" * PADDING)


def rewrite_unnoticed(ca: LocalCA, leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """Replace the pair in place with the same sizes and times: nothing a watcher of the files
    could notice, so only a signal can make the server load them."""
    before = {path: path.stat() for path in (cert, key)}
    ca.write_leaf(leaf, cert, key)
    for path, st in before.items():
        data = path.read_bytes()
        assert len(data) <= st.st_size
        path.write_bytes(data + b"\n" * (st.st_size - len(data)))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def open_tls(
    port: int, ca: LocalCA, server_name: str = "127.0.0.1"
) -> tuple[Any, Any, bytes]:
    """A new TLS connection: its reader, writer and the certificate the server presented."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ca.client_context(), server_hostname=server_name
    )
    return reader, writer, writer.get_extra_info("ssl_object").getpeercert(binary_form=True)


async def presented(port: int, ca: LocalCA, server_name: str = "127.0.0.1") -> bytes:
    """The certificate a new connection is shown."""
    _, writer, cert = await open_tls(port, ca, server_name)
    writer.close()
    await writer.wait_closed()
    return cert


async def wait_presented(port: int, ca: LocalCA, cert: bytes) -> None:
    """Open new connections until one is shown ``cert`` (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while await presented(port, ca) != cert:
            await asyncio.sleep(0.05)


@pytest.fixture
async def served(aiohttp_server: Any, local_ca: LocalCA, tmp_path: Path) -> Served:
    served = Served(local_ca, tmp_path)
    app = web.Application()
    app.router.add_get("/", hello)
    server = await aiohttp_server(app, ssl=served.tls.server_context)
    served.port = server.port
    return served


async def get_over(reader: Any, writer: Any) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    return bytes(await reader.readuntil(b"hello"))


async def test_a_reload_serves_new_connections_the_new_certificate(
    served: Served, local_ca: LocalCA
) -> None:
    """After the files are replaced and reloaded, a new connection sees the new certificate
    (with and without a server name), while a connection opened before keeps working."""
    assert await served.presented() == der(served.first)
    reader, writer, before = await served.open()
    second = local_ca.ca.issue_cert("127.0.0.1", "localhost")
    local_ca.write_leaf(second, served.cert, served.key)
    assert await served.tls.reload(why="test")
    assert await served.presented() == der(second)
    assert await served.presented("localhost") == der(second)
    assert before == der(served.first)
    assert (await get_over(reader, writer)).startswith(b"HTTP/1.1 200")
    writer.close()
    await writer.wait_closed()


async def test_changed_files_are_picked_up_without_a_signal(
    served: Served, local_ca: LocalCA
) -> None:
    """Certificates renamed into place (as certbot and cert-manager do) are noticed and served."""
    second = local_ca.ca.issue_cert("127.0.0.1")
    staged_cert, staged_key = served.cert.with_name("crt.new"), served.key.with_name("key.new")
    local_ca.write_leaf(second, staged_cert, staged_key)
    os.replace(staged_key, served.key)
    os.replace(staged_cert, served.cert)
    watcher = asyncio.create_task(served.tls.watch())
    try:
        await wait_presented(served.port, local_ca, der(second))
    finally:
        watcher.cancel()


async def test_a_mismatched_pair_keeps_the_old_certificate(
    served: Served, local_ca: LocalCA, caplog: pytest.LogCaptureFixture
) -> None:
    """A new certificate whose key has not been written yet is refused, with a warning, and
    the server keeps presenting the previous certificate."""
    second = local_ca.ca.issue_cert("127.0.0.1")
    served.cert.write_bytes(b"".join(pem.bytes() for pem in second.cert_chain_pems))
    with caplog.at_level(logging.WARNING, logger="nightproxy.server.tls"):
        assert not await served.tls.reload(why="test")
    assert "not reloaded" in caplog.text
    assert await served.presented() == der(served.first)


def test_unusable_files_are_a_clear_error(local_ca: LocalCA, tmp_path: Path) -> None:
    """A missing file or a key of another certificate is reported by name, at start."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    with pytest.raises(TlsError, match="no such file"):
        TlsCertificates(cert, key)
    local_ca.write_leaf(local_ca.leaf, cert, key)
    other = local_ca.ca.issue_cert("127.0.0.1")
    key.write_bytes(other.private_key_pem.bytes())
    with pytest.raises(TlsError, match=r"cannot use .*c\.pem"):
        TlsCertificates(cert, key)


def write_tls_config(tmp_path: Path, cert: Path, key: Path) -> Path:
    """A config serving an empty directory feed over HTTPS with ``cert`` and ``key``."""
    (tmp_path / "wheels").mkdir(exist_ok=True)
    feed = {"name": "local", "kind": "directory", "path": str(tmp_path / "wheels")}
    return https_config(tmp_path, cert, key, [feed])


async def test_nightproxy_serve_rotates_its_certificate_without_a_restart(
    local_ca: LocalCA, tmp_path: Path
) -> None:
    """``nightproxy serve`` with ``server.tls`` serves HTTPS; after the files are replaced, SIGHUP
    makes new connections get the new certificate, and so does a later change with no signal,
    all in the same process."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_padded(local_ca, local_ca.leaf, cert, key)
    config = write_tls_config(tmp_path, cert, key)
    port = free_port()
    async with nightproxy_serve(
        ["--config", str(config)], port, tls=local_ca.client_context()
    ) as proc:
        assert await presented(port, local_ca) == der(local_ca.leaf)
        second = local_ca.ca.issue_cert("127.0.0.1")
        rewrite_unnoticed(local_ca, second, cert, key)
        proc.send_signal(signal.SIGHUP)
        await wait_presented(port, local_ca, der(second))
        third = local_ca.ca.issue_cert("127.0.0.1")
        local_ca.write_leaf(third, cert, key)
        await wait_presented(port, local_ca, der(third))
        assert proc.returncode is None


async def read_until(stream: asyncio.StreamReader, text: str, count: int = 1) -> None:
    """Read log lines until ``count`` of them contain ``text`` (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while count:
            line = await stream.readline()
            assert line, f"the server's log ended before {text!r}"
            count -= text in line.decode(errors="replace")


async def test_every_worker_reloads_on_sighup(local_ca: LocalCA, tmp_path: Path) -> None:
    """With ``--workers 2``, SIGHUP to the parent reaches every worker: once both say they
    reloaded, no new connection, whichever worker accepts it, is shown the old certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_padded(local_ca, local_ca.leaf, cert, key)
    config = write_tls_config(tmp_path, cert, key)
    port = free_port()
    async with nightproxy_serve(
        ["--config", str(config), "--workers", "2"],
        port,
        tls=local_ca.client_context(),
        stderr=asyncio.subprocess.PIPE,
    ) as proc:
        assert proc.stderr is not None
        # Both workers listen (their SIGHUP handlers are in place) before the signal is sent.
        await read_until(proc.stderr, "all 2 workers accept connections")
        second = local_ca.ca.issue_cert("127.0.0.1")
        rewrite_unnoticed(local_ca, second, cert, key)
        proc.send_signal(signal.SIGHUP)
        await read_until(proc.stderr, "TLS certificate reloaded", count=2)
        seen = {await presented(port, local_ca) for _ in range(20)}
        assert seen == {der(second)}


def test_an_unusable_certificate_is_a_config_error(local_ca: LocalCA, tmp_path: Path) -> None:
    """A key that is not the certificate's stops ``serve`` with exit 2 naming server.tls."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    local_ca.write_leaf(local_ca.leaf, cert, key)
    key.write_bytes(local_ca.ca.issue_cert("127.0.0.1").private_key_pem.bytes())
    config = write_tls_config(tmp_path, cert, key)
    result = subprocess.run(
        [sys.executable, "-m", "nightproxy", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 2
    assert "server.tls" in result.stderr
    assert "Traceback" not in result.stderr
