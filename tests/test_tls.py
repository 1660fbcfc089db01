"""HTTPS with certificates rotated under a running server: new connections get the new
certificate, open ones keep theirs, and a bad pair of files never replaces a good one."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from nightproxy.server.tls import TlsCertificates, TlsError
from tests.oidc_issuer import LocalCA
from tests.support import WAIT


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
        """A new TLS connection: its reader, writer and the certificate the server presented."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.ca.client_context(), server_hostname=server_name
        )
        return reader, writer, writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

    async def presented(self, server_name: str = "127.0.0.1") -> bytes:
        _, writer, cert = await self.open(server_name)
        writer.close()
        await writer.wait_closed()
        return cert


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
    async with asyncio.timeout(WAIT):
        watcher = asyncio.create_task(served.tls.watch())
        try:
            while await served.presented() != der(second):
                await asyncio.sleep(0.05)
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
