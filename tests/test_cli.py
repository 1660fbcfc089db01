"""The ``nightproxy`` command line, run as a real subprocess (``python -m nightproxy``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import nightproxy
from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]
WAIT = 30.0  # upper bound for any single wait; never an assertion about speed

VALID = """\
cache:
  dir: ./cache
upstreams:
  - name: feed
    kind: simple
    url: https://ci:${NP_TEST_PASSWORD}@feed.invalid/simple/
    timeout: 5s
    headers:
      Authorization: "Bearer ${NP_TEST_TOKEN}"
  - name: blobs
    kind: azure
    url: https://blobs.invalid/simple/
    username: bob
    password: ${NP_TEST_PASSWORD}
projects:
  numpy: [feed]
"""
PASSWORD = "pa55-w0rd-SENTINEL"
TOKEN = "t0ken-SENTINEL"

GOOD_UPSTREAM = """\
upstreams:
  - name: sp
    kind: simple
    url: https://example.invalid/simple/
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any NIGHTPROXY_* setting, running this tree's package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIGHTPROXY_", "NP_TEST_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nightproxy", *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def test_version(tmp_path: Path) -> None:
    """``--version`` prints the package version and exits 0."""
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"nightproxy {nightproxy.__version__}"


def test_console_script_entry_point_is_cli_main() -> None:
    """The installed ``nightproxy`` script's entry point ``nightproxy.cli:main`` still resolves."""
    from importlib.metadata import entry_points

    import nightproxy.cli

    (script,) = entry_points(group="console_scripts", name="nightproxy")
    assert script.value == "nightproxy.cli:main"
    assert script.load() is nightproxy.cli.main


