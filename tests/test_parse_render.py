"""Pure parsing and rendering of simple-index pages, and content negotiation."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from nightproxy.simple_api.negotiate import negotiate
from nightproxy.simple_api.parse import (
    HTML_TYPE,
    JSON_TYPE,
    PageParseError,
    parse_project_html,
    parse_project_json,
    parse_upload_time,
)
from nightproxy.simple_api.records import DistFile, PublishedFile
from nightproxy.simple_api.render import (
    format_upload_time,
    render_project_html,
    render_project_json,
)

PROJECT = canonicalize_name("demo")
BASE = "https://proxy.example/simple/demo/"
SHA = "a" * 64
META_SHA = "b" * 64


def published(
    filename: str,
    *,
    hashes: dict[str, str] | None = None,
    requires_python: str | None = None,
    yanked: bool | str = False,
    core_metadata: bool | dict[str, str] = False,
    upload_time: datetime | None = None,
    size: int | None = None,
) -> PublishedFile:
    source = DistFile(
        filename=filename,
        url=f"https://upstream.invalid/{filename}",
        upstream="nightly",
        hashes=hashes or {},
        requires_python=requires_python,
        yanked=yanked,
        upload_time=upload_time,
        size=size,
        core_metadata=core_metadata,
    )
    return PublishedFile(
        source=source,
        url=f"../../files/demo/{SHA}/{filename}",
        hashes=hashes or {},
        core_metadata=core_metadata,
        build_time=upload_time,
        build_time_source="upstream" if upload_time else None,
    )


SAMPLE = [
    published(
        "demo-1.0-py3-none-any.whl",
        hashes={"sha256": SHA},
        requires_python=">=3.9,<4",
        core_metadata={"sha256": META_SHA},
        upload_time=datetime(2026, 11, 20, 1, 2, 3, 456789, tzinfo=UTC),
        size=1234,
    ),
    published(
        "demo-1.1.dev20261120-py3-none-any.whl",
        hashes={"sha256": "c" * 64},
        yanked="broken <build> & more",
        core_metadata=True,
    ),
    published("demo-1.1.dev20261119-py3-none-any.whl", yanked=True),
    published("demo-1.0.tar.gz", hashes={"sha256": "d" * 64}, requires_python="!=3.10.*"),
]


def facts(file: DistFile) -> tuple[object, ...]:
    return (
        file.filename,
        dict(file.hashes),
        file.requires_python,
        file.yanked,
        file.upload_time,
        file.core_metadata if isinstance(file.core_metadata, bool) else dict(file.core_metadata),
    )


def expected_facts(pub: PublishedFile) -> tuple[object, ...]:
    meta = pub.core_metadata
    return (
        pub.filename,
        dict(pub.hashes),
        pub.source.requires_python,
        pub.source.yanked,
        pub.source.upload_time,
        meta if isinstance(meta, bool) else dict(meta),
    )


# -- round trips --------------------------------------------------------------------------------


def test_json_round_trip_keeps_every_fact() -> None:
    """Render JSON, parse it back: filenames, hashes, requires-python, yanked, upload-time and
    core-metadata all survive, and relative links resolve against the page URL."""
    page = parse_project_json(render_project_json(PROJECT, SAMPLE), BASE, "proxy", PROJECT)
    assert [facts(f) for f in page.files] == [expected_facts(p) for p in SAMPLE]
    assert page.files[0].url == f"https://proxy.example/files/demo/{SHA}/demo-1.0-py3-none-any.whl"
    assert page.files[0].size == 1234


def test_html_round_trip_keeps_every_fact() -> None:
    """Render HTML, parse it back: the same facts, with ``<``/``&`` in attributes escaped."""
    body = render_project_html(PROJECT, SAMPLE)
    assert b"<build>" not in body
    page = parse_project_html(body, BASE, "proxy", PROJECT)
    assert [facts(f) for f in page.files] == [expected_facts(p) for p in SAMPLE]


def test_json_page_lists_versions_of_the_files_shown() -> None:
    """PEP 700 ``versions``: every version of a listed file, once, in version order."""
    doc = json.loads(render_project_json(PROJECT, SAMPLE))
    assert doc["versions"] == ["1.0", "1.1.dev20261119", "1.1.dev20261120"]
    assert doc["meta"]["api-version"] == "1.1"


_filenames = st.builds(
    lambda major, dev: (
        f"demo-{major}.0.dev{dev}-py3-none-any.whl"
        if dev is not None
        else f"demo-{major}.0-py3-none-any.whl"
    ),
    st.integers(0, 99),
    st.one_of(st.none(), st.integers(0, 10**8)),
)
_hex = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def published_files(draw: st.DrawFn) -> list[PublishedFile]:
    names = draw(st.lists(_filenames, max_size=8, unique=True))
    out = []
    for name in names:
        out.append(
            published(
                name,
                hashes=draw(st.one_of(st.just({}), st.builds(lambda h: {"sha256": h}, _hex))),
                requires_python=draw(st.sampled_from([None, ">=3.9", "<4,>=3.10", "!=3.11.*"])),
                yanked=draw(
                    st.one_of(st.booleans(), st.text(min_size=1, max_size=20).filter(str.strip))
                ),
                core_metadata=draw(
                    st.one_of(st.booleans(), st.builds(lambda h: {"sha256": h}, _hex))
                ),
                upload_time=draw(
                    st.one_of(
                        st.none(),
                        st.datetimes(
                            min_value=datetime(2000, 1, 1),
                            max_value=datetime(2100, 1, 1),
                            timezones=st.just(UTC),
                        ),
                    )
                ),
            )
        )
    return out


@given(published_files())
def test_json_round_trip_property(files: list[PublishedFile]) -> None:
    """For any set of published files, the JSON page parses back to the same facts."""
    page = parse_project_json(render_project_json(PROJECT, files), BASE, "proxy", PROJECT)
    assert [facts(f) for f in page.files] == [expected_facts(p) for p in files]


@given(published_files())
def test_html_round_trip_property(files: list[PublishedFile]) -> None:
    """The HTML page carries the same facts, whatever the yank reasons contain."""
    page = parse_project_html(render_project_html(PROJECT, files), BASE, "proxy", PROJECT)
    got = [facts(f) for f in page.files]
    want = [expected_facts(p) for p in files]
    # HTML cannot tell an empty yank reason from none: both read back as True.
    assert got == want


# -- HTML robustness ----------------------------------------------------------------------------

MESSY = b"""<!DOCTYPE html>
<html><head><title>Links for demo</title><!-- <a href="demo-9.9-py3-none-any.whl">x</a> -->
</head><body>
<a href="https://upstream.example/pkgs/demo-1.0-py3-none-any.whl#sha256=%s"
   data-requires-python="&gt;=3.9,&lt;4">demo-1.0-py3-none-any.whl</a>
