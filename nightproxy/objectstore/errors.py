"""What can go wrong talking to an object store, classified for the callers that must react.

A replica keeps serving when the store fails, so callers need to tell an answer ("not there",
"someone else won the conditional write") from a failure of the store itself ("down",
"throttled", "failed"), which marks the store degraded. Messages name the operation and the
key, never credentials or signed URLs.
"""

from __future__ import annotations

from typing import ClassVar


class StoreError(Exception):
    """The store could not do what was asked."""

    #: One word for metrics and the status page.
    kind: ClassVar[str] = "failed"
    #: True when this says something about the store's health rather than about the object.
    degrades: ClassVar[bool] = True

    def __init__(self, reason: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code


class StoreDownError(StoreError):
    """No answer: connection refused or reset, or a timeout."""

    kind = "down"


class StoreThrottledError(StoreError):
    """The store asks us to slow down (503 SlowDown, 429)."""

    kind = "throttled"


class StoreDeniedError(StoreError):
    """401/403: the credentials or the bucket policy are wrong; retrying will not help."""

    kind = "denied"


class PreconditionFailedError(StoreError):
    """A conditional write lost: the key exists (If-None-Match) or changed (If-Match)."""

    kind = "precondition"
    degrades = False


class ObjectNotFoundError(StoreError):
    """No object under this key (or no such multipart upload)."""

    kind = "not_found"
    degrades = False
