"""Upload tokens of a hosted feed: digests only, per-project rights, admins, other sources."""

from __future__ import annotations

from packaging.utils import NormalizedName, canonicalize_name

from nightproxy.config import token_digest
from nightproxy.hosted.auth import FeedAuth, Identity, new_token

NUMPY = canonicalize_name("numpy")
SKLEARN = canonicalize_name("scikit-learn")


def make_auth() -> FeedAuth:
    return FeedAuth(
        {
            NUMPY: [token_digest("numpy-secret")],
            SKLEARN: ["sha256:" + token_digest("sk-1"), token_digest("sk-2")],
        },
        admins=[token_digest("admin-secret").upper()],
    )


async def test_configured_tokens_identify_their_project() -> None:
    """A project's token may publish that project only; its label names no secret."""
    identity = await make_auth().identify("sk-2")
    assert identity is not None
    assert identity.may_publish(SKLEARN)
    assert not identity.may_publish(NUMPY)
    assert identity.label == "scikit-learn token 2"
    assert identity.describe_rights() == "scikit-learn"


async def test_admin_may_publish_everything() -> None:
    """An admin token (its digest given in any case) may publish any project."""
    identity = await make_auth().identify("admin-secret")
    assert identity is not None
    assert identity.admin
    assert identity.may_publish(canonicalize_name("anything"))


async def test_unknown_and_empty_tokens_are_nobody() -> None:
    """A wrong token, a digest presented as a token, or no token identify nobody."""
    auth = make_auth()
    assert await auth.identify("wrong") is None
    assert await auth.identify(token_digest("numpy-secret")) is None
    assert await auth.identify("") is None


class MintedTokens:
    def __init__(self, token: str, project: NormalizedName) -> None:
        self.token = token
        self.project = project

    async def identify(self, token: str) -> Identity | None:
        if token == self.token:
            return Identity("github:org/repo", projects=frozenset({self.project}))
        return None


async def test_added_source_is_accepted_like_a_configured_token() -> None:
    """A token another source knows (trusted publishing) is accepted with that source's rights."""
    auth = make_auth()
    auth.add_source(MintedTokens("minted", NUMPY))
    identity = await auth.identify("minted")
    assert identity is not None
    assert identity.may_publish(NUMPY)
    assert identity.label == "github:org/repo"


async def test_new_token_matches_its_config_line() -> None:
    """`token new` prints a token and the sha256 line that lets exactly that token in."""
    token, line = new_token()
    assert line == "sha256:" + token_digest(token)
    auth = FeedAuth({NUMPY: [line]})
    assert await auth.identify(token) is not None
    assert new_token()[0] != token


async def test_a_token_listed_twice_has_both_rights() -> None:
    """A token given for two projects may publish both; one also listed as admin is an admin."""
    digest = token_digest("shared-token")
    auth = FeedAuth({NUMPY: [digest], SKLEARN: [digest]})
    identity = await auth.identify("shared-token")
    assert identity is not None
    assert identity.may_publish(NUMPY)
    assert identity.may_publish(SKLEARN)
    assert not identity.admin
    both = FeedAuth({NUMPY: [digest]}, admins=[digest])
    admin = await both.identify("shared-token")
    assert admin is not None
    assert admin.admin
