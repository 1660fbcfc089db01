"""Config edge cases found by fuzzing and by attack: an alias bomb, a NUL byte, a duration
without its unit, a huge bad value echoed back; and durations printed as a user writes them."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from tests.test_cli import GOOD_UPSTREAM, run
from tests.test_config import UPSTREAM, assert_at, load, load_error


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each level is a list of ten aliases of the level below."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for below, name in itertools.pairwise("abcdefghijklmnopqrstuvwxyz"[: levels + 1]):
        lines.append(f"{name}: &{name} [{', '.join([f'*{below}'] * 10)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_with_one_line_and_exit_2(tmp_path: Path) -> None:
    """``check`` on a billion-laughs file answers at once (within the run's time bound) with a
    one-line config error at exit 2, instead of expanding it."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(GOOD_UPSTREAM + alias_bomb())
    result = run("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: e: " in result.stderr
    assert "aliases" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_an_alias_bomb_is_reported_where_it_grows_too_big(tmp_path: Path) -> None:
    """The error names the first value whose expansion passes the bound."""
    error = load_error(tmp_path, UPSTREAM + alias_bomb(levels=5))
    assert_at(error, tmp_path, "e")
    assert "more than 100000 values" in error.message


def test_a_merge_key_bomb_is_refused(tmp_path: Path) -> None:
    """Merge keys (``<<: [*x, *x, ...]``) multiply like aliases and are bounded the same way."""
    lines = ["m0: &m0 {k: v}"]
    for level in range(1, 8):
        merged = ", ".join([f"*m{level - 1}"] * 10)
        lines.append(f"m{level}: &m{level} {{<<: [{merged}]}}")
    error = load_error(tmp_path, UPSTREAM + "\n".join(lines) + "\n")
    assert "aliases" in error.message


def test_many_aliases_below_the_bound_still_load(tmp_path: Path) -> None:
    """Sharing a value through aliases is fine while the expanded file stays config-sized."""
    text = (
        UPSTREAM
        + "    headers: &h {X-A: a, X-B: b}\n"
        + "".join(
            f"  - {{name: u{i}, kind: simple, url: 'https://u{i}.invalid/', headers: *h}}\n"
            for i in range(200)
        )
    )
    config = load(tmp_path, text)
    assert len(config.upstreams) == 201
    assert dict(config.upstreams[-1].headers) == {"X-A": "a", "X-B": "b"}


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ('cache: {dir: "/tmp/a\\0b"}\n', "cache.dir"),
        ('server: {host: "local\\0host"}\n', "server.host"),
    ],
)
def test_a_nul_byte_is_an_error_at_its_key(tmp_path: Path, snippet: str, key: str) -> None:
    """A NUL character in a path or any other string is refused at its key, before anything
    tries to open such a path."""
    error = load_error(tmp_path, snippet + UPSTREAM)
    assert_at(error, tmp_path, key)
    assert "NUL" in error.message


