"""What ``pypa/gh-action-pypi-publish`` does in a job with ``id-token: write``, step by step,
with the same libraries (requests, id, twine), for the end-to-end tests.

Usage: python gh_action_publish.py REPOSITORY_URL DIST_DIR

The runner's environment (``GITHUB_ACTIONS``, ``ACTIONS_ID_TOKEN_REQUEST_URL``/``_TOKEN``) and
the CA (``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``) come from the caller. Exits 1 with the
index's reasons when the exchange is refused, like the action.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import id as ambient_id
import requests


def exchange(repository_url: str) -> str:
    """The action's oidc-exchange step: audience, the job's id token, mint-token."""
    domain = urlparse(repository_url).netloc
    audience_resp = requests.get(f"https://{domain}/_/oidc/audience", timeout=30)
    if not audience_resp.ok:
        sys.exit(f"audience retrieval failed: {audience_resp.status_code}")
    audience = audience_resp.json()["audience"]
    oidc_token = ambient_id.detect_credential(audience=audience)
    mint_resp = requests.post(
        f"https://{domain}/_/oidc/github/mint-token", json={"token": oidc_token}, timeout=30
    )
    payload = mint_resp.json()
    if not mint_resp.ok:
        reasons = "\n".join(f"* `{e['code']}`: {e['description']}" for e in payload["errors"])
        print(f"Token request failed: the server refused the request:\n{reasons}", file=sys.stderr)
        sys.exit(1)
    token = payload.get("token")
    if token is None:
        sys.exit("Token response error: the index gave us an invalid response.")
    print(f"::add-mask::{token}", file=sys.stderr)
    return str(token)


def main() -> None:
    repository_url, dist = sys.argv[1], Path(sys.argv[2])
    password = exchange(repository_url)
    files = [str(p) for p in sorted(dist.iterdir())]
    twine = [sys.executable, "-m", "twine"]
    subprocess.run([*twine, "check", *files], check=True)
    env = {
        **os.environ,
        "TWINE_USERNAME": "__token__",
        "TWINE_PASSWORD": password,
        "TWINE_REPOSITORY_URL": repository_url,
    }
    result = subprocess.run([*twine, "upload", "--non-interactive", *files], env=env, check=False)
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