<a href="/root/demo/demo-1.1.dev1-py3-none-any.whl" data-yanked>yanked, no reason</a>
<a href="../../files/demo-1.1.dev2-py3-none-any.whl" data-yanked="bad &amp; broken">why</a>
<a href="demo-1.1.dev3-py3-none-any.whl" data-dist-info-metadata="sha256=%s">old attr</a>
<a href="demo-1.1.dev4-py3-none-any.whl" data-core-metadata="true">new attr</a>
<a href="demo-1.1.dev5-py3-none-any.whl" data-core-metadata="sha256=%s"
   data-dist-info-metadata="sha256=%s">both</a>
<a href="https://example.invalid/">homepage</a>
<a href="../">parent</a>
<a name="anchor-without-href">nothing</a>
<a href="mailto:someone@example.invalid">mail</a>
<a href="other-2.0-py3-none-any.whl">another project's file</a>
<a href="README.txt">not a distribution</a>
</body></html>
<!-- served by some CDN --><a href="demo-0.1-py3-none-any.whl">after the end</a>
""" % (SHA.encode(), META_SHA.encode(), META_SHA.encode(), META_SHA.encode())


@pytest.fixture
def messy() -> dict[str, DistFile]:
    page = parse_project_html(MESSY, BASE, "up", PROJECT)
    return {f.filename: f for f in page.files}


def test_html_parser_keeps_only_this_projects_distributions(messy: dict[str, DistFile]) -> None:
    """Homepage, parent, mail, name-only, other-project and non-dist anchors are skipped;
    commented-out links are not links; anchors after ``</html>`` still count."""
    assert set(messy) == {
        "demo-1.0-py3-none-any.whl",
        "demo-1.1.dev1-py3-none-any.whl",
        "demo-1.1.dev2-py3-none-any.whl",
        "demo-1.1.dev3-py3-none-any.whl",
        "demo-1.1.dev4-py3-none-any.whl",
        "demo-1.1.dev5-py3-none-any.whl",
        "demo-0.1-py3-none-any.whl",
    }


def test_html_parser_resolves_absolute_root_relative_and_relative_links(
    messy: dict[str, DistFile],
) -> None:
    """Links resolve against the page URL and lose their fragment."""
    assert messy["demo-1.0-py3-none-any.whl"].url == (
        "https://upstream.example/pkgs/demo-1.0-py3-none-any.whl"
    )
    assert messy["demo-1.1.dev1-py3-none-any.whl"].url == (
        "https://proxy.example/root/demo/demo-1.1.dev1-py3-none-any.whl"
    )
    assert messy["demo-1.1.dev2-py3-none-any.whl"].url == (
        "https://proxy.example/files/demo-1.1.dev2-py3-none-any.whl"
    )
    assert messy["demo-1.1.dev3-py3-none-any.whl"].url == BASE + "demo-1.1.dev3-py3-none-any.whl"


def test_html_parser_reads_hashes_and_unescapes_attributes(messy: dict[str, DistFile]) -> None:
    """``#sha256=`` becomes a hash; ``&gt;``/``&lt;`` in requires-python are decoded."""
    first = messy["demo-1.0-py3-none-any.whl"]
    assert dict(first.hashes) == {"sha256": SHA}
    assert first.requires_python == ">=3.9,<4"


