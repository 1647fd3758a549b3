"""S3 plumbing shared by the publisher (:mod:`spacy_index.publish.s3`) and the shared-bucket
cache (:mod:`spacy_index.cache.s3`): locations, the client, error codes, and the lease.

This module imports neither of them; both import it.

The lease (:class:`Lease`) is a small lock object in the bucket:

* **taken** with a conditional create (``PutObject`` with ``If-None-Match: *``);
* if someone else holds it, it is read (``GetObject``) and, once it was not renewed for its
  TTL (its holder died or hangs; ages use the server's ``Date`` against ``Last-Modified``, so
  a skewed local clock cannot expire a lease early), **taken over** with ``If-Match`` on the
  stale ETag: of several waiters that saw the same stale lease exactly one wins, because every
  write has a fresh random ``owner`` token, so no two bodies (and so no two ETags, the MD5 of
  the body) are equal;
* **renewed** every ``ttl / 3`` with ``If-Match`` on its current ETag;
* **checked** (``HeadObject``: is the ETag still ours?) before anything irreversible;
* **released** with a conditional ``DeleteObject`` (``If-Match``; on a store without
  conditional deletes: compare the ETag, then delete). A lease that could not be released
  simply expires after its TTL.

Conditional-write answers (Amazon S3 user guide, "conditional writes"): a condition that does
not hold is **412 PreconditionFailed**; a conditional write that raced another conditional
write to the same key is **409 ConditionalRequestConflict** (S3 suggests retrying). For a
lease both mean the same thing and are treated alike everywhere (:data:`CONDITION_FAILED`):
*someone else holds or just changed the lock object*. On create it is "held" (then the stale
check decides); on takeover it is "another waiter won"; on renewal it is "lost" (we stop
renewing rather than race whoever is writing it, so there are never two holders); on release
it is "not ours any more" (nothing to delete). A 404 during takeover, renewal or release
likewise means the object is no longer ours.

The TTL is written in the body (``"ttl"``) and in the user metadata (``x-amz-meta-ttl``); a
reader prefers the metadata and falls back to the body, then to its own TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from spacy_index._version import __version__
from spacy_index.errors import PublishError, UsageError
from spacy_index.http import redact_url

__all__ = [
    "CONDITION_FAILED",
    "NOT_FOUND",
    "Lease",
    "S3Location",
    "error_code",
    "is_client_error",
    "make_s3_client",
    "parse_s3_url",
    "server_now",
]

#: A conditional write or delete did not apply: the condition failed (412), or it raced
#: another conditional write to the key (409). See the module docstring.
CONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


# --------------------------------------------------------------------------- #
# Locations
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing ``/``; ``""`` is the whole bucket)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        return parse_s3_url(url)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _bucket_ok(bucket: str) -> bool:
    # S3's rules (3-63 of a-z 0-9 . -, alphanumeric at both ends), plus "_", which some
    # S3-compatible stores and legacy us-east-1 buckets allow.
    return (
        3 <= len(bucket) <= 63
        and all(c.isascii() and (c.islower() or c.isdigit() or c in ".-_") for c in bucket)
        and bucket[0].isalnum()
        and bucket[-1].isalnum()
        and ".." not in bucket
    )


def _prefix_ok(prefix: str) -> bool:
    """No empty, ``.`` or ``..`` segment, no backslash or NUL (as a relative output path)."""
    return ("\\" not in prefix and "\x00" not in prefix
            and not any(part in {"", ".", ".."} for part in prefix.split("/")))


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket[/prefix]`` → :class:`S3Location`; :class:`UsageError` otherwise."""
    shown = redact_url(url) if isinstance(url, str) else repr(url)

    def bad(why: str) -> UsageError:
        return UsageError(f"not a usable S3 URL ({why}; expected s3://BUCKET[/PREFIX]): {shown!r}")

    if not isinstance(url, str) or not url.startswith("s3://"):
        raise bad("it must start with s3://")
    parts = urlsplit(url)
    if "@" in parts.netloc or ":" in parts.netloc:
        raise bad("no user, password or port; the endpoint goes in --s3-endpoint-url")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise bad("no query or fragment")
    bucket = parts.netloc
    if not bucket:
        raise bad("no bucket")
    if not _bucket_ok(bucket):
        raise bad(f"{bucket!r} is not a valid bucket name")
    prefix = parts.path.strip("/")
    if prefix and not _prefix_ok(prefix):
        raise bad("the prefix has an empty, '.' or '..' segment")
    return S3Location(bucket, prefix)


