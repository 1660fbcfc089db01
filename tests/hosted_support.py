"""Helpers for hosted-feed tests: the real upload clients, and multipart bodies by hand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from nightproxy.hosted.auth import Identity
from nightproxy.hosted.feed import HostedFeed
from nightproxy.hosted.storage import Outcome
from nightproxy.hosted.upload import UploadForm
from tests.support import WAIT, installer_env, uv_bin

#: Tokens of the test feeds (their sha256 lines go in the configs).
NUMPY_TOKEN = "npf_numpy-test-token"
SCIPY_TOKEN = "npf_scipy-test-token"
ADMIN_TOKEN = "npf_admin-test-token"
PUBLISH_TIMEOUT = 120.0


def sha256_line(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def basic(token: str) -> dict[str, str]:
    """The Authorization header of a token (aiohttp's BasicAuth is deprecated)."""
    encoded = base64.b64encode(f"__token__:{token}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def twine_bin() -> str:
    beside = Path(sys.executable).parent / "twine"
    assert beside.is_file(), f"twine is not beside {sys.executable}: pip install -e '.[test]'"
    return str(beside)


async def run_tool(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run an upload client; (exit status, its output)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def twine_upload(
    url: str, files: list[Path], token: str | None, tmp_path: Path
) -> tuple[int, str]:
    env = installer_env(tmp_path)
    env.pop("TWINE_PASSWORD", None)
    argv = [twine_bin(), "upload", "--non-interactive", "--disable-progress-bar"]
    argv += ["--repository-url", url]
    if token is not None:
        argv += ["-u", "__token__", "-p", token]
    return await run_tool([*argv, *map(str, files)], env)


async def uv_publish(
    url: str,
    files: list[Path],
    token: str,
    tmp_path: Path,
    *,
    check_url: str | None = None,
) -> tuple[int, str]:
    env = installer_env(tmp_path)
    argv = [uv_bin(), "publish", "--no-progress", "--publish-url", url, "--token", token]
    if check_url is not None:
        argv += ["--check-url", check_url]
    return await run_tool([*argv, *map(str, files)], env)


def form_fields(path: Path, **overrides: str) -> dict[str, str]:
    """The form fields twine would send for ``path`` (name and version from the filename)."""
    name, version = path.name.split("-")[:2]
    data = path.read_bytes()
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "metadata_version": "2.1",
        "name": name,
        "version": version.removesuffix(".tar.gz"),
        "filetype": "bdist_wheel" if path.name.endswith(".whl") else "sdist",
        "pyversion": "py3",
        "sha256_digest": hashlib.sha256(data).hexdigest(),
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v != ""}


def multipart_head(fields: dict[str, str], filename: str, boundary: str) -> bytes:
    """The fields and the file part's header of a multipart body, up to the file's bytes."""
    out = b""
    for key, value in fields.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        ).encode()
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    return out


def multipart_tail(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


def rss_kib(pid: int) -> int:
    """The resident set of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def wait_until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll an async predicate until it holds (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while not await predicate():
            await asyncio.sleep(0.05)


OPERATOR = Identity("admin token 1", admin=True)


async def publish(
    feed: HostedFeed, path: Path, identity: Identity = OPERATOR, **fields: str
) -> Outcome:
    name, version = path.name.split("-")[:2]
    if path.name.endswith(".tar.gz"):
        version = version.removesuffix(".tar.gz")
    form = UploadForm.from_fields(
        {":action": "file_upload", "name": name, "version": version, **fields}
    )
    body = feed.new_body()
    async with feed.storage.staging() as staged:
        data = path.read_bytes()
        body.count(len(data))
        body.update(data)
        shutil.copyfile(path, staged.path)
        result = await feed.accept(identity, form, path.name, staged, body)
    return result.outcome
