"""The legacy upload API of hosted feeds, as twine and ``uv publish`` speak it.

``POST /feeds/<feed>/`` takes one ``multipart/form-data`` upload (``:action=file_upload``,
the file in ``content``); ``DELETE /feeds/<feed>/<project>/<filename>`` moves a file to the
trash. Both use HTTP Basic with the token as password. The file part streams to a staging file
(``aiofiles``), hashed and counted as it arrives, so memory stays bounded whatever its size;
the feed lists it only once it is complete and checked.

Every refusal says what is wrong, in the reason phrase (which twine prints) and in the body.
No token ever appears in a log line, an answer or an error.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
from pathlib import Path

import aiofiles
from aiohttp import BodyPartReader, hdrs, web
from packaging.utils import InvalidName, canonicalize_name

from nightproxy.hosted.auth import Identity
from nightproxy.hosted.feed import ForbiddenError, HostedFeed, NotFoundError
from nightproxy.hosted.storage import Outcome, StaleError
from nightproxy.hosted.upload import BodyDigest, FileTooLargeError, UploadError, UploadForm
from nightproxy.server import keys
from nightproxy.server.errors import try_again
from nightproxy.upstreams.http import is_shortage

log = logging.getLogger(__name__)

#: Bytes asked of the body per read while a file part streams to disk.
CHUNK = 1024 * 1024
#: All form fields together (descriptions included); the file part is bounded by the feed.
MAX_FIELDS_BYTES = 16 * 1024 * 1024
#: The only fields kept; the others (a long description, classifiers) are read and dropped.
KEPT_FIELDS = frozenset(
    {
        ":action",
        "name",
        "version",
        "filetype",
        "sha256_digest",
        "blake2_256_digest",
        "requires_python",
    }
)
#: A reason phrase is one short line.
MAX_REASON = 200
#: errnos of a full disk, an exhausted quota or a file-size limit.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def setup_upload_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/feeds/{feed}/", upload)
    r.add_post("/feeds/{feed}", upload)
    r.add_delete("/feeds/{feed}/{project}/{filename}", delete)


def _refuse(status: int, message: str) -> web.HTTPException:
    """An error answer whose reason phrase and body say ``message``."""
    reason = " ".join(message.split())[:MAX_REASON]
    cls = {
        400: web.HTTPBadRequest,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        507: web.HTTPInsufficientStorage,
    }[status]
    return cls(reason=reason, text=message + "\n")


def _feed(request: web.Request) -> HostedFeed:
    feed = request.app[keys.FEEDS].get(request.match_info["feed"])
    if feed is None:
        raise _refuse(404, "No hosted feed of that name")
    return feed


async def _identity(request: web.Request, feed: HostedFeed) -> Identity:
    """Who is asking: 401 without credentials, 403 with wrong ones."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        raise web.HTTPUnauthorized(
            reason="Authentication required",
            text="Send the feed's upload token as the password of HTTP Basic authentication\n",
            headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="nightproxy feed {feed.name}"'},
        )
    password = basic_password(header)
    if password is None:
        raise _refuse(403, "Invalid authentication: use HTTP Basic with the token as password")
    identity = await feed.auth.identify(password)
    if identity is None:
        raise _refuse(403, "Invalid or non-existent authentication information")
    return identity


def basic_password(header: str) -> str | None:
    """The password of an HTTP Basic ``Authorization`` header, None if it is not one.

    Parsed here because aiohttp's ``BasicAuth`` is deprecated.
    """
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    _username, colon, password = decoded.partition(":")
    return password if colon else None