# --------------------------------------------------------------------------- #
# The client and its errors
# --------------------------------------------------------------------------- #
def make_s3_client(endpoint_url: str | None = None) -> Any:
    """An S3 client from the standard AWS configuration (environment, ``~/.aws``, instance
    roles), talking to ``endpoint_url`` if given. Needs the ``s3`` extra (boto3)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise PublishError(
            "publishing to S3 needs boto3: pip install 'spacy-index[s3]'"
        ) from None
    options: dict[str, Any] = {"user_agent_extra": f"spacy-index/{__version__}"}
    if "AWS_RETRY_MODE" not in os.environ and "AWS_MAX_ATTEMPTS" not in os.environ:
        # botocore's "legacy" default backs off for ~15 s on a dead endpoint
        options["retries"] = {"mode": "standard"}
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=Config(**options)
        )
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        shown = redact_url(endpoint_url) if endpoint_url else "(none)"
        raise PublishError(
            f"cannot use the S3 endpoint {shown!r} ({type(exc).__name__}); "
            "--s3-endpoint-url must look like https://host[:port]"
        ) from None


def error_code(exc: BaseException) -> str:
    """A botocore error's code (``"NoSuchKey"``, ...), else its HTTP status, else ``""``."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def is_client_error(exc: BaseException, codes: frozenset[str]) -> bool:
    """``exc`` is a botocore ``ClientError`` whose :func:`error_code` is one of ``codes``."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and error_code(exc) in codes


def server_now(response: Mapping[str, Any]) -> datetime:
    """The server's clock (its ``Date`` header), so clock skew cannot expire a lock early."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            return parsedate_to_datetime(date)
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- #
# The lease
# --------------------------------------------------------------------------- #
#: :meth:`Lease.acquire`'s answers: ``created`` and ``taken over`` mean we hold it now;
#: ``held``: someone else holds it and renews it; ``gone``: it vanished while we looked
#: (released meanwhile: look again).
Acquired = Literal["created", "taken over", "held", "gone"]


