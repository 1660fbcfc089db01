"""The fleet deployment files: compose with SeaweedFS, three replicas and nginx; Kubernetes with
three replicas and the store's keys from a Secret; both with configs that pass ``check``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

FLEET = Path(__file__).resolve().parent.parent / "deploy" / "fleet"


def check(
    config_text: str, tmp_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "nightproxy.yaml"
    path.write_text(config_text)
    return subprocess.run(
        [sys.executable, "-m", "nightproxy", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


def test_compose_runs_three_replicas_of_one_store_behind_nginx() -> None:
    """Three replicas with the same store keys and their own peer URL; nginx balances them
    and keeps the peer endpoint closed."""
    compose: dict[str, Any] = yaml.safe_load((FLEET / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = {name: s for name, s in services.items() if name.startswith("replica")}
    assert len(replicas) == 3
    for name, service in replicas.items():
        env = service["environment"]
        assert env["PEER_URL"] == f"http://{name}:8080"
        assert env["STORE_SECRET"].startswith("${STORE_SECRET")
        assert "seaweedfs" in service["depends_on"]
    assert services["seaweedfs"]["command"][0] == "mini"
    nginx = (FLEET / "nginx.conf").read_text()
    assert sorted(re.findall(r"server (replica\d):8080", nginx)) == sorted(replicas)
    assert "proxy_buffering off" in nginx
    assert re.search(r"location /_fleet/ \{\s*return 404;", nginx)


def _default(value: str) -> str:
    """What ``${VAR:-default}`` gives when VAR is unset, as compose reads it."""
    match = re.fullmatch(r"(.*)\$\{\w+:-([^}]*)\}(.*)", value)
    return value if match is None else "".join(match.groups())


def test_compose_defaults_are_the_published_images_on_port_8080() -> None:
    """With no override variables set, the images are the published ones, nginx listens on
    host port 8080, the replicas read ./wheels, and their cache tmpfs belongs to uid 10001."""
    services = yaml.safe_load((FLEET / "docker-compose.yml").read_text())["services"]
    images = {name: _default(s["image"]) for name, s in services.items()}
    assert images == {
        "seaweedfs": "chrislusf/seaweedfs:latest",
        "replica1": "nightproxy:latest",
        "replica2": "nightproxy:latest",
        "replica3": "nightproxy:latest",
        "nginx": "nginx:stable",
    }
    assert [_default(p) for p in services["nginx"]["ports"]] == ["8080:8080"]
    replica = services["replica1"]
    assert _default(replica["volumes"][1]) == "./wheels:/wheelhouse:ro"
    assert "/var/cache/nightproxy:uid=10001,gid=10001,mode=0700" in replica["tmpfs"]


def test_fleet_config_passes_check(tmp_path: Path) -> None:
    """The replicas' config is valid with the environment compose gives them."""
    done = check(
        (FLEET / "nightproxy.yaml").read_text(),
        tmp_path,
        {
            "STORE_KEY_ID": "id",
            "STORE_SECRET": "secret",
            "REPLICA_ID": "replica1",
            "PEER_URL": "http://replica1:8080",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "secret" not in done.stdout.replace("secret_access_key", "")


def test_kubernetes_runs_three_replicas_with_keys_from_a_secret(tmp_path: Path) -> None:
    """replicas: 3, the store's keys from a Secret, the peer URL from the pod's IP, an
    emptyDir as the local tier, and a ConfigMap config that passes check."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((FLEET / "kubernetes.yaml").read_text())}
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name in ("STORE_KEY_ID", "STORE_SECRET"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "nightproxy-store"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["cache"]
    done = check(
        docs["ConfigMap"]["data"]["nightproxy.yaml"],
        tmp_path,
        {
            "STORE_ENDPOINT": "http://store:8333",
            "STORE_KEY_ID": "id",
            "STORE_SECRET": "secret",
            "POD_NAME": "nightproxy-abc",
            "POD_IP": "10.0.0.7",
        },
    )
    assert done.returncode == 0, done.stderr
