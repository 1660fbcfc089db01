"""``cache.shared`` in the configuration: read, checked, and shown with its secret masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightproxy.config import ConfigError, config_from_mapping
from nightproxy.config.effective import masked

UPSTREAMS = [{"name": "main", "kind": "simple", "url": "http://127.0.0.1:1/simple/"}]


def load(shared: dict[str, object], tmp_path: Path) -> object:
    data = {"cache": {"dir": str(tmp_path / "c"), "shared": shared}, "upstreams": UPSTREAMS}
    return config_from_mapping(data, tmp_path / "nightproxy.yaml", environ={"SECRET": "s3cr3t"})


def test_shared_tier_is_read_with_the_s3_options(tmp_path: Path) -> None:
    """The s3 kind's options, the budget and the replica's identity are read as given."""
    config = load(
        {
            "url": "s3://bucket/fleet",
            "endpoint": "http://127.0.0.1:8333",
            "access_key_id": "id",
            "secret_access_key": "${SECRET}",
            "max_size": "10GiB",
            "max_age": "7d",
            "replica_id": "web-1",
            "fill_lease_ttl": "3s",
        },
        tmp_path,
    )
    shared = config.cache.shared  # type: ignore[attr-defined]
    assert shared.url == "s3://bucket/fleet/"
    assert shared.s3.addressing == "path"
    assert shared.s3.secret_access_key == "s3cr3t"
    assert (shared.max_size, shared.max_age, shared.fill_lease_ttl) == (10 * 1024**3, 604800, 3)
    shown = masked(config)["cache"]["shared"]  # type: ignore[arg-type]
    assert shown["secret_access_key"] == "***"
    assert "s3cr3t" not in repr(config)


@pytest.mark.parametrize(
    ("shared", "where"),
    [
        ({"url": "https://bucket/"}, "cache.shared.url"),
        ({"url": "s3://b/", "colour": "red"}, "cache.shared.colour"),
        ({"url": "s3://b/", "access_key_id": "id"}, "cache.shared.secret_access_key"),
        ({"endpoint": "http://x/"}, "cache.shared.url"),
    ],
)
def test_a_bad_shared_section_names_its_key(
    shared: dict[str, object], where: str, tmp_path: Path
) -> None:
    """A mistake in cache.shared is reported at its key path."""
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load(shared, tmp_path)