class Lease:
    """One lock object ``key`` in ``bucket``, held for ``ttl`` seconds at a time; see the
    module docstring for the protocol and what 409/412/404 mean at each step.

    Blocking (boto3). The publisher renews it from a thread (:meth:`renewing_in_thread`), the
    cache from an asyncio task (:meth:`renewing_in_task`, the requests in worker threads);
    both run the same :meth:`renew`. ``info`` is added to the lock's JSON body (who holds it
    and why), ``metadata`` to its user metadata.
    """

    def __init__(self, s3: Any, bucket: str, key: str, ttl: float, *,
                 info: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.ttl = ttl
        self.info = dict(info or {})
        self.metadata = dict(metadata or {})
        self.etag: str | None = None  #: of our last write, while we hold it
        self.lost = False  #: someone else took it over (or it vanished) while we held it
        self._guard = threading.Lock()  # one request on the lock object at a time
        self._last_ok = time.monotonic()

    # -- the lock object --------------------------------------------------- #
    def put_args(self) -> dict[str, Any]:
        """``PutObject`` arguments of one write of the lock object (a fresh owner token)."""
        return {
            "Bucket": self.bucket, "Key": self.key,
            # a fresh owner token per write: two holders with the same host name and pid
            # (pid 1 in containers) never write identical bodies, so their ETags (MD5s)
            # differ and only one If-Match takeover of a dead lock can succeed
            "Body": json.dumps({
                "owner": secrets.token_hex(16), "host": socket.gethostname(),
                "pid": os.getpid(), **self.info, "ttl": self.ttl, "renewed": time.time(),
            }).encode(),
            "ContentType": "application/json",
            "CacheControl": "no-store",
            "Metadata": {**self.metadata, "ttl": f"{self.ttl:g}"},
        }

    def _put(self, **condition: str) -> str:
        return self.s3.put_object(**self.put_args(), **condition)["ETag"]

    def _ttl_of(self, response: Mapping[str, Any], body: bytes) -> float:
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            return float(response.get("Metadata", {})["ttl"])
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            return float(json.loads(body)["ttl"])
        return self.ttl

    # -- the protocol -------------------------------------------------------- #
    def acquire(self) -> Acquired:
        """One attempt to take the lease: create it, or take it over if it is stale."""
        try:
            self.etag = self._put(IfNoneMatch="*")
            self._last_ok = time.monotonic()
            return "created"
        except Exception as exc:
            if not is_client_error(exc, CONDITION_FAILED):
                raise
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=self.key)
            body = r["Body"].read()
        except Exception as exc:
            if is_client_error(exc, NOT_FOUND):
                return "gone"
            raise
        age = (server_now(r) - r["LastModified"]).total_seconds()
        if age < self._ttl_of(r, body):
            return "held"
        try:
            self.etag = self._put(IfMatch=r["ETag"])
        except Exception as exc:
            if is_client_error(exc, CONDITION_FAILED | NOT_FOUND):
                return "held"  # another waiter took it over first
            raise
        self._last_ok = time.monotonic()
        return "taken over"

    def renew(self) -> bool:
        """One renewal; False once the lease is lost. A renewal that fails for another reason
        (the network) is retried at the next one, and the lease counts as lost when none
        succeeded for 90% of the TTL (by then someone may have taken it over)."""
        with self._guard:
            if self.lost or self.etag is None:
                return False
            try:
                self.etag = self._put(IfMatch=self.etag)
                self._last_ok = time.monotonic()
            except Exception as exc:
                if is_client_error(exc, CONDITION_FAILED | NOT_FOUND) or (
                    time.monotonic() - self._last_ok > self.ttl * 0.9
                ):
                    self.lost = True
            return not self.lost

    def still_held(self) -> bool:
        """Is the lock object still ours (its ETag our last write's)? Marks it lost if not."""
        with self._guard:
            if self.lost:
                return False
            try:
                etag = self.s3.head_object(Bucket=self.bucket, Key=self.key).get("ETag")
            except Exception as exc:
                if not is_client_error(exc, NOT_FOUND):
                    raise
                etag = None
            if etag != self.etag:
                self.lost = True
            return not self.lost

    def release(self) -> None:
        """Delete the lock object if it is still ours; never raises (it would expire)."""
        with self._guard:
            etag, self.etag = self.etag, None
            if self.lost or etag is None:
                return
            with contextlib.suppress(Exception):
                try:
                    self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
                except Exception as exc:
                    if is_client_error(exc, CONDITION_FAILED | NOT_FOUND):
                        return  # not ours any more
                    # a store without conditional deletes: compare, then delete
                    h = self.s3.head_object(Bucket=self.bucket, Key=self.key)
                    if h.get("ETag") == etag:
                        self.s3.delete_object(Bucket=self.bucket, Key=self.key)

    # -- renewing in the background -------------------------------------------- #
    @contextlib.contextmanager
    def renewing_in_thread(self) -> Iterator[Lease]:
        """Renew every ``ttl / 3`` from a daemon thread while the block runs; release after."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.ttl / 3) and self.renew():
                pass

        thread = threading.Thread(target=loop, name="spacy-index s3 lease", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.release()

    @contextlib.asynccontextmanager
    async def renewing_in_task(self) -> AsyncIterator[Lease]:
        """Renew every ``ttl / 3`` from an asyncio task while the block runs (each request in
        a worker thread); release (in a thread) after."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.ttl / 3)
                if not await asyncio.to_thread(self.renew):
                    return

        renewer = asyncio.get_running_loop().create_task(loop(), name="spacy-index s3 lease")
        try:
            yield self
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await asyncio.to_thread(self.release)