def test_html_parser_reads_yanked_with_and_without_reason(messy: dict[str, DistFile]) -> None:
    """A bare ``data-yanked`` is True, a valued one keeps its (unescaped) reason."""
    assert messy["demo-1.1.dev1-py3-none-any.whl"].yanked is True
    assert messy["demo-1.1.dev2-py3-none-any.whl"].yanked == "bad & broken"
    assert messy["demo-1.1.dev3-py3-none-any.whl"].yanked is False


def test_html_parser_reads_both_metadata_attributes(messy: dict[str, DistFile]) -> None:
    """PEP 658's ``data-dist-info-metadata`` and PEP 714's ``data-core-metadata`` both count."""
    assert dict(messy["demo-1.1.dev3-py3-none-any.whl"].core_metadata) == {"sha256": META_SHA}  # type: ignore[arg-type]
    assert messy["demo-1.1.dev4-py3-none-any.whl"].core_metadata is True
    assert dict(messy["demo-1.1.dev5-py3-none-any.whl"].core_metadata) == {"sha256": META_SHA}  # type: ignore[arg-type]
    assert messy["demo-1.1.dev2-py3-none-any.whl"].core_metadata is False


def test_html_parser_honours_base_href() -> None:
    """A ``<base href>`` changes what relative links resolve against."""
    body = (
        b'<html><head><base href="https://cdn.example/wheels/"></head><body>'
        b'<a href="demo-1.0-py3-none-any.whl">x</a></body></html>'
    )
    page = parse_project_html(body, BASE, "up", PROJECT)
    assert [f.url for f in page.files] == ["https://cdn.example/wheels/demo-1.0-py3-none-any.whl"]


