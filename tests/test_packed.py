"""The compact forms big pages are held in, and the streaming readers that make them: pure
rules, checked with Hypothesis against the plain ways they replace."""

from __future__ import annotations

import gzip
import json
import string
from datetime import UTC, datetime
from types import MappingProxyType
from urllib.parse import urldefrag, urljoin

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nightproxy.index import prepared
from nightproxy.index.codec import packed_page, page_from_packed
from nightproxy.index.prepared import Representations
from nightproxy.model import DistFile, ProjectPage
from nightproxy.simple_api.jsonstream import ArrayMember, JsonStreamError
from nightproxy.simple_api.names import ProjectNames
from nightproxy.simple_api.packed import (
    SEGMENT,
    PackedFiles,
    decode_dist,
    encode_dist,
)
from nightproxy.simple_api.parse import _make_file

_HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
_FREE = st.text(max_size=12)  # any characters at all: separators and escapes included
_NAMES = st.from_regex(
    r"demo-[0-9]{1,3}(\.[0-9]{1,2})?(\.dev[0-9]{1,8})?-py3-none-any\.whl", fullmatch=True
)


@st.composite
def dist_files(draw: st.DrawFn) -> DistFile:
    filename = draw(_NAMES)
    url = draw(
        st.sampled_from(
            [
                f"https://feed.example/p/{filename}",
                f"https://feed.example/p/{filename}?x=1",
                "https://feed.example/other.whl",
            ]
        )
    )
    yanked = draw(st.one_of(st.booleans(), st.text(min_size=1, max_size=8)))
    return DistFile(
        filename=filename,
        url=url,
        upstream=draw(st.text(min_size=1, max_size=6)),
        hashes=MappingProxyType(
            draw(st.one_of(st.just({}), st.builds(lambda h: {"sha256": h}, _HEX)))
        ),
        requires_python=draw(st.one_of(st.none(), _FREE.filter(bool))),
        yanked=yanked,
        size=draw(st.one_of(st.none(), st.integers(0, 2**40))),
        upload_time=draw(
            st.one_of(
                st.none(), st.datetimes(timezones=st.just(UTC), min_value=datetime(1980, 1, 1))
            )
        ),
        core_metadata=draw(
            st.one_of(st.booleans(), st.builds(lambda h: MappingProxyType({"sha256": h}), _HEX))
        ),
        change_marker=draw(st.one_of(st.none(), _FREE.filter(bool))),
        retained=draw(st.booleans()),
    )


@given(st.lists(dist_files(), max_size=20))
def test_a_packed_file_reads_back_as_the_same_file(files: list[DistFile]) -> None:
    """Every field of every file comes back from its packed record as it went in, whatever
    characters the free-text fields hold."""
    packed = PackedFiles.of(files)
    assert list(packed) == files
    assert list(packed.filenames()) == [f.filename for f in files]
    for file in files:
        record = encode_dist(file)
        assert record is not None
        assert decode_dist(record) == file


def test_a_url_holding_a_record_separator_is_left_out() -> None:
    """A URL no client could fetch (it holds a control character the records use) is not
    packed, rather than corrupting its neighbours."""
    bad = DistFile("demo-1.0-py3-none-any.whl", "https://f.example/\x1f/x.whl", "up")
    good = DistFile(
        "demo-2.0-py3-none-any.whl", "https://f.example/demo-2.0-py3-none-any.whl", "up"
    )
    assert list(PackedFiles.of([bad, good])) == [good]


def test_a_page_of_many_segments_reads_back_whole() -> None:
    """Files spread over several segments keep their order and fields, also once saved."""
    files = [
        DistFile(f"demo-1.0.dev{n}-py3-none-any.whl", f"https://f.example/{n}.whl", "up")
        for n in range(2 * SEGMENT + 17)
    ]
    page = ProjectPage(name="demo", files=PackedFiles.of(files), etag='"e"')  # type: ignore[arg-type]
    assert list(page.files) == files
    assert page.files[SEGMENT] == files[SEGMENT]
    assert page.files[-1] == files[-1]
    again = page_from_packed(packed_page(page))
    assert (again.name, again.etag, list(again.files)) == ("demo", '"e"', files)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(st.text(max_size=6).filter(lambda k: k != "files"), _JSON, max_size=3),
    st.lists(_JSON, max_size=8),
    st.lists(st.integers(0, 400), max_size=6),
    st.booleans(),
)
@settings(max_examples=300)
# A chunk ending inside a number's exponent ("...e+" then "16]}"), found by this test.
@example({}, [3.9434785314814536e16], [len('{"files": [3.9434785314814536e+')], False)
@example({"k": 1e16}, [], [len('{"k": 1e+')], False)
def test_array_elements_read_in_any_chunks_are_what_json_loads_reads(
    others: dict[str, object], files: list[object], cuts: list[int], spaced: bool
) -> None:
    """Read in chunks cut anywhere, the wanted array's elements and the object's other members
    are exactly what ``json.loads`` makes of the whole text."""
    text = json.dumps({**others, "files": files}, indent=1 if spaced else None)
    got: list[object] = []
    reader = ArrayMember("files", got.append)
    start = 0
    for cut in sorted(c for c in cuts if c < len(text)):
        reader.feed(text[start:cut])
        start = cut
    reader.feed(text[start:])
    reader.close()
    assert got == files
    assert reader.others == others
    assert reader.found


