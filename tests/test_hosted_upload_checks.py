"""What a hosted feed checks in an upload before it keeps it (each failure says what is wrong)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from nightproxy.hosted.upload import (
    BodyDigest,
    FileTooLargeError,
    UploadError,
    UploadForm,
    check_digests,
    check_form,
    inspect_file,
)
from tests.wheels import build_sdist, build_wheel, wheel_metadata


def form(**fields: str) -> UploadForm:
    base = {":action": "file_upload", "name": "Demo.Pkg", "version": "1.0.dev0+20260116"}
    base.update(fields)
    return UploadForm.from_fields(base)


WHEEL = "demo_pkg-1.0.dev0+20260116-py3-none-any.whl"


def test_form_and_filename_agree() -> None:
    """A local version is accepted, and names and versions compare normalized."""
    dist = check_form(form(filetype="bdist_wheel"), WHEEL)
    assert (dist.project, str(dist.version)) == ("demo-pkg", "1.0.dev0+20260116")


@pytest.mark.parametrize(
    ("fields", "filename", "message"),
    [
        ({":action": "submit"}, WHEEL, "Unsupported :action"),
        ({}, None, "Upload has no file"),
        ({}, "demo_pkg-1.0.whl", "Invalid distribution filename"),
        ({}, "../demo_pkg-1.0.dev0-py3-none-any.whl", "Invalid distribution filename"),
        ({"name": "other"}, WHEEL, "is of project demo-pkg, but the form says other"),
        ({"version": "1.0.dev1"}, WHEEL, "has version 1.0.dev0+20260116, but the form says"),
        ({"version": "not a version"}, WHEEL, "Invalid version"),
        ({"filetype": "sdist"}, WHEEL, "is a bdist_wheel, but filetype is sdist"),
    ],
)
def test_form_mistakes_are_named(
    fields: dict[str, str], filename: str | None, message: str
) -> None:
    """Each disagreement between form and filename is refused with a message naming it."""
    with pytest.raises(UploadError, match=message.replace("+", r"\+").replace(".", r"\.")):
        check_form(form(**fields), filename)


def test_size_is_refused_while_streaming() -> None:
    """Counting past the limit refuses the body before the bytes go anywhere."""
    body = BodyDigest(max_size=10)
    body.count(10)
    with pytest.raises(FileTooLargeError, match="limit is 10 bytes"):
        body.count(1)


def test_digests_must_match_the_bytes() -> None:
    """A wrong sha256 or blake2 digest is refused; right ones (any case) pass."""
    body = BodyDigest(max_size=100)
    body.count(3)
    body.update(b"abc")
    right = hashlib.sha256(b"abc").hexdigest()
    blake = hashlib.blake2b(b"abc", digest_size=32).hexdigest()
    check_digests(form(sha256_digest=right.upper(), blake2_256_digest=blake), body)
    with pytest.raises(UploadError, match="sha256_digest does not match"):
        check_digests(form(sha256_digest="0" * 64), body)
    with pytest.raises(UploadError, match="blake2_256_digest does not match"):
        check_digests(form(blake2_256_digest="0" * 64), body)


def test_wheel_metadata_is_extracted(tmp_path: Path) -> None:
    """A valid wheel gives back its METADATA, to be served as PEP 658 metadata."""
    path = build_wheel(tmp_path, "demo.pkg", "1.0.dev0+20260116")
    dist = check_form(form(), path.name)
    assert inspect_file(path, path.name, dist) == wheel_metadata(path)


def test_wheel_naming_another_project_is_refused(tmp_path: Path) -> None:
    """A wheel whose METADATA names another project than its filename is refused."""
    built = build_wheel(tmp_path, "other", "1.0.dev0+20260116")
    path = built.rename(tmp_path / WHEEL)
    with pytest.raises(UploadError, match="METADATA says other"):
        inspect_file(path, WHEEL, check_form(form(), WHEEL))


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    """Bytes that are no zip archive are refused as an invalid wheel."""
    path = tmp_path / WHEEL
    path.write_bytes(b"not a zip at all")
    with pytest.raises(UploadError, match="is not a valid wheel"):
        inspect_file(path, WHEEL, check_form(form(), WHEEL))


def test_wheel_without_metadata_is_refused(tmp_path: Path) -> None:
    """A zip with no .dist-info/METADATA is refused."""
    path = tmp_path / WHEEL
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("demo_pkg/__init__.py", "")
    with pytest.raises(UploadError, match=r"exactly one \.dist-info/METADATA"):
        inspect_file(path, WHEEL, check_form(form(), WHEEL))


def test_sdist_is_checked_by_its_format(tmp_path: Path) -> None:
    """A real sdist passes; a .tar.gz that is no gzip stream is refused."""
    path = build_sdist(tmp_path, "demo.pkg", "1.0.dev0+20260116")
    dist = check_form(form(), path.name)
    assert inspect_file(path, path.name, dist) is None
    path.write_bytes(b"plain text")
    with pytest.raises(UploadError, match=r"is not a \.tar\.gz archive"):
        inspect_file(path, path.name, dist)
