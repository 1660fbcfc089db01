"""Trusted publishing end to end, with the real clients over HTTPS (a local CA):

- the exchange exactly as ``pypa/gh-action-pypi-publish`` performs it, then ``twine upload``;
- ``uv publish --trusted-publishing always`` in a (fake) GitHub Actions job;
- the refusals a CI job meets: another repository, workflow, environment or event, a minted
  token used after its lifetime or for another project.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from packaging.utils import canonicalize_name

from nightproxy.config import OidcConfig
from nightproxy.hosted.auth import FeedAuth
from nightproxy.hosted.feed import FeedSettings, HostedFeed
from nightproxy.hosted.local import LocalStorage
from nightproxy.hosted.prune import PruneRules
from nightproxy.server import keys, oidc
from nightproxy.server.upload import setup_upload_routes
from nightproxy.trust.claims import TrustedPublisher
from nightproxy.trust.service import MintedTokenSource, TrustedPublishing
from tests.hosted_support import NUMPY_TOKEN, run_tool, sha256_line, twine_bin
from tests.oidc_issuer import REF, REPOSITORY, WORKFLOW, LocalCA, OidcIssuer, job_env
from tests.support import installer_env, uv_bin
from tests.wheels import build_wheel

GH_ACTION = Path(__file__).with_name("gh_action_publish.py")


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Publishing:
    """A server with one hosted feed (``community``) and trusted publishing, over HTTPS."""

    def __init__(self, root: str, feed: HostedFeed, trust: TrustedPublishing) -> None:
        self.root = root
        self.upload_url = f"{root}/feeds/community/"
        self.feed = feed
        self.trust = trust

    async def listed(self) -> dict[str, str]:
        """Filename -> uploader of the feed's live files."""
        return {r.filename: r.uploader for r in (await self.feed.snapshot(fresh=True)).files()}


@pytest.fixture
def clock() -> WallClock:
    import time

    return WallClock(time.time())


@pytest.fixture
async def publishing(
    aiohttp_server: Any,
    oidc_issuer: OidcIssuer,
    local_ca: LocalCA,
    tmp_path: Path,
    clock: WallClock,
) -> AsyncIterator[Publishing]:
    settings = FeedSettings(
        name="community",
        rules=lambda _p: PruneRules(dev_max_age=None, keep_latest=3),
        overwrite=False,
        max_file_size=2**30,
        recheck=0,
    )
    auth = FeedAuth({canonicalize_name("numpy"): [sha256_line(NUMPY_TOKEN)]})
    feed = HostedFeed(settings, LocalStorage(tmp_path / "feed"), auth)
    await feed.open()
    publishers = [
        TrustedPublisher("community", "octo-lib", REPOSITORY, WORKFLOW, environment="nightly"),
        TrustedPublisher("community", "numpy", "numpy/numpy", "wheels.yml"),
    ]
    async with aiohttp.ClientSession() as session:
        trust = TrustedPublishing(
            session,
            OidcConfig(issuer=oidc_issuer.url, ca_bundle=local_ca.ca_file),
            publishers,
            tmp_path,
            clock=clock,
        )
        await trust.open()
        auth.add_source(MintedTokenSource(trust, "community"))
        app = web.Application()
        app[keys.FEEDS] = {"community": feed}
        app[oidc.TRUST] = trust
        setup_upload_routes(app)
        oidc.setup_routes(app)
        server = await aiohttp_server(app, ssl=local_ca.server_context())
        oidc_issuer.job = {"environment": "nightly"}
        yield Publishing(str(server.make_url("")).rstrip("/"), feed, trust)
        await trust.close()
    await feed.close()


def dist(tmp_path: Path, name: str = "octo-lib", version: str = "1.0.dev20261207") -> Path:
    directory = tmp_path / f"dist-{name}-{version}"
    directory.mkdir()
    build_wheel(directory, name, version)
    return directory


async def gh_action(
    publishing: Publishing, issuer: OidcIssuer, ca: LocalCA, tmp_path: Path, files: Path
) -> tuple[int, str]:
    return await run_tool(
        [sys.executable, str(GH_ACTION), publishing.upload_url, str(files)],
        job_env(tmp_path, issuer, ca),
    )


async def test_gh_action_pypi_publish_exchange_then_twine_upload(
    publishing: Publishing, oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path
) -> None:
    """The action's steps (audience, the runner's id token, mint-token, ``twine upload`` with
    ``__token__``) publish the wheel, recorded as uploaded by the trusted publisher."""
    status, output = await gh_action(publishing, oidc_issuer, local_ca, tmp_path, dist(tmp_path))
    assert status == 0, output
    assert oidc_issuer.job_token_requests == ["nightproxy"]
    assert await publishing.listed() == {
        "octo_lib-1.0.dev20261207-py3-none-any.whl": f"github:{REPOSITORY}:{WORKFLOW}:nightly"
    }