def test_python_m_nightproxy_cli_runs_the_same_command_line(tmp_path: Path) -> None:
    """``python -m nightproxy.cli --version`` works like ``python -m nightproxy --version``."""
    result = subprocess.run(
        [sys.executable, "-m", "nightproxy.cli", "--version"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"nightproxy {nightproxy.__version__}"


def test_check_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    """``check`` on a valid file prints it as YAML, every secret from the environment masked."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(VALID)
    env = clean_env(NP_TEST_PASSWORD=PASSWORD, NP_TEST_TOKEN=TOKEN)
    result = run("check", "--config", str(config), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    for secret in (PASSWORD, TOKEN, "SENTINEL"):
        assert secret not in result.stdout
        assert secret not in result.stderr
    shown = yaml.safe_load(result.stdout)
    feed, blobs = shown["upstreams"]
    assert (feed["name"], blobs["name"]) == ("feed", "blobs")
    assert feed["url"] == "https://***@feed.invalid/simple/"
    assert feed["headers"]["Authorization"] == "***"
    assert blobs["password"] == "***"
    assert blobs["username"] == "bob"
    assert shown["projects"]["numpy"]["upstreams"] == ["feed"]
    # Relative paths are relative to the config file's directory.
    assert Path(shown["cache"]["dir"]) == tmp_path / "cache"


@pytest.mark.parametrize(
    ("text", "key", "mentions"),
    [
        ("sever: {port: 1}\n" + GOOD_UPSTREAM, "sever", "unknown"),
        ("index: {ttl: 10 parsecs}\n" + GOOD_UPSTREAM, "index.ttl", "10 parsecs"),
        (
            GOOD_UPSTREAM + "  - {name: sp, kind: simple, url: 'https://b.invalid/'}\n",
            "upstreams[1].name",
            "duplicate",
        ),
        (GOOD_UPSTREAM + "projects:\n  numpy: [nope]\n", "projects.numpy[0]", "nope"),
        (
            GOOD_UPSTREAM + '    headers: {X-Token: "${NP_TEST_UNSET_TOKEN}"}\n',
            "upstreams[0].headers.X-Token",
            "NP_TEST_UNSET_TOKEN",
        ),
    ],
    ids=["unknown-key", "bad-unit", "duplicate-upstream", "unknown-upstream", "missing-env"],
)
def test_config_error_exits_2_naming_file_and_key(
    tmp_path: Path, text: str, key: str, mentions: str
) -> None:
    """A user mistake exits 2 with one message naming the file and key path, no traceback."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(text)
    result = run("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert key in result.stderr
    assert mentions in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_config_found_through_environment_variable(tmp_path: Path) -> None:
    """Without ``--config``, ``$NIGHTPROXY_CONFIG`` names the file to use."""
    config = tmp_path / "elsewhere" / "custom.yaml"
    config.parent.mkdir()
    config.write_text(GOOD_UPSTREAM.replace("name: sp", "name: from-env"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "nightproxy.yaml").write_text(GOOD_UPSTREAM.replace("name: sp", "name: from-cwd"))
    result = run("check", cwd=workdir, env=clean_env(NIGHTPROXY_CONFIG=str(config)))
    assert result.returncode == 0, result.stderr
    assert [u["name"] for u in yaml.safe_load(result.stdout)["upstreams"]] == ["from-env"]
    assert str(config) in result.stderr


def test_config_found_in_working_directory(tmp_path: Path) -> None:
    """Without ``--config`` or ``$NIGHTPROXY_CONFIG``, ``./nightproxy.yaml`` is used."""
    (tmp_path / "nightproxy.yaml").write_text(GOOD_UPSTREAM.replace("name: sp", "name: from-cwd"))
    result = run("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [u["name"] for u in yaml.safe_load(result.stdout)["upstreams"]] == ["from-cwd"]


def test_shipped_config_passes_check(tmp_path: Path) -> None:
    """The repository's shipped ``nightproxy.yaml`` is valid as it stands."""
    result = run("check", "--config", str(REPO / "nightproxy.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["upstreams"], "the shipped config lists at least one feed"
    assert "Traceback" not in result.stderr


# -- serve ----------------------------------------------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, str, str]:
        """(status, Content-Type, body) of a GET, errors included."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=WAIT) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=WAIT)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``nightproxy serve`` on a free port with one upstream nothing listens on."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        "cache:\n  dir: ./cache\n"
        "upstreams:\n"
        "  - name: nowhere\n    kind: simple\n"
        "    url: http://127.0.0.1:9/simple/\n    timeout: 5s\n"
    )
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "nightproxy", "serve"),
                *("--config", str(config), "--port", str(port)),
            ],
            cwd=tmp_path,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WAIT
        while not _listening(port):
            assert proc.poll() is None, f"serve exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"serve never listened:\n{log.read_text()}"
            time.sleep(0.05)
        yield Served(proc, port, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)


def test_serve_answers_502_with_reason_when_upstream_unreachable(served: Served) -> None:
    """With its only upstream unreachable, the proxy answers a plain-text 502 saying why."""
    status, ctype, body = served.get("/simple/x/")
    assert status == 502
    assert ctype.startswith("text/plain")
    assert "nowhere" in body
    assert "127.0.0.1:9" in body or "Connect" in body


def test_serve_logs_one_line_per_request(served: Served) -> None:
    """Each request is logged once, with method, path and status."""
    served.get("/simple/x/")
    served.get("/healthz")
    assert served.stop() == 0
    lines = served.log.read_text().splitlines()
    assert len([line for line in lines if "GET /simple/x/ 502" in line]) == 1
    assert len([line for line in lines if "GET /healthz 200" in line]) == 1


def test_serve_logs_the_path_as_sent_so_a_newline_cannot_forge_a_line(served: Served) -> None:
    """An encoded newline in the path is logged encoded: it cannot start a forged log line."""
    forged = "2026-01-01 00:00:00,000 INFO nightproxy.access: GET /forged 200"
    status, _ctype, _body = served.get("/simple/x%0A" + forged.replace(" ", "%20") + "/")
    assert status in {301, 404, 502}
    assert served.stop() == 0
    lines = served.log.read_text().splitlines()
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)
    assert any("/simple/x%0A2026-01-01" in line for line in lines)


def test_serve_exits_0_on_sigterm(served: Served) -> None:
    """SIGTERM stops the server cleanly with exit status 0 and no traceback."""
    served.get("/simple/x/")
    assert served.stop() == 0
    assert "Traceback" not in served.log.read_text()


def test_serve_on_a_taken_port_says_so_and_exits_1(tmp_path: Path) -> None:
    """A port another process listens on: one line naming the address, exit 1, no traceback."""
    (tmp_path / "nightproxy.yaml").write_text(GOOD_UPSTREAM)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