@pytest.mark.parametrize("body", [b"", b"just some text", b'{"files": []}'])
def test_html_parser_rejects_documents_that_are_not_pages(body: bytes) -> None:
    """A body with no HTML at all is an error, not an empty project."""
    with pytest.raises(PageParseError):
        parse_project_html(body, BASE, "up", PROJECT)


def test_json_parser_skips_malformed_entries() -> None:
    """Entries without a URL, with a non-http URL or of another project are skipped, and
    malformed hashes are dropped rather than trusted."""
    doc = {
        "meta": {"api-version": "1.1"},
        "name": "demo",
        "files": [
            {"filename": "demo-1.0-py3-none-any.whl"},
            {"filename": "demo-1.1-py3-none-any.whl", "url": "file:///etc/passwd"},
            {"filename": "other-1.0-py3-none-any.whl", "url": "other-1.0-py3-none-any.whl"},
            "not an object",
            {
                "filename": "demo-1.2-py3-none-any.whl",
                "url": "demo-1.2-py3-none-any.whl",
                "hashes": {"sha256": "not-hex", "md5": "ABCDEF"},
                "upload-time": "garbage",
                "size": -5,
            },
        ],
    }
    page = parse_project_json(json.dumps(doc).encode(), BASE, "up", PROJECT)
    assert [f.filename for f in page.files] == ["demo-1.2-py3-none-any.whl"]
    (only,) = page.files
    assert dict(only.hashes) == {"md5": "abcdef"}
    assert only.upload_time is None
    assert only.size is None


# -- negotiation --------------------------------------------------------------------------------

_MEDIA = [
    JSON_TYPE,
    HTML_TYPE,
    "text/html",
    "application/json",
    "text/*",
    "application/*",
    "*/*",
    "image/png",
]
_FORMAT_TYPES = {"json": {JSON_TYPE}, "html": {HTML_TYPE, "text/html"}}


def _matches(media_range: str, media: str) -> bool:
    if media_range == "*/*":
        return True
    if media_range.endswith("/*"):
        return media.startswith(media_range[:-1])
    return media_range == media


def _specificity(media_range: str) -> int:
    return 0 if media_range == "*/*" else 1 if media_range.endswith("/*") else 2


def _q_for(entries: list[tuple[str, float]], media: str) -> float:
    """RFC 9110: a type's quality is that of the most specific range that matches it."""
    matching = [(r, q) for r, q in entries if _matches(r, media)]
    if not matching:
        return 0.0
    best = max(_specificity(r) for r, _q in matching)
    return max(q for r, q in matching if _specificity(r) == best)


_qs = st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.2, 0.5, 0.9, 1.0])
_accepts = st.lists(st.tuples(st.sampled_from(_MEDIA), _qs), min_size=1, max_size=6)


def _header(entries: list[tuple[str, float]], spaces: bool) -> str:
    sep = "; " if spaces else ";"
    return ", ".join(m if q == 1.0 else f"{m}{sep}q={q:g}" for m, q in entries)


@given(_accepts, st.booleans())
def test_negotiate_never_picks_a_format_the_client_refused(
    entries: list[tuple[str, float]], spaces: bool
) -> None:
    """The chosen format has a media type of positive quality for the client, and when a
    format is acceptable at all, something is chosen."""
    fmt = negotiate(_header(entries, spaces))
    acceptable = {
        name
        for name, types in _FORMAT_TYPES.items()
        if any(_q_for(entries, media) > 0 for media in types)
    }
    if fmt is None:
        assert not acceptable
    else:
        assert fmt in acceptable


