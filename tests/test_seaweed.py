"""Facts about the real S3 server the fleet tests rely on, checked with a plain signed client."""

from __future__ import annotations

from tests.seaweed import SeaweedServer


def test_conditional_put_refuses_an_existing_key(seaweed: SeaweedServer, s3_prefix: str) -> None:
    """A PUT with ``If-None-Match: *`` on a key that exists fails with 412 and keeps the object."""
    key = f"{s3_prefix}lease"
    status, _, _ = seaweed.signed_request("PUT", key, b"first", {"If-None-Match": "*"})
    assert status == 200
    status, _, body = seaweed.signed_request("PUT", key, b"second", {"If-None-Match": "*"})
    assert status == 412, body
    assert b"PreconditionFailed" in body
    status, _, body = seaweed.signed_request("GET", key)
    assert (status, body) == (200, b"first")


def test_if_match_replaces_only_the_named_version(seaweed: SeaweedServer, s3_prefix: str) -> None:
    """A PUT with ``If-Match`` succeeds on the current ETag and fails with 412 on a stale one."""
    key = f"{s3_prefix}renewed"
    status, headers, _ = seaweed.signed_request("PUT", key, b"v1")
    assert status == 200
    first = headers["ETag"]
    status, _, _ = seaweed.signed_request("PUT", key, b"v2", {"If-Match": first})
    assert status == 200
    status, _, _ = seaweed.signed_request("PUT", key, b"v3", {"If-Match": first})
    assert status == 412
    status, _, body = seaweed.signed_request("GET", key)
    assert (status, body) == (200, b"v2")
