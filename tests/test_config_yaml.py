"""YAML mistakes that PyYAML accepts silently or fails on with a traceback: duplicate keys,
values that contain themselves, nesting deeper than the parser can go; and ``cache.dir``."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightproxy.config import ConfigError, load_config, prepare_cache_dir
from tests.test_config import UPSTREAM, assert_at, load, load_error


@pytest.mark.parametrize(
    ("text", "key", "where"),
    [
        ("server: {port: 1, port: 2}\n" + UPSTREAM, "server.port", "line 1, column 19"),
        (UPSTREAM + "server: {}\nserver: {port: 1}\n", "server", "line 6, column 1"),
        (UPSTREAM + "    name: other\n", "upstreams[0].name", "line 5, column 5"),
        (UPSTREAM + "projects: {numpy: [sp], numpy: []}\n", "projects.numpy", "line 5"),
    ],
    ids=["in-flow-mapping", "top-level", "in-a-list", "project"],
)
def test_a_duplicate_key_names_its_path_and_both_places(
    tmp_path: Path, text: str, key: str, where: str
) -> None:
    """A key given twice in one mapping is an error at that key's path, saying where it appears
    the second time, instead of the last value silently winning."""
    error = load_error(tmp_path, text)
    assert_at(error, tmp_path, key)
    assert "duplicate key" in error.message
    assert where in error.message


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    """``<<: *anchor`` brings keys that the mapping then sets itself: not duplicates."""
    config = load(
        tmp_path,
        UPSTREAM.replace("  - name: sp", "  - &base\n    name: sp")
        + "  - <<: *base\n    name: sp2\n    timeout: 5s\n",
    )
    assert [(u.name, u.url, u.timeout) for u in config.upstreams] == [
        ("sp", "https://example.invalid/simple/", 30.0),
        ("sp2", "https://example.invalid/simple/", 5.0),
    ]


def test_a_shared_alias_is_not_a_loop(tmp_path: Path) -> None:
    """The same anchored value used twice is fine; only a value holding itself is refused."""
    text = (
        UPSTREAM + "    headers: &h {X-A: a}\n"
        "  - {name: b, kind: simple, url: 'https://b.invalid/', headers: *h}\n"
    )
    config = load(tmp_path, text)
    assert [dict(u.headers) for u in config.upstreams] == [{"X-A": "a"}, {"X-A": "a"}]


def test_a_value_that_contains_itself_is_an_error_at_its_path(tmp_path: Path) -> None:
    """``a: &a [*a]`` (an alias inside its own anchor) is reported at the alias, not followed
    until Python's recursion limit."""
    error = load_error(tmp_path, UPSTREAM + "    headers: &h {X-A: [*h]}\n")
    assert_at(error, tmp_path, "upstreams[0].headers.X-A[0]")


def test_nesting_too_deep_for_the_parser_is_an_error_about_the_file(tmp_path: Path) -> None:
    """Thousands of nested ``[`` make a one-line error about the file, not a RecursionError."""
    error = load_error(tmp_path, UPSTREAM + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_at(error, tmp_path, "(file)")
    assert "nested too deeply" in error.message


def cache_config(tmp_path: Path, cache_dir: Path) -> Path:
    path = tmp_path / "nightproxy.yaml"
    path.write_text(f"cache: {{dir: '{cache_dir}'}}\n" + UPSTREAM)
    return path


def test_prepare_cache_dir_creates_a_missing_directory(tmp_path: Path) -> None:
    """A ``cache.dir`` that does not exist yet is created, parents included."""
    cache_dir = tmp_path / "a" / "b" / "cache"
    prepare_cache_dir(load_config(cache_config(tmp_path, cache_dir), environ={}))
    assert cache_dir.is_dir()


@pytest.mark.parametrize("kind", ["a regular file", "under a regular file"])
def test_an_unusable_cache_dir_is_an_error_at_cache_dir(tmp_path: Path, kind: str) -> None:
    """A ``cache.dir`` that is a file, or cannot be created, is a config error at that key
    naming the directory and the reason."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    cache_dir = blocker if kind == "a regular file" else blocker / "cache"
    config = load_config(cache_config(tmp_path, cache_dir), environ={})
    with pytest.raises(ConfigError) as info:
        prepare_cache_dir(config)
    assert_at(info.value, tmp_path, "cache.dir")
    assert info.value.message.startswith(f"cannot use {cache_dir}: ")
    assert "ot a directory" in info.value.message
