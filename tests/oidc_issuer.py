"""Fixtures for trusted publishing: a local CA, a local OIDC issuer and a fake GitHub Actions
job-token endpoint, all real aiohttp servers on loopback over HTTPS.

- ``local_ca``: a CA made by ``trustme``, its PEM written to a file (for ``SSL_CERT_FILE`` /
  ``REQUESTS_CA_BUNDLE``), and server certificates for 127.0.0.1 and localhost.
- ``oidc_issuer``: its own RSA keys, serving ``/.well-known/openid-configuration`` and the JWKS;
  ``sign`` makes any token a test needs, ``job_claims`` the claims GitHub would put in a job's
  token. The same server answers ``ACTIONS_ID_TOKEN_REQUEST_URL`` like a GitHub runner does,
  signing the claims in ``job`` for the audience the client asks for.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support import installer_env

#: The bearer token the fake runner expects (the runner's ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``).
REQUEST_TOKEN = "runner-request-token"
REPOSITORY = "octo-org/octo-lib"
WORKFLOW = "nightly.yml"
REF = "refs/heads/main"
SHA = "0123456789abcdef0123456789abcdef01234567"


class LocalCA:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = directory / "local-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (leaf or self.leaf).configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def write_leaf(self, leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
        """A server certificate as the PEM files ``server.tls`` names."""
        cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(kid: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


class OidcIssuer:
    """An OIDC issuer with RSA keys by kid; only ``published`` kids are in its JWKS."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {"key-1": new_rsa_key()}
        self.published: list[str] = ["key-1"]
        self.signing_kid = "key-1"
        self.url = ""
        self.discovery_fetches = 0
        self.jwks_fetches = 0
        #: Claims the fake runner puts in job tokens, over ``job_claims``' defaults and the
        #: audience the client asked for.
        self.job: dict[str, Any] = {}
        self.job_token_requests: list[str] = []

    # -- the servers ---------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/.well-known/jwks", self._jwks)
        app.router.add_get("/actions/id-token", self._job_token)
        return app

    def bind(self, server: TestServer) -> None:
        self.url = str(server.make_url("")).rstrip("/")

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_fetches += 1
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/.well-known/jwks",
                "subject_types_supported": ["public", "pairwise"],
                "response_types_supported": ["id_token"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [public_jwk(k, self.keys[k]) for k in self.published]})

    async def _job_token(self, request: web.Request) -> web.Response:
        """A GitHub runner's token endpoint: bearer request token, audience in the query."""
        if request.headers.get("Authorization", "").lower() != f"bearer {REQUEST_TOKEN}":
            return web.json_response({"message": "bad request token"}, status=401)
        audience = request.query.get("audience", "")
        self.job_token_requests.append(audience)
        claims = self.job_claims(**{"aud": audience, **self.job})
        return web.json_response({"value": self.sign(claims)})

    def runner_env(self) -> dict[str, str]:
        """The environment a GitHub Actions job with ``id-token: write`` has."""
        return {
            "GITHUB_ACTIONS": "true",
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{self.url}/actions/id-token?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
        }

    # -- tokens --------------------------------------------------------------------------
    def add_key(self, kid: str, *, publish: bool = True) -> None:
        self.keys[kid] = new_rsa_key()
        if publish:
            self.published.append(kid)

    def job_claims(self, **overrides: Any) -> dict[str, Any]:
        """The claims of a GitHub Actions job token of ``REPOSITORY``'s ``WORKFLOW`` on main."""
        now = int(time.time())
        repository = overrides.get("repository", REPOSITORY)
        claims: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "sub": f"repo:{repository}:ref:{REF}",
            "aud": "nightproxy",
            "ref": REF,
            "sha": SHA,
            "repository": repository,
            "repository_owner": repository.partition("/")[0],
            "repository_owner_id": "1234",
            "repository_id": "5678",
            "run_id": "42",
            "run_number": "7",
            "run_attempt": "1",
            "actor": "octocat",
            "workflow": "nightly",
            "workflow_ref": f"{repository}/.github/workflows/{WORKFLOW}@{REF}",
            "job_workflow_ref": f"{repository}/.github/workflows/{WORKFLOW}@{REF}",
            "head_ref": "",
            "base_ref": "",
            "event_name": "schedule",
            "ref_type": "branch",
            "runner_environment": "github-hosted",
            "iss": self.url,
            "nbf": now - 5,
            "iat": now - 5,
            "exp": now + 300,
        }
        claims.update(overrides)
        return claims

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        algorithm: str = "RS256",
        key: Any = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        kid = kid or self.signing_kid
        signing_key = key if key is not None else self.keys[kid]
        return jwt.encode(
            dict(claims), signing_key, algorithm=algorithm, headers={"kid": kid, **(headers or {})}
        )


def https_config(
    tmp_path: Path, cert: Path, key: Path, upstreams: list[dict[str, Any]], **sections: Any
) -> Path:
    """A ``nightproxy.yaml`` serving ``upstreams`` over HTTPS with ``cert`` and ``key``."""
    config = tmp_path / "nightproxy.yaml"
    data = {
        "server": {"tls": {"cert": str(cert), "key": str(key)}},
        "cache": {"dir": str(tmp_path / "cache")},
        "upstreams": upstreams,
        **sections,
    }
    config.write_text(yaml.safe_dump(data))
    return config


def job_env(tmp_path: Path, issuer: OidcIssuer, ca: LocalCA) -> dict[str, str]:
    """A GitHub Actions job's environment with ``id-token: write``, trusting the local CA."""
    env = installer_env(tmp_path)
    env.update(issuer.runner_env())
    env["REQUESTS_CA_BUNDLE"] = env["SSL_CERT_FILE"] = str(ca.ca_file)
    env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "step-summary.md")
    return env


@pytest.fixture
def local_ca(tmp_path: Path) -> LocalCA:
    return LocalCA(tmp_path)


@pytest.fixture
async def oidc_issuer(aiohttp_server: Any, local_ca: LocalCA) -> OidcIssuer:
    issuer = OidcIssuer()
    server = await aiohttp_server(issuer.make_app(), ssl=local_ca.server_context())
    issuer.bind(server)
    return issuer