async def upload(request: web.Request) -> web.Response:
    feed = _feed(request)
    identity = await _identity(request, feed)
    if request.content_type != "multipart/form-data":
        raise _refuse(400, "An upload is a multipart/form-data POST (:action=file_upload)")
    try:
        async with feed.storage.staging() as staged:
            body = feed.new_body()
            fields, filename = await _receive(request, feed, identity, staged.path, body)
            result = await feed.accept(
                identity, UploadForm.from_fields(fields), filename, staged, body
            )
    except FileTooLargeError as exc:
        # The rest of the body is not read: the connection cannot be reused.
        raise _refuse(400, str(exc)) from None
    except UploadError as exc:
        raise _refuse(400, str(exc)) from None
    except ForbiddenError as exc:
        raise _refuse(403, str(exc)) from None
    except StaleError as exc:
        # Concurrent uploads of this name kept winning over this one: nothing of it is listed.
        raise _refuse(409, str(exc)) from None
    except OSError as exc:
        # The staged file goes with the block above: the feed is as it was.
        if exc.errno in FULL:
            log.warning("%s: an upload was refused, the storage is full: %s", feed.name, exc)
            raise _refuse(
                507, "The feed's storage is full: nothing of this upload was kept"
            ) from None
        if is_shortage(exc):
            raise try_again("out of file descriptors or memory") from None
        raise
    record = result.record
    if result.outcome is Outcome.EXISTS:
        raise web.HTTPBadRequest(
            reason="File already exists",
            text=(
                f"File already exists: {record.filename} was uploaded with other bytes "
                f"(sha256 {record.sha256}) and this feed does not allow overwrites\n"
            ),
        )
    text = {
        Outcome.CREATED: "uploaded",
        Outcome.REPLACED: "replaced the earlier upload of the same name",
        Outcome.UNCHANGED: "already there with the same bytes: nothing changed",
    }[result.outcome]
    return web.Response(text=f"{record.filename}: {text}\n")


async def _receive(
    request: web.Request,
    feed: HostedFeed,
    identity: Identity,
    staging: Path,
    body: BodyDigest,
) -> tuple[dict[str, str], str | None]:
    """Read the form: small fields into memory, the file part to ``staging``."""
    reader = await request.multipart()
    fields: dict[str, str] = {}
    filename: str | None = None
    fields_bytes = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise UploadError("Nested multipart bodies are not part of the upload API")
        if part.name == "content":
            if filename is not None:
                raise UploadError("More than one file in one upload")
            filename = part.filename or ""
            _check_project_early(fields, identity)
            await _stream_file(part, staging, body)
            continue
        value = bytearray()
        while chunk := await part.read_chunk(CHUNK):
            fields_bytes += len(chunk)
            if fields_bytes > MAX_FIELDS_BYTES:
                raise UploadError(f"The form fields exceed {MAX_FIELDS_BYTES} bytes")
            if part.name in KEPT_FIELDS:
                value += chunk
        if part.name in KEPT_FIELDS:
            fields[part.name] = value.decode("utf-8", "replace")
    return fields, filename


def _check_project_early(fields: dict[str, str], identity: Identity) -> None:
    """Refuse a token of another project before its file streams in, when the form says."""
    name = fields.get("name")
    if name is None:
        return
    try:
        project = canonicalize_name(name, validate=True)
    except InvalidName:
        return  # the full check names the problem
    HostedFeed.check_may_publish(identity, project)


async def _stream_file(part: BodyPartReader, staging: Path, body: BodyDigest) -> None:
    async with aiofiles.open(staging, "wb") as out:
        while chunk := await part.read_chunk(CHUNK):
            body.count(len(chunk))  # before the bytes go anywhere
            # Written and hashed side by side, both off the event loop.
            await asyncio.gather(out.write(chunk), asyncio.to_thread(body.update, chunk))
        await out.flush()


async def delete(request: web.Request) -> web.Response:
    feed = _feed(request)
    identity = await _identity(request, feed)
    try:
        project = canonicalize_name(request.match_info["project"], validate=True)
    except InvalidName:
        raise _refuse(404, "No such project") from None
    filename = request.match_info["filename"]
    try:
        deleted = await feed.delete(identity, project, filename=filename)
    except ForbiddenError as exc:
        raise _refuse(403, str(exc)) from None
    except NotFoundError as exc:
        raise _refuse(404, str(exc)) from None
    log.info("%s: %s/%s deleted by %s", feed.name, project, filename, identity.label)
    return web.Response(text=f"{deleted[0].filename}: moved to the trash\n")
