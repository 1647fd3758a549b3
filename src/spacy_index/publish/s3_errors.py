"""One line for a failed S3 publish: what went wrong (credentials, endpoint, bucket, access)
and, from how far the publish got, what state the published index is in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spacy_index.http import redact_url
from spacy_index.s3 import S3Location, error_code

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

_AUTH = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
})
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})


@dataclass
class Progress:
    wrote: bool = False
    roots_started: bool = False

    def tail(self) -> str:
        if not self.wrote:
            return "nothing was changed"
        if not self.roots_started:
            return "the published index is unchanged; rerun to finish"
        return "every published link still works, but the update is incomplete; rerun to finish"


def _client_error(exc: ClientError, location: S3Location, endpoint: str | None, where: str) -> str:
    code = error_code(exc)
    op = getattr(exc, "operation_name", "") or "a request"
    if code == "NoSuchBucket":
        return (f"bucket {location.bucket!r} does not exist"
                + (f" at {redact_url(endpoint)}" if endpoint else "")
                + ": create it, or check the bucket name and --s3-endpoint-url")
    if code in _AUTH:
        return (f"S3 rejected the credentials ({code}) for {where}: check "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    if code in _DENIED:
        return (f"access denied to {where} ({op}): the credentials need s3:ListBucket, "
                "s3:GetObject, s3:PutObject and s3:DeleteObject on it")
    message = str(exc.response.get("Error", {}).get("Message", "")).splitlines()
    detail = f"{code}: {message[0][:200]}" if message and message[0] else code
    return f"S3 error during {op} on {where} ({detail})"


def describe_error(
    exc: BaseException, location: S3Location, endpoint: str | None, progress: Progress
) -> str:
    from botocore import exceptions as bx

    where = str(location) + (f" at {redact_url(endpoint)}" if endpoint else "")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        what = (f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (see ~/.aws/credentials)")
    elif isinstance(exc, bx.ProfileNotFound):
        what = f"{exc}; check AWS_PROFILE"
    elif isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                          bx.ReadTimeoutError, bx.ConnectionClosedError)):
        target = redact_url(endpoint) if endpoint else "the default AWS S3 endpoint"
        what = (f"cannot reach {target} ({type(exc).__name__}); check --s3-endpoint-url "
                "and the network")
    elif isinstance(exc, bx.ClientError):
        what = _client_error(exc, location, endpoint, where)
    else:
        text = str(exc).splitlines()[0] if str(exc) else ""
        what = f"S3 request for {where} failed ({type(exc).__name__}{': ' if text else ''}{text[:200]})"
        what = what.replace(endpoint, redact_url(endpoint)) if endpoint else what
    return f"{what}; {progress.tail()}"
