"""Build dates: timestamps read from versions, and the order in which sources are trusted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version

from nightproxy.index.builddate import build_time, version_timestamp
from nightproxy.simple_api.records import DistFile

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FIRST_SEEN = datetime(2026, 11, 21, 6, 30, tzinfo=UTC)
UPLOADED = datetime(2026, 11, 19, 3, 4, 5, tzinfo=UTC)


def wheel(version: str, upload_time: datetime | None = None) -> DistFile:
    return DistFile(
        filename=f"numpy-{version}-py3-none-any.whl",
        url=f"https://example.invalid/numpy-{version}-py3-none-any.whl",
        upstream="nightly",
        upload_time=upload_time,
    )


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.3.0.dev20261120", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2.3.0.dev2026112007", datetime(2026, 11, 20, 7, tzinfo=UTC)),
        ("2.3.0.dev20261120071530", datetime(2026, 11, 20, 7, 15, 30, tzinfo=UTC)),
        ("2.3.0.dev20261120004", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2.3.0rc1.dev20261120", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2.3.0.dev0+20261118", datetime(2026, 11, 18, tzinfo=UTC)),
        ("2.3.0.dev0+20261118231500", datetime(2026, 11, 18, 23, 15, tzinfo=UTC)),
        ("2.3.0+git.20261117", datetime(2026, 11, 17, tzinfo=UTC)),
    ],
)
def test_timestamp_forms_parse_to_utc(version: str, expected: datetime) -> None:
    """Every documented timestamp form in a version yields that instant, in UTC."""
    got = version_timestamp(Version(version), NOW)
    assert got == expected
    assert got is not None
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "version",
    [
        "2.3.0.dev0",
        "2.3.0.dev123",
        "2.3.0.dev20261399",  # month 13
        "2.3.0.dev20260230",  # February 30th
        "2.3.0.dev2026112025",  # hour 25
        "2.3.0.dev19991231",  # before any nightly feed existed
        "2.3.0.dev20261201",  # ten days after "now"
        "2.3.0.dev20991231",  # far future
        "2.3.0.dev0+20261399",
        "2.3.0",
        "2.3.0+cu121",
    ],
)
def test_implausible_or_absent_dates_are_rejected(version: str) -> None:
    """A number that is not a plausible recent date is not a build date."""
    assert version_timestamp(Version(version), NOW) is None


def test_small_clock_skew_is_tolerated() -> None:
    """A builder a day ahead of us (time zones, skew) still counts as dated."""
    tomorrow = NOW + timedelta(days=1)
    version = Version(f"1.0.dev{tomorrow:%Y%m%d}")
    assert version_timestamp(version, NOW) == tomorrow.replace(hour=0)


def test_version_date_beats_upstream_time_and_first_seen() -> None:
    """A dated version wins over the upstream's upload time."""
    when, source = build_time(wheel("2.3.0.dev20261120", UPLOADED), FIRST_SEEN, NOW)
    assert (when, source) == (datetime(2026, 11, 20, tzinfo=UTC), "version")


def test_upstream_time_beats_first_seen() -> None:
    """An undated version takes the upstream's own per-file time."""
    when, source = build_time(wheel("2.3.0.dev0", UPLOADED), FIRST_SEEN, NOW)
    assert (when, source) == (UPLOADED, "upstream")


def test_first_seen_is_the_last_resort() -> None:
    """No date in the version and none from the upstream: the proxy's first sighting."""
    when, source = build_time(wheel("2.3.0.dev0"), FIRST_SEEN, NOW)
    assert (when, source) == (FIRST_SEEN, "first-seen")


def test_implausible_version_date_falls_through_to_upstream_time() -> None:
    """dev20261399 is not a date, so the upstream's time is used instead."""
    when, source = build_time(wheel("2.3.0.dev20261399", UPLOADED), FIRST_SEEN, NOW)
    assert (when, source) == (UPLOADED, "upstream")


def test_date_is_read_from_the_version_not_the_filename() -> None:
    """A date-like build tag or platform tag in the filename is not a version timestamp."""
    file = DistFile(
        filename="numpy-2.3.0.dev0-20261101-py3-none-any.whl",
        url="https://example.invalid/numpy-2.3.0.dev0-20261101-py3-none-any.whl",
        upstream="nightly",
    )
    assert build_time(file, FIRST_SEEN, NOW) == (FIRST_SEEN, "first-seen")


_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


@given(st.datetimes(min_value=_EARLIEST.replace(tzinfo=None), max_value=NOW.replace(tzinfo=None)))
def test_any_plausible_date_round_trips_through_dev_number(moment: datetime) -> None:
    """For any date between 2000 and now, ``1.0.devYYYYMMDD`` carries exactly that date."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=UTC)
    assert version_timestamp(Version(f"1.0.dev{moment:%Y%m%d}"), NOW) == day


@given(st.datetimes(min_value=_EARLIEST.replace(tzinfo=None), max_value=NOW.replace(tzinfo=None)))
def test_any_plausible_instant_round_trips_to_the_second(moment: datetime) -> None:
    """``devYYYYMMDDHHMMSS`` and ``+YYYYMMDDHHMMSS`` keep the full second."""
    exact = moment.replace(microsecond=0, tzinfo=UTC)
    assert version_timestamp(Version(f"1.0.dev{moment:%Y%m%d%H%M%S}"), NOW) == exact
    assert version_timestamp(Version(f"1.0+{moment:%Y%m%d%H%M%S}"), NOW) == exact


@given(st.integers(min_value=0, max_value=10**16))
def test_a_parsed_date_is_always_plausible(number: int) -> None:
    """Whatever the dev number, an accepted date lies between 2000 and shortly after now."""
    got = version_timestamp(Version(f"1.0.dev{number}"), NOW)
    if got is not None:
        assert _EARLIEST <= got <= NOW + timedelta(days=3)
        assert got.tzinfo is not None


@given(
    st.datetimes(min_value=_EARLIEST.replace(tzinfo=None), max_value=NOW.replace(tzinfo=None)),
    st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
)
def test_dated_versions_always_win(moment: datetime, upload: datetime | None) -> None:
    """With a plausible version date, neither upload time nor first-seen is ever used."""
    _when, source = build_time(wheel(f"1.0.dev{moment:%Y%m%d}", upload), FIRST_SEEN, NOW)
    assert source == "version"