@given(_accepts, st.booleans())
def test_negotiate_picks_the_highest_quality(
    entries: list[tuple[str, float]], spaces: bool
) -> None:
    """No acceptable format the client rates strictly higher is passed over."""
    fmt = negotiate(_header(entries, spaces))
    quality = {
        name: max(_q_for(entries, media) for media in types)
        for name, types in _FORMAT_TYPES.items()
    }
    if fmt is not None:
        assert quality[fmt] == max(quality.values())


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "html"),
        ("", "html"),
        (
            "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
            "text/html; q=0.01",
            "json",
        ),
        (
            "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
            "text/html;q=0.01",
            "json",
        ),
        ("text/html", "html"),
        ("*/*", "html"),
        ("application/*", "json"),
        ("application/vnd.pypi.simple.v1+json;q=0, */*", "html"),
        ("text/html;q=0, application/vnd.pypi.simple.v1+html;q=0, */*", "json"),
        ("application/vnd.pypi.simple.v1+json;q=nan", None),
        ("image/png", None),
        ("application/vnd.pypi.simple.v1+json;q=0", None),
    ],
)
def test_negotiate_examples(accept: str | None, expected: str | None) -> None:
    """pip's and uv's headers get JSON, browsers and no header get HTML."""
    assert negotiate(accept) == expected


def test_format_parameter_wins_over_accept() -> None:
    """``?format=`` overrides Accept; an unknown one is not acceptable."""
    assert negotiate("text/html", "application/vnd.pypi.simple.v1+json") == "json"
    assert negotiate(JSON_TYPE, "text/html") == "html"
    assert negotiate(JSON_TYPE, "image/png") is None


# -- PEP 700 upload-time ------------------------------------------------------------------------


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
        ),
    )
)
def test_upload_time_always_ends_with_z_and_parses_back(moment: datetime) -> None:
    """Any aware time is published as UTC ISO 8601 with ``Z`` and reads back as the same
    instant (uv rejects any other form)."""
    text = format_upload_time(moment)
    assert text.endswith("Z")
    assert "+" not in text
    assert datetime.fromisoformat(text[:-1] + "+00:00") == moment
    assert parse_upload_time(text) == moment


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T01:02:03Z", datetime(2026, 11, 20, 1, 2, 3, tzinfo=UTC)),
        ("2026-11-20T01:02:03.5+01:00", datetime(2026, 11, 20, 0, 2, 3, 500000, tzinfo=UTC)),
        ("2026-11-20 01:02:03.000000+00:00", datetime(2026, 11, 20, 1, 2, 3, tzinfo=UTC)),
        ("2026-11-20T01:02:03", datetime(2026, 11, 20, 1, 2, 3, tzinfo=UTC)),
        ("yesterday", None),
        ("", None),
    ],
)
def test_parse_upload_time_forms(text: str, expected: datetime | None) -> None:
    """Upstream times in any ISO 8601 form become aware UTC datetimes; junk is ignored."""
    assert parse_upload_time(text) == expected


def test_invalid_distribution_names_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A link that looks like a distribution but is not a valid name is skipped and named in a
    warning; an ordinary non-file link (a homepage) is skipped silently."""
    body = (
        b'<html><body><a href="https://example.invalid/">homepage</a>'
        b'<a href="/files/..%2Fevil.whl">evil</a>'
        b'<a href="/files/demo-1.0-py3-none-any.whl">ok</a></body></html>'
    )
    with caplog.at_level(logging.WARNING):
        page = parse_project_html(
            body, "http://up.invalid/simple/demo/", "up", canonicalize_name("demo")
        )
    assert [f.filename for f in page.files] == ["demo-1.0-py3-none-any.whl"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "evil.whl" in warnings[0]


@pytest.mark.parametrize("key", ["core-metadata", "dist-info-metadata", "data-dist-info-metadata"])
def test_json_parser_reads_metadata_under_each_spelling(key: str) -> None:
    """Upstream JSON may name PEP 658 metadata by PEP 714's key, PEP 691's original one, or
    the public index's misspelling of it: each is read."""
    digest = "ab" * 32
    doc = {
        "meta": {"api-version": "1.1"},
        "name": "demo",
        "files": [
            {
                "filename": "demo-1.0-py3-none-any.whl",
                "url": "demo-1.0-py3-none-any.whl",
                "hashes": {},
                key: {"sha256": digest},
            }
        ],
    }
    (only,) = parse_project_json(json.dumps(doc).encode(), BASE, "up", PROJECT).files
    assert only.core_metadata == {"sha256": digest}