def test_a_nul_byte_in_cache_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    """``check`` with a NUL in ``cache.dir`` prints one line naming the key and exits 2."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text('cache: {dir: "./a\\0b"}\n' + GOOD_UPSTREAM)
    result = run("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: cache.dir: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_an_unknown_home_directory_is_an_error_at_its_key(tmp_path: Path) -> None:
    """``~nosuchuser/cache`` cannot be expanded: a config error at the key, not a traceback."""
    error = load_error(tmp_path, "cache: {dir: ~no-such-user-np/cache}\n" + UPSTREAM)
    assert_at(error, tmp_path, "cache.dir")


@pytest.mark.parametrize(
    ("snippet", "key", "advice"),
    [
        ("index: {ttl: 10}\n", "index.ttl", "10s"),
        ("index: {ttl: '10'}\n", "index.ttl", "10s"),
        ("index: {stale_if_error: 1.5}\n", "index.stale_if_error", "1.5s"),
        ("retention: {keep_missing: 3}\n", "retention.keep_missing", "3s"),
        ("cache: {max_age: 86400}\n", "cache.max_age", "86400s"),
    ],
)
def test_a_duration_without_a_unit_is_refused(
    tmp_path: Path, snippet: str, key: str, advice: str
) -> None:
    """A bare number is not taken as seconds: the error says how to write it with a unit."""
    error = load_error(tmp_path, snippet + UPSTREAM)
    assert_at(error, tmp_path, key)
    assert f"write {advice}" in error.message


def test_a_duration_without_a_unit_is_refused_in_an_upstream(tmp_path: Path) -> None:
    """``timeout: 10`` on an upstream is refused the same way."""
    error = load_error(tmp_path, UPSTREAM + "    timeout: 10\n")
    assert_at(error, tmp_path, "upstreams[0].timeout")
    assert "write 10s" in error.message


def test_a_duration_from_the_environment_needs_its_unit_too(tmp_path: Path) -> None:
    """``ttl: ${TTL}`` with TTL=10 is refused like ``ttl: 10``."""
    error = load_error(tmp_path, "index: {ttl: '${TTL}'}\n" + UPSTREAM, {"TTL": "10"})
    assert_at(error, tmp_path, "index.ttl")
    assert "write 10s" in error.message


README_ENV = dict.fromkeys(
    ("AZURE_PAT", "SKLEARN_UPLOAD_TOKEN", "FEED_ADMIN_TOKEN"), "environment-value-0123456789"
) | {"SHARED_KEY_ID": "id", "SHARED_SECRET": "secret"}


def readme_examples() -> list[str]:
    """The YAML blocks of the README's configuration reference."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    reference = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in reference.split("```yaml\n")[1:]]


def test_the_shipped_config_still_loads(tmp_path: Path) -> None:
    """The shipped nightproxy.yaml uses units everywhere and passes validation."""
    text = (Path(__file__).resolve().parents[1] / "nightproxy.yaml").read_text()
    assert load(tmp_path, text).upstreams


@pytest.mark.parametrize("index", range(3))
def test_the_readme_examples_still_load(tmp_path: Path, index: int) -> None:
    """Each YAML example of the README's configuration reference passes validation (with an
    upstream added where the example shows only other sections)."""
    text = readme_examples()[index]
    if "upstreams:" not in text:
        text += UPSTREAM
    assert load(tmp_path, text, README_ENV).upstreams


@pytest.mark.parametrize(
    "snippet",
    [
        "index: {{ttl: {value}}}\n",
        "cache: {{max_size: {value}}}\n",
        "logging: {{format: {value}}}\n",
        "upstreams:\n  - {{name: {value}, kind: simple, url: 'https://a.invalid/'}}\n",
        "projects:\n  ? {value}\n  : [sp]\n",
    ],
    ids=["duration", "size", "choice", "upstream-name", "project-name"],
)
def test_a_huge_bad_value_is_cut_short_in_the_error(tmp_path: Path, snippet: str) -> None:
    """A 100 KB bad value is echoed as its first 80 characters and an ellipsis."""
    value = "x" * 99_999 + "!"
    base = UPSTREAM if "upstreams" not in snippet else ""
    error = load_error(tmp_path, snippet.format(value=value) + base)
    assert "x" * 80 + "…" in str(error)
    assert "x" * 81 not in str(error)
    assert len(str(error)) < 400


def test_a_huge_unknown_key_is_cut_short_in_the_error(tmp_path: Path) -> None:
    """An unknown key of 100 KB is named by its first 80 characters and an ellipsis."""
    # An explicit key (`? key`): YAML allows a plain implicit key only up to 1024 characters.
    error = load_error(tmp_path, "server:\n  ? " + "k" * 100_000 + "\n  : 1\n" + UPSTREAM)
    assert error.key == "server." + "k" * 80 + "…"
    assert len(str(error)) < 400


@pytest.mark.parametrize(
    ("written", "printed"),
    [
        ("14d", "14d"),
        ("7d", "7d"),
        ("21d", "21d"),
        ("10m", "10m"),
        ("90s", "90s"),
        ("2h", "2h"),
        ("1d", "1d"),
    ],
)
def test_check_prints_a_duration_as_it_was_written(
    tmp_path: Path, written: str, printed: str
) -> None:
    """``check`` prints ``14d`` as ``14d``, not ``2w``: days are how such spans are read."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(f"cache: {{dir: ./cache, max_age: {written}}}\n" + GOOD_UPSTREAM)
    result = run("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["cache"]["max_age"] == printed
