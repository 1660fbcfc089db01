"""Distribution filenames from untrusted upstreams and clients, through ``packaging`` only."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

from nightproxy.simple_api.filenames import (
    MAX_FILENAME,
    DistName,
    is_safe_filename,
    parse_dist_filename,
)


def test_a_version_too_long_for_an_int_is_no_distribution() -> None:
    """A release segment of thousands of digits (Python refuses to make an int of it) makes
    a filename no distribution, never an exception."""
    assert parse_dist_filename("demo-" + "1" * 5000 + "-py3-none-any.whl") is None
    assert parse_dist_filename("demo-" + "1" * 5000 + ".tar.gz") is None


def test_a_name_longer_than_any_file_system_holds_is_no_distribution() -> None:
    """A name over the limit is refused before parsing (and before the parse memo)."""
    long_name = "demo-1.0-py3-none-" + "x" * MAX_FILENAME + ".whl"
    assert parse_dist_filename(long_name) is None


def test_a_long_real_wheel_name_still_parses() -> None:
    """Wheels with several platform tags stay well inside the limit."""
    name = (
        "numpy-2.3.0.dev0+git20261130-cp313-cp313t-"
        "macosx_10_13_x86_64.macosx_11_0_arm64.macosx_10_13_universal2.whl"
    )
    parsed = parse_dist_filename(name)
    assert parsed is not None
    assert parsed.project == "numpy"


@given(st.text(max_size=600))
def test_parse_dist_filename_never_raises(filename: str) -> None:
    """Whatever an upstream or a client sends, the answer is a DistName or None."""
    for candidate in (filename, filename + ".whl", filename + ".tar.gz"):
        parsed = parse_dist_filename(candidate)
        assert parsed is None or isinstance(parsed, DistName)


_PARTS = st.sampled_from(
    [
        "demo",
        "Demo_x",
        "a__b",
        "1.0",
        "1.0.dev20260101",
        "2!1.0+local.7",
        "x y",
        "",
        "1a",
        "..",
        "py3",
        "cp311",
        "none",
        "any",
        "manylinux_2_17_x86_64.manylinux2014_x86_64",
        "7build",
    ]
)


@given(st.lists(_PARTS, min_size=1, max_size=7), st.sampled_from([".whl", ".tar.gz", ".zip"]))
# Tags packaging 26.4 refuses (a version where the python tag goes), found by this test.
@example(["demo", "1.0", "1.0", "demo", "demo"], ".whl")
def test_wheel_names_parse_exactly_as_packaging_parses_them(parts: list[str], ext: str) -> None:
    """Parsing a wheel's name and version once per build (not once per platform wheel) gives
    what ``packaging`` gives for the whole filename, for valid and invalid names alike."""
    filename = "-".join(parts) + ext
    expected: DistName | None = None
    if is_safe_filename(filename):
        try:
            if ext == ".whl":
                name, version, _build, _tags = parse_wheel_filename(filename)
            else:
                name, version = parse_sdist_filename(filename)
            expected = DistName(name, version)
        except (InvalidWheelFilename, InvalidSdistFilename):
            expected = None
    assert parse_dist_filename(filename) == expected