async def test_uv_publish_with_trusted_publishing(
    publishing: Publishing, oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path
) -> None:
    """``uv publish --trusted-publishing always`` exchanges the job's token, uploads with the
    minted one, and burns it afterwards."""
    files = sorted(dist(tmp_path).iterdir())
    argv = [uv_bin(), "publish", "--no-progress", "--trusted-publishing", "always"]
    argv += ["--publish-url", publishing.upload_url, *map(str, files)]
    status, output = await run_tool(argv, job_env(tmp_path, oidc_issuer, local_ca))
    assert status == 0, output
    assert list(await publishing.listed()) == ["octo_lib-1.0.dev20261207-py3-none-any.whl"]
    assert publishing.trust.tokens.minted == 1
    assert publishing.trust.tokens.burned == 1


OTHER = "mallory/octo-lib"


@pytest.mark.parametrize(
    ("job", "code", "reason"),
    [
        pytest.param(
            {
                "repository": OTHER,
                "repository_owner": "mallory",
                "job_workflow_ref": f"{OTHER}/.github/workflows/{WORKFLOW}@{REF}",
            },
            "invalid-publisher",
            "repository",
            id="another-repository",
        ),
        pytest.param(
            {"job_workflow_ref": f"{REPOSITORY}/.github/workflows/ci.yml@{REF}"},
            "invalid-publisher",
            "workflow",
            id="another-workflow",
        ),
        pytest.param({"environment": "pr-preview"}, "invalid-publisher", "environment", id="env"),
        pytest.param(
            {"event_name": "pull_request_target"},
            "invalid-publisher",
            "event",
            id="pull-request-target",
        ),
        pytest.param(
            {"iss": "https://issuer.invalid"}, "invalid-token", "issuer", id="wrong-issuer"
        ),
    ],
)
async def test_a_job_that_is_not_the_publisher_cannot_publish(
    publishing: Publishing,
    oidc_issuer: OidcIssuer,
    local_ca: LocalCA,
    tmp_path: Path,
    job: dict[str, str],
    code: str,
    reason: str,
) -> None:
    """The action fails with the index's reason, the refusal is counted, nothing is listed."""
    oidc_issuer.job = {"environment": "nightly", **job}
    status, output = await gh_action(publishing, oidc_issuer, local_ca, tmp_path, dist(tmp_path))
    assert status == 1
    assert f"`{code}`" in output
    assert publishing.trust.refusals[reason] == 1
    assert await publishing.listed() == {}


async def twine_upload(
    publishing: Publishing, files: Path, token: str, ca: LocalCA, tmp_path: Path
) -> tuple[int, str]:
    """Plain ``twine upload`` with ``__token__`` and a token, trusting the local CA."""
    argv = [twine_bin(), "upload", "--non-interactive", "--disable-progress-bar"]
    argv += ["--repository-url", publishing.upload_url]
    argv += ["-u", "__token__", "-p", token, *map(str, sorted(files.iterdir()))]
    env = installer_env(tmp_path)
    env["REQUESTS_CA_BUNDLE"] = str(ca.ca_file)
    return await run_tool(argv, env)


async def mint(publishing: Publishing, issuer: OidcIssuer, ca: LocalCA, **job: Any) -> str:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ca.client_context())
    ) as http:
        token = issuer.sign(issuer.job_claims(**job))
        async with http.post(f"{publishing.root}/_/oidc/mint-token", json={"token": token}) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["token"])


async def test_a_minted_token_cannot_publish_another_project(
    publishing: Publishing, oidc_issuer: OidcIssuer, local_ca: LocalCA, tmp_path: Path
) -> None:
    """numpy's job gets a token for numpy; with it, octo-lib is refused (403 naming numpy)."""
    token = await mint(
        publishing,
        oidc_issuer,
        local_ca,
        repository="numpy/numpy",
        repository_owner="numpy",
        job_workflow_ref=f"numpy/numpy/.github/workflows/wheels.yml@{REF}",
    )
    status, output = await twine_upload(publishing, dist(tmp_path), token, local_ca, tmp_path)
    assert status != 0
    assert "403" in output
    assert "numpy" in output
    assert await publishing.listed() == {}


async def test_a_minted_token_is_refused_after_15_minutes(
    publishing: Publishing,
    oidc_issuer: OidcIssuer,
    local_ca: LocalCA,
    tmp_path: Path,
    clock: WallClock,
) -> None:
    """The token works within its lifetime; 15 minutes later (injected clock) it is refused."""
    token = await mint(publishing, oidc_issuer, local_ca, environment="nightly")
    clock.now += 15 * 60
    files = dist(tmp_path)
    status, output = await twine_upload(publishing, files, token, local_ca, tmp_path)
    assert status != 0
    assert "403" in output
    assert await publishing.listed() == {}
    clock.now -= 60
    status, output = await twine_upload(publishing, files, token, local_ca, tmp_path)
    assert status == 0, output
