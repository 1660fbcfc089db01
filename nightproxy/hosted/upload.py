"""Checking an upload to a hosted feed, as the legacy upload API's clients send it.

Every check raises ``UploadError`` with a message that says what is wrong; the server answers
it as a 400 whose reason phrase and body carry that message. Nothing here trusts the client:
the filename, the form fields and the archive are all checked against each other.

The order follows what a client can fix first: the form, the filename, then the bytes.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

from packaging.utils import InvalidName, NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from nightproxy.simple_api.filenames import DistName, parse_dist_filename

#: METADATA is a few KiB; a larger one is a hostile archive, not a wheel.
MAX_METADATA_BYTES = 16 * 1024 * 1024
#: Compressions whose inflation ``zipfile`` bounds by the size asked for.
_BOUNDED = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    struct.error,
    zlib.error,
)
#: Leading bytes of each sdist format: a cheap check that the body is no other kind of file.
_SDIST_MAGIC = {".tar.gz": b"\x1f\x8b", ".zip": b"PK"}
#: Longest form field value read into memory (``requires_dist`` lines, the description).
MAX_FIELD_BYTES = 4 * 1024 * 1024


class UploadError(ValueError):
    """An upload refused with a 400; the message says what is wrong."""


class FileTooLargeError(UploadError):
    """The body grew past the feed's ``max_file_size`` while it streamed."""


@dataclass(frozen=True, slots=True)
class UploadForm:
    """The form fields of one upload that the checks read; others are ignored."""

    action: str | None
    name: str | None
    version: str | None
    filetype: str | None
    sha256_digest: str | None
    blake2_256_digest: str | None
    requires_python: str | None

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> UploadForm:
        def get(key: str) -> str | None:
            value = fields.get(key)
            return value.strip() if value is not None and value.strip() else None

        return cls(
            action=get(":action"),
            name=get("name"),
            version=get("version"),
            filetype=get("filetype"),
            sha256_digest=get("sha256_digest"),
            blake2_256_digest=get("blake2_256_digest"),
            requires_python=get("requires_python"),
        )


class BodyDigest:
    """Hashes and counts a file body as it streams, refusing it once it passes ``max_size``."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._blake2 = hashlib.blake2b(digest_size=32)

    def count(self, length: int) -> None:
        """Count ``length`` more bytes; called before they are written anywhere."""
        self.size += length
        if self.size > self.max_size:
            raise FileTooLargeError(f"File too large: the limit is {self.max_size} bytes")

    def update(self, chunk: bytes) -> None:
        """Hash a chunk already counted (hashlib releases the GIL: fine in a thread)."""
        self._sha256.update(chunk)
        self._blake2.update(chunk)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def blake2_256(self) -> str:
        return self._blake2.hexdigest()


def check_form(form: UploadForm, filename: str | None) -> DistName:
    """The distribution the form and filename describe, once they agree with each other."""
    if form.action != "file_upload":
        raise UploadError(f"Unsupported :action {form.action!r}: only file_upload is accepted")
    if not filename:
        raise UploadError("Upload has no file: send it in the content field")
    dist = parse_dist_filename(filename)
    if dist is None:
        raise UploadError(f"Invalid distribution filename {filename!r}: not a wheel or sdist")
    if form.name is None or form.version is None:
        raise UploadError("The form must give the name and version of the distribution")
    try:
        name = canonicalize_name(form.name, validate=True)
    except InvalidName:
        raise UploadError(f"Invalid project name {form.name!r}") from None
    if name != dist.project:
        raise UploadError(
            f"Filename {filename!r} is of project {dist.project}, but the form says {name}"
        )
    try:
        version = Version(form.version)
    except InvalidVersion:
        raise UploadError(f"Invalid version {form.version!r}") from None
    if version != dist.version:
        raise UploadError(
            f"Filename {filename!r} has version {dist.version}, but the form says {version}"
        )
    expected = "bdist_wheel" if filename.endswith(".whl") else "sdist"
    if form.filetype is not None and form.filetype != expected:
        raise UploadError(f"Filename {filename!r} is a {expected}, but filetype is {form.filetype}")
    return dist


def check_digests(form: UploadForm, body: BodyDigest) -> None:
    """The digests the client sent, if any, are those of the bytes that arrived."""
    for field, sent, actual in (
        ("sha256_digest", form.sha256_digest, body.sha256),
        ("blake2_256_digest", form.blake2_256_digest, body.blake2_256),
    ):
        if sent is not None and sent.lower() != actual:
            raise UploadError(f"The {field} does not match the file that arrived")


def inspect_file(path: Path, filename: str, dist: DistName) -> bytes | None:
    """Blocking. The wheel's METADATA once it names the same project and version; None for an
    sdist, whose format is only checked by its first bytes."""
    if not filename.endswith(".whl"):
        suffix, magic = next((k, v) for k, v in _SDIST_MAGIC.items() if filename.endswith(k))
        with path.open("rb") as handle:
            if handle.read(len(magic)) != magic:
                raise UploadError(f"{filename} is not a {suffix} archive")
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = _read_metadata(archive, filename)
    except UploadError:
        raise
    except _ZIP_ERRORS as exc:
        raise UploadError(f"{filename} is not a valid wheel: {exc}") from None
    check_metadata(metadata, filename, dist)
    return metadata


def _read_metadata(archive: zipfile.ZipFile, filename: str) -> bytes:
    members = [
        info
        for info in archive.infolist()
        if info.filename.count("/") == 1 and info.filename.endswith(".dist-info/METADATA")
    ]
    if len(members) != 1:
        raise UploadError(f"{filename} must hold exactly one .dist-info/METADATA")
    info = members[0]
    if info.compress_type not in _BOUNDED:
        raise UploadError(f"{filename}: METADATA is compressed with method {info.compress_type}")
    with archive.open(info) as member:
        # Bounded by what is asked: the directory's sizes are the archive's word only.
        data = member.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise UploadError(f"{filename}: METADATA is larger than {MAX_METADATA_BYTES} bytes")
    return data


def check_metadata(metadata: bytes, filename: str, dist: DistName) -> None:
    """METADATA names the project and version of the filename."""
    headers = BytesHeaderParser().parsebytes(metadata)
    raw_name, raw_version = headers.get("Name"), headers.get("Version")
    if raw_name is None or raw_version is None:
        raise UploadError(f"{filename}: METADATA gives no Name or no Version")
    try:
        name: NormalizedName = canonicalize_name(str(raw_name), validate=True)
        version = Version(str(raw_version))
    except (InvalidName, InvalidVersion):
        raise UploadError(f"{filename}: METADATA has an invalid Name or Version") from None
    if name != dist.project or version != dist.version:
        raise UploadError(
            f"{filename}: METADATA says {name} {version}, the filename {dist.project} "
            f"{dist.version}"
        )
