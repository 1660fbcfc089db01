"""Local stand-ins for the third-party images of ``deploy/fleet/docker-compose.yml``.

No container registry is reachable from these machines, so SeaweedFS and nginx are built FROM
the local base image (``tests/containers/*.Dockerfile``): SeaweedFS from the ``weed`` binary the
suite already runs, nginx from Debian's package (apt inside the build, through the machine's
proxy settings if it has any). Each is tagged by a digest of what went into it and kept, so
later runs reuse it; an older build of the same stand-in is removed when a new one is made.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tests.container_support import BUILD_TIMEOUT, Engine
from tests.wheels import sha256_file

CONTAINERS = Path(__file__).resolve().parent / "containers"
#: Build arguments Docker predefines: apt inside a build needs them where the host does.
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def standin(engine: Engine, name: str, files: dict[str, Path] | None = None) -> str:
    """The tag of stand-in ``name`` (``tests/containers/NAME.Dockerfile``), built if absent.

    ``files``: the build context, as file name -> source path.
    """
    files = files or {}
    dockerfile = CONTAINERS / f"{name}.Dockerfile"
    key = hashlib.sha256(dockerfile.read_bytes())
    key.update(engine.run("image", "inspect", "--format", "{{.Id}}", engine.base).encode())
    for target, source in sorted(files.items()):
        key.update(f"\0{target}\0{sha256_file(source)}".encode())
    repository = f"nightproxy-standin-{name}"
    tag = f"{repository}:{key.hexdigest()[:16]}"
    if engine.has_image(tag):
        return tag
    proxies = [f"--build-arg={var}" for var in PROXY_VARS if var in os.environ]
    with tempfile.TemporaryDirectory(prefix=f"{repository}-") as context:
        for target, source in files.items():
            try:
                os.link(source, Path(context) / target)
            except OSError:  # another filesystem
                shutil.copy2(source, Path(context) / target)
        engine.run(
            "build",
            "--quiet",
            "--file",
            str(dockerfile),
            "--build-arg",
            f"BASE_IMAGE={engine.base}",
            *proxies,
            "--tag",
            tag,
            context,
            timeout=BUILD_TIMEOUT,
        )
    listed = engine.run("images", "--format", "{{.Repository}}:{{.Tag}}", repository)
    for old in set(listed.splitlines()) - {tag}:
        engine.run("rmi", old, check=False)
    return tag
