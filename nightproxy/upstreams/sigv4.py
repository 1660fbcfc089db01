"""AWS Signature Version 4 for S3 requests, by botocore's signer.

Request signing is subtle (canonical URIs and queries, the payload hash header, the scope) and
botocore is the reference implementation, so nightproxy never writes its own. The one thing
added here: the payload's SHA-256 may be given precomputed, so that a large body is hashed once
(in a thread, by the caller) instead of by the signer on the event loop at every retry.

botocore is imported on first use: it takes about 0.1 s, which ``nightproxy check`` and
configurations without S3 need not pay.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_PAYLOAD_KEY = "nightproxy_payload_sha256"


@functools.cache
def _signer_class() -> type[S3SigV4Auth]:
    from botocore.auth import S3SigV4Auth

    class PresetPayloadAuth(S3SigV4Auth):
        """S3's SigV4 with the payload hash the caller computed (the request has no body)."""

        def payload(self, request: AWSRequest) -> str:
            return str(request.context[_PAYLOAD_KEY])

    return PresetPayloadAuth


def sign_s3(
    method: str,
    url: str,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    headers: Mapping[str, str] | None = None,
    payload_sha256: str = EMPTY_SHA256,
) -> dict[str, str]:
    """The headers to send with ``method url``: ``headers`` plus the signature's own.

    ``url`` must be sent byte for byte as given (already percent-encoded): the signature covers
    its path and query. Every header in ``headers`` is signed, so they must be sent unchanged.
    """
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    aws_request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    aws_request.context[_PAYLOAD_KEY] = payload_sha256
    signer = _signer_class()(Credentials(access_key_id, secret_access_key), "s3", region)
    signer.add_auth(aws_request)
    return {k: str(v) for k, v in aws_request.headers.items()}
