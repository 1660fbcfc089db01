"""Helpers for tests that run ``nightproxy serve`` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Mapping
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed


def tool(name: str) -> str | None:
    """The program ``name`` beside the running interpreter, else on ``PATH``, else None.

    ``pip install -e '.[test]'`` puts the test extra's programs (uv, hadolint) beside the
    interpreter, which is on ``PATH`` only while a venv is activated; the README's commands
    must pass without activating one.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def uv_bin() -> str:
    """The uv of the test extra; its absence is a broken install, not a reason to skip."""
    found = tool("uv")
    assert found, f"uv is neither beside {sys.executable} nor on PATH: pip install -e '.[test]'"
    return found


def needs(found: str | None, what: str, install: str, require_var: str) -> str:
    """``found``, or skip saying how to install ``what``; a failure when ``require_var`` is 1.

    CI sets ``require_var`` so that a missing part there fails instead of passing silently.
    """
    if found:
        return found
    reason = f"{what} is not available: {install}"
    if os.environ.get(require_var) == "1":
        pytest.fail(f"{reason} ({require_var}=1 makes this a failure)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(
    proc: asyncio.subprocess.Process | None, port: int, tls: ssl.SSLContext | None = None
) -> None:
    """Poll /healthz until the server answers (bounded), failing if the process exits.

    With ``tls`` (a client context trusting the server's CA) over HTTPS.
    """
    scheme = "https" if tls is not None else "http"
    connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
    async with aiohttp.ClientSession(connector=connector) as probe, asyncio.timeout(WAIT):
        while True:
            assert proc is None or proc.returncode is None, "nightproxy serve exited early"
            try:
                async with probe.get(f"{scheme}://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


async def refuses_connections(base: URL) -> bool:
    """True once a brand-new connection to the server fails (its listener is closed).

    A probe whose connection the server accepted just before its shutdown began gets no
    answer until the drain ends (aiohttp closes connections idle at shutdown, dropping a
    request that had not been read yet): it gives up after a second, and the next probe
    tells.
    """
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as fresh:
        try:
            async with fresh.get(base.join(URL("/healthz"))) as resp:
                await resp.read()
        except aiohttp.ClientConnectionError:
            return True
        except TimeoutError:
            return False
    return False


@contextlib.asynccontextmanager
async def nightproxy_serve(
    args: list[str],
    port: int,
    *,
    stdout: int = asyncio.subprocess.DEVNULL,
    stderr: int = asyncio.subprocess.DEVNULL,
    sigterm: bool = True,
    tls: ssl.SSLContext | None = None,
    rlimits: Mapping[int, tuple[int, int]] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m nightproxy serve --port PORT ARGS``, healthy on entry, stopped on exit.

    On exit a still-running server gets SIGTERM (``sigterm``) or is killed. ``tls``: the
    server serves HTTPS, and this client context trusts it. ``rlimits``: resource limits
    (``resource.RLIMIT_*``: (soft, hard)) the server starts under, as a service manager's.
    """

    def limit() -> None:
        for which, values in (rlimits or {}).items():
            resource.setrlimit(which, values)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nightproxy",
        "serve",
        "--port",
        str(port),
        *args,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=limit if rlimits else None,
    )
    try:
        await wait_healthy(proc, port, tls)
        yield proc
    finally:
        await stop_process(proc, signal.SIGTERM if sigterm else signal.SIGKILL)


async def stop_process(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to a still-running process and wait (bounded, then SIGKILL) for its end."""
    if proc.returncode is not None:
        return
    proc.send_signal(sig)
    try:
        async with asyncio.timeout(WAIT):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


INSTALL_TIMEOUT = 180.0


def installer_env(tmp_path: Path) -> dict[str, str]:
    """No PIP_*/UV_* settings, no proxies, and a private HOME and uv cache.

    The machine's own pip configuration (extra indexes, find-links) must not leak into a test
    that checks what the proxy alone serves.
    """
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("PIP_", "UV_")) and k.lower() not in proxies
    }
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["XDG_CACHE_HOME"] = str(home / ".cache")
    env["UV_CACHE_DIR"] = str(tmp_path / "uv-cache")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONNOUSERSITE"] = "1"
    return env


async def run_installer(argv: list[str], env: dict[str, str]) -> str:
    """Run pip or uv without blocking the loop the proxy serves on; its output on success."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(INSTALL_TIMEOUT):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = output.decode(errors="replace")
    assert proc.returncode == 0, f"{argv[:5]} failed:\n{text}"
    return text


async def pip_install(
    index_url: str, target: Path, tmp_path: Path, *reqs: str, python: str = sys.executable
) -> str:
    """``pip install --pre`` of ``reqs`` into ``target`` with ``python``'s pip."""
    return await run_installer(
        [
            python,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            "--index-url",
            index_url,
            "--pre",
            "--target",
            str(target),
            *reqs,
        ],
        installer_env(tmp_path),
    )


async def uv_install(
    index_url: str, target: Path, tmp_path: Path, *reqs: str, extra: tuple[str, ...] = ()
) -> str:
    return await run_installer(
        [
            uv_bin(),
            "pip",
            "install",
            "--no-cache",
            "--python",
            sys.executable,
            "--index-url",
            index_url,
            "--prerelease=allow",
            "--target",
            str(target),
            *extra,
            *reqs,
        ],
        installer_env(tmp_path),
    )


def installed_version(target: Path, package: str) -> str:
    """``__version__`` from the installed package's ``__init__.py``."""
    namespace: dict[str, object] = {}
    exec((target / package / "__init__.py").read_text(), namespace)
    return str(namespace["__version__"])


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: dict[str, dict[str, str | None]] = {}
        self._open: dict[str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = dict(attrs)
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.anchors[self._text.strip()] = self._open
            self._open = None


def html_anchors(text: str) -> dict[str, dict[str, str | None]]:
    """Every ``<a>`` of an HTML page: link text -> attributes (unescaped by the parser)."""
    parser = _Anchors()
    parser.feed(text)
    parser.close()
    return parser.anchors