def _read(text: str) -> ArrayMember:
    reader = ArrayMember("files", lambda _e: None)
    reader.feed(text)
    reader.close()
    return reader


@pytest.mark.parametrize("text", ['{"files": [1, 2', '{"files": [1 2]}', "[1]", '{"files": [1]} x'])
def test_a_cut_or_malformed_document_is_an_error(text: str) -> None:
    """A document cut short or malformed is refused, never read as a shorter list."""
    with pytest.raises(JsonStreamError):
        _read(text)


def test_a_member_that_is_no_array_is_not_found() -> None:
    """``files`` that is not a list is no list of files."""
    assert not _read('{"files": 3}').found


_URL_CHARS = string.ascii_letters + string.digits + "/:.?#;=%&@+ \t~-_[]\\\x01é"


@given(
    st.sampled_from(["https://f.example/simple/demo/", "http://f.example/a/b/"]),
    st.text(_URL_CHARS, max_size=40),
    st.sampled_from(["", "https://", "http://", "HTTPS://", "//", "/"]),
)
@settings(max_examples=500)
def test_links_resolve_as_urljoin_and_urldefrag_resolve_them(
    base: str, tail: str, scheme: str
) -> None:
    """The shortcut for absolute links gives the URL ``urljoin`` and ``urldefrag`` give, for
    any link; a link neither can take is skipped."""
    href = scheme + tail + "/demo-1.0-py3-none-any.whl"
    try:
        expected: str | None = urldefrag(urljoin(base, href))[0]
    except ValueError:
        expected = None
    try:
        file = _make_file(
            url=href,
            base_url=base,
            upstream="up",
            project="demo",  # type: ignore[arg-type]
            filename_hint="demo-1.0-py3-none-any.whl",
            hashes=MappingProxyType({}),
            requires_python=None,
            yanked=False,
            size=None,
            upload_time=None,
            core_metadata=False,
        )
    except ValueError:
        return  # skipped as unusable, as the plain way would have failed to resolve it
    if file is not None:
        assert file.url == expected


@given(st.lists(st.text("abcdefgh-", min_size=1, max_size=6), max_size=300))
def test_project_names_are_the_sorted_distinct_names(names: list[str]) -> None:
    """However many runs the names are sorted in, the list holds each name once, in order."""
    built = ProjectNames.build(names)
    assert list(built) == sorted(set(names))
    assert len(built) == len(set(names))
    assert all(name in built for name in names)
    assert "zzz" not in built


def test_project_names_sorted_in_runs_merge_into_one_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names sorted in many short runs (as a million are) come out as one sorted list."""
    from nightproxy.simple_api import names as names_module

    monkeypatch.setattr(names_module, "RUN", 7)
    names = [f"p{n * 7919 % 1000:03d}" for n in range(1000)]
    assert list(ProjectNames.build(names)) == sorted(set(names))


@pytest.mark.parametrize("size", [10, 200_000])
def test_a_big_page_is_kept_compressed_and_served_whole(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page over the size limit is kept gzip-compressed only: the plain representation
    inflates to exactly the rendered bytes, in pieces, and both share one ETag digest."""
    monkeypatch.setattr(prepared, "BIG", 50_000)
    body = b"".join(f"<a href='x{n}'>x{n}</a>\n".encode() for n in range(size // 16 + 1))
    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    made = Representations(lambda _fmt: iter(pieces))
    plain = made.make("html", False)
    packed = made.make("html", True)
    assert b"".join(plain.chunks()) == body
    assert plain.length == len(body)
    assert gzip.decompress(packed.body) == body
    assert plain.inflate == (len(body) > prepared.BIG)
    assert packed.etag == plain.etag[:-1] + '-gz"'
    if plain.inflate:
        assert plain.body is packed.body
        assert max(len(p) for p in plain.chunks()) <= prepared.INFLATE_PIECE
