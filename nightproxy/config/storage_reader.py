"""Validation of how to reach a bucket: the ``s3`` kind's options, which a hosted feed in a
bucket and ``cache.shared`` take too."""

from __future__ import annotations

from typing import Final

from nightproxy.config.kinds import ADDRESSING, Addressing, S3Options
from nightproxy.config.reader import Section, read_choice, read_http_url, read_str

__all__ = ["S3_KEYS", "read_s3_options"]

S3_KEYS: Final = ("endpoint", "addressing", "region", "access_key_id", "secret_access_key")


def read_s3_options(section: Section) -> S3Options:
    """The keys that say how to reach a bucket (the bucket itself is the ``s3://`` URL)."""
    endpoint = section.read("endpoint", read_http_url, None)
    # Custom endpoints (MinIO, Ceph, ...) rarely support virtual-host buckets; AWS prefers them.
    default_addressing: Addressing = "path" if endpoint is not None else "virtual"
    access_key_id = section.read("access_key_id", read_str, None)
    secret_access_key = section.read("secret_access_key", read_str, None)
    if (access_key_id is None) != (secret_access_key is None):
        missing = "access_key_id" if access_key_id is None else "secret_access_key"
        raise section.error_at(
            missing, "access_key_id and secret_access_key must be given together"
        )
    return S3Options(
        endpoint=endpoint,
        addressing=section.read(
            "addressing", lambda n: read_choice(n, ADDRESSING), default_addressing
        ),
        region=section.read("region", read_str, S3Options().region),
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )
