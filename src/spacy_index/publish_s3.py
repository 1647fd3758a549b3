"""Publish a rendered index to S3-compatible object storage (AWS S3, MinIO, R2, Ceph, ...).

Object storage has no atomic swap of a whole tree, so the guarantees come from *order*:

1. files and their sidecars (``files/**``, ``*.metadata``);
2. project pages and the JSON documents (everything but the roots);
3. the roots, in this order: ``simple/index.html``, ``simple/index.json``,
   ``find-links.html``, ``.spacy-index.json``; then the manifest
   ``<prefix>/.spacy-index-manifest.json`` (path → sha256, size, ETag);
4. only then, stale objects are deleted: those listed in the *previous manifest* that are not
   part of the new tree. Objects we did not write (not in the manifest) are never deleted.

Every object a page links to is uploaded before the page, so whenever a publish stops
(an error, a crash, ``kill -9``), every link reachable from the live root resolves. Pages are
overwritten in place, so a reader may see an old root next to a newer project page, but that
page only links to objects that already exist.

Only what changed is uploaded: the new tree's sha256/size are compared with the manifest, and
the prefix is listed once (``ListObjectsV2``): an object the manifest claims but that is
missing is uploaded again, and an object whose ETag is not the one the manifest recorded (it
was overwritten since: by a publish that was killed before it wrote the manifest, or by
someone else) is checked with a ``HEAD``. If its ``sha256`` user metadata is the new content's
it is adopted without an upload; an object without that metadata that the manifest does not
list was not written by us and is never overwritten. When nothing changed nothing at all is
written (no lock, no manifest).

Concurrent publishers to one prefix are excluded by a lock object ``<prefix>/.spacy-index.lock``
created with a conditional put (``If-None-Match: *``), renewed in the background with
``If-Match`` on its ETag, and deleted at the end. A lock whose holder stopped renewing it for
its TTL (a crashed publisher) is taken over, again with ``If-Match``, so only one of several
waiting publishers wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spacy_index import __version__
from spacy_index.errors import OutputLocked, PublishError, ShrinkRefused, UsageError
from spacy_index.http import redact_url
from spacy_index.publish import SHRINK_LIMIT, check_relative_path
from spacy_index.render.tree import MARKER

__all__ = [
    "LOCK",
    "MANIFEST",
    "ROOTS",
    "S3Location",
    "S3PublishReport",
    "cache_control",
    "content_type",
    "make_s3_client",
    "parse_s3_url",
    "publish_s3",
]

MANIFEST = ".spacy-index-manifest.json"
LOCK = ".spacy-index.lock"
#: Written last (in this order), after everything they link to.
ROOTS = ("simple/index.html", "simple/index.json", "find-links.html", MARKER)
#: A lock not renewed for this long belongs to a dead publisher and may be taken over.
LOCK_TTL = 900.0
#: Local files at least this big are uploaded with boto3's managed (multipart) transfer.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
PAGE_CACHE_CONTROL = "max-age=600"
FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
SHA256_METADATA = "sha256"  # x-amz-meta-sha256 on every object we write

_HASH_BLOCK = 1 << 20
_PRECONDITION = frozenset({"PreconditionFailed", "412"})
_CONFLICT = frozenset({"ConditionalRequestConflict", "409"})
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_AUTH = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
})
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})


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
    if prefix:
        try:
            check_relative_path(prefix)
        except PublishError:
            raise bad("the prefix has an empty, '.' or '..' segment") from None
    return S3Location(bucket, prefix)


# --------------------------------------------------------------------------- #
# Object headers
# --------------------------------------------------------------------------- #
def is_file_object(path: str) -> bool:
    """Immutable payloads (uploaded first, cached forever) as opposed to pages."""
    return path.startswith("files/") or path.endswith(".metadata")


def content_type(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".html"):
        return "text/html; charset=utf-8"
    if path.startswith("simple/") and name == "index.json":
        return "application/vnd.pypi.simple.v1+json"
    if name in ("json",) or name.endswith(".json"):
        return "application/json"
    if name.endswith((".whl", ".zip")):
        return "application/zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "application/gzip"
    if name.endswith(".metadata"):
        return "text/plain"
    return "application/octet-stream"


def cache_control(path: str) -> str:
    return FILE_CACHE_CONTROL if is_file_object(path) else PAGE_CACHE_CONTROL


def _phase(path: str) -> tuple[int, int, str]:
    """Upload order: files, then pages, then the roots (in ROOTS order)."""
    if path in ROOTS:
        return (2, ROOTS.index(path), path)
    if is_file_object(path):
        return (0, 0, path)
    return (1, 0, path)


# --------------------------------------------------------------------------- #
# Reports and internal state
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class S3PublishReport:
    location: S3Location
    uploaded_objects: int  #: including the manifest
    uploaded_bytes: int
    deleted_objects: int
    unchanged_objects: int  #: objects of the new tree that were already there
    changed: bool


@dataclass(frozen=True)
class _Entry:
    path: str
    sha256: str
    size: int
    source: bytes | Path
    mtime_ns: int = 0


Record = tuple[str, int, str]  #: (sha256, size, ETag without quotes)


@dataclass(frozen=True)
class _Remote:
    manifest: dict[str, Record]  #: path → what we last published there
    listing: dict[str, tuple[int, str]]  #: path → (size, ETag) of what is there now


@dataclass
class _Plan:
    uploads: list[_Entry]
    deletes: list[str]
    etags: dict[str, str]  #: path → ETag of the objects that need no upload
    unchanged: int


def _etag(value: object) -> str:
    return str(value or "").strip('"')


@dataclass
class _Progress:
    wrote: bool = False
    roots_started: bool = False


def _hash_file(path: Path) -> tuple[str, int, int]:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        while block := fh.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest(), st.st_size, st.st_mtime_ns


def _entries(files: Mapping[str, bytes | Path]) -> dict[str, _Entry]:
    out: dict[str, _Entry] = {}
    for path, source in files.items():
        check_relative_path(path)
        if path in (MANIFEST, LOCK):
            raise PublishError(f"refusing to publish {path!r}: the name is reserved for spacy-index")
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            out[path] = _Entry(path, hashlib.sha256(data).hexdigest(), len(data), data)
        elif isinstance(source, Path):
            try:
                sha, size, mtime = _hash_file(source)
            except OSError as exc:
                raise PublishError(
                    f"cannot read {str(source)!r} for {path!r}: {exc.strerror or exc}; "
                    "nothing was uploaded"
                ) from None
            out[path] = _Entry(path, sha, size, source, mtime)
        else:
            raise TypeError(f"{path!r}: expected bytes or a Path, not {type(source).__name__}")
    return out


def _records(entries: Mapping[str, _Entry], etags: Mapping[str, str]) -> dict[str, Record]:
    return {p: (e.sha256, e.size, etags[p]) for p, e in entries.items()}


def _manifest_body(records: Mapping[str, Record]) -> bytes:
    doc = {
        "generator": "spacy-index",
        "version": 1,
        "files": {p: {"sha256": sha, "size": size, "etag": etag}
                  for p, (sha, size, etag) in sorted(records.items())},
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _parse_manifest(body: bytes) -> dict[str, Record]:
    """The manifest's files; ``{}`` for anything unreadable (then nothing is deleted)."""
    try:
        files = json.loads(body)["files"]
        return {str(p): (str(v["sha256"]), int(v["size"]), _etag(v.get("etag")))
                for p, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


# --------------------------------------------------------------------------- #
# boto3 plumbing
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


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def _is_client_error(exc: BaseException, codes: frozenset[str]) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and _error_code(exc) in codes


def _describe_error(
    exc: BaseException, location: S3Location, endpoint: str | None, progress: _Progress
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
        code = _error_code(exc)
        op = getattr(exc, "operation_name", "") or "a request"
        if code == "NoSuchBucket":
            what = (f"bucket {location.bucket!r} does not exist"
                    + (f" at {redact_url(endpoint)}" if endpoint else "")
                    + ": create it, or check the bucket name and --s3-endpoint-url")
        elif code in _AUTH:
            what = (f"S3 rejected the credentials ({code}) for {where}: check "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
        elif code in _DENIED:
            what = (f"access denied to {where} ({op}): the credentials need s3:ListBucket, "
                    "s3:GetObject, s3:PutObject and s3:DeleteObject on it")
        else:
            message = str(exc.response.get("Error", {}).get("Message", "")).splitlines()
            detail = f"{code}: {message[0][:200]}" if message and message[0] else code
            what = f"S3 error during {op} on {where} ({detail})"
    else:
        text = str(exc).splitlines()[0] if str(exc) else ""
        what = f"S3 request for {where} failed ({type(exc).__name__}{': ' if text else ''}{text[:200]})"
        what = what.replace(endpoint, redact_url(endpoint)) if endpoint else what
    if not progress.wrote:
        tail = "nothing was changed"
    elif not progress.roots_started:
        tail = "the published index is unchanged; rerun to finish"
    else:
        tail = "every published link still works, but the update is incomplete; rerun to finish"
    return f"{what}; {tail}"


def _server_now(response: Mapping[str, Any]) -> datetime:
    """The server's clock (its ``Date`` header), so clock skew cannot expire a lock early."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            return parsedate_to_datetime(date)
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- #
# The lock
# --------------------------------------------------------------------------- #
class _S3Lock:
    """``<prefix>/.spacy-index.lock``: created with ``If-None-Match: *``, renewed every
    ``ttl/3`` with ``If-Match`` on its ETag, taken over (with ``If-Match``) once it was not
    renewed for its TTL, deleted with ``If-Match`` at the end."""

    def __init__(self, s3: Any, location: S3Location, ttl: float) -> None:
        self.s3 = s3
        self.location = location
        self.key = location.key(LOCK)
        self.ttl = ttl
        self.token = secrets.token_hex(16)
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({
            "owner": self.token, "host": socket.gethostname(), "pid": os.getpid(),
            "ttl": self.ttl, "renewed": time.time(),
        }).encode()

    def _put(self, **condition: str) -> str:
        r = self.s3.put_object(
            Bucket=self.location.bucket, Key=self.key, Body=self._body(),
            ContentType="application/json", CacheControl="no-store", **condition,
        )
        return r["ETag"]

    def acquire(self) -> None:
        for _ in range(3):
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except Exception as exc:
                if not _is_client_error(exc, _PRECONDITION | _CONFLICT):
                    raise
            if self._take_over_if_stale():
                break
        else:
            raise OutputLocked(str(self.location))
        self._thread = threading.Thread(target=self._renew_loop, name="spacy-index s3 lock",
                                        daemon=True)
        self._thread.start()

    def _take_over_if_stale(self) -> bool:
        """True if we took over a stale lock; False if it vanished (try again)."""
        try:
            r = self.s3.get_object(Bucket=self.location.bucket, Key=self.key)
            body = r["Body"].read()
        except Exception as exc:
            if _is_client_error(exc, _NOT_FOUND):
                return False
            raise
        ttl = self.ttl
        with contextlib.suppress(ValueError, TypeError, KeyError):
            ttl = float(json.loads(body)["ttl"])
        age = (_server_now(r) - r["LastModified"]).total_seconds()
        if age < ttl:
            raise OutputLocked(str(self.location))
        try:
            self.etag = self._put(IfMatch=r["ETag"])
        except Exception as exc:
            if _is_client_error(exc, _PRECONDITION | _CONFLICT | _NOT_FOUND):
                raise OutputLocked(str(self.location)) from None
            raise
        return True

    def _renew_loop(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl / 3):
            with self._guard:
                if self._stop.is_set():
                    return
                try:
                    self.etag = self._put(IfMatch=self.etag or "")
                    last_ok = time.monotonic()
                except Exception as exc:
                    if _is_client_error(exc, _PRECONDITION | _NOT_FOUND) or (
                        time.monotonic() - last_ok > self.ttl * 0.9
                    ):
                        self.lost = True
                        return

    def check(self) -> None:
        if self.lost:
            raise PublishError(
                f"lost the publish lock on {self.location} (it was not renewed within "
                f"{self.ttl:g}s and another publisher took it over); rerun when it is done"
            )

    def verify(self) -> None:
        """Before the roots go live: is the lock object still ours?"""
        self.check()
        with self._guard:
            try:
                h = self.s3.head_object(Bucket=self.location.bucket, Key=self.key)
            except Exception as exc:
                if not _is_client_error(exc, _NOT_FOUND):
                    raise
                h = {}
            if h.get("ETag") != self.etag:
                self.lost = True
        self.check()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost or self.etag is None:
            return
        with contextlib.suppress(Exception):  # a leftover lock expires after its TTL
            try:
                self.s3.delete_object(Bucket=self.location.bucket, Key=self.key,
                                      IfMatch=self.etag)
            except Exception as exc:
                if _is_client_error(exc, _PRECONDITION | _NOT_FOUND):
                    return
                # a store without conditional deletes: compare, then delete
                h = self.s3.head_object(Bucket=self.location.bucket, Key=self.key)
                if h.get("ETag") == self.etag:
                    self.s3.delete_object(Bucket=self.location.bucket, Key=self.key)


@contextlib.contextmanager
def _locked(s3: Any, location: S3Location, ttl: float) -> Iterator[_S3Lock]:
    lock = _S3Lock(s3, location, ttl)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


# --------------------------------------------------------------------------- #
# Reading the remote state and planning
# --------------------------------------------------------------------------- #
def _read_remote(s3: Any, location: S3Location) -> _Remote:
    listing: dict[str, tuple[int, str]] = {}
    paginator = s3.get_paginator("list_objects_v2")
    kwargs: dict[str, Any] = {"Bucket": location.bucket}
    if location.prefix:
        kwargs["Prefix"] = location.prefix + "/"
    for page in paginator.paginate(**kwargs):
        for obj in page.get("Contents", ()):
            listing[location.rel(obj["Key"])] = (int(obj["Size"]), _etag(obj.get("ETag")))
    manifest: dict[str, Record] = {}
    if MANIFEST in listing:
        try:
            body = s3.get_object(Bucket=location.bucket, Key=location.key(MANIFEST))["Body"].read()
        except Exception as exc:
            if not _is_client_error(exc, _NOT_FOUND):
                raise
        else:
            manifest = _parse_manifest(body)
    return _Remote(manifest=manifest, listing=listing)


def _untouched(path: str, e: _Entry, remote: _Remote) -> bool:
    """The object is there, and is exactly what the manifest says we wrote, and that is ``e``."""
    there, known = remote.listing.get(path), remote.manifest.get(path)
    return (there is not None and known is not None and there[1] == known[2]
            and known[:2] == (e.sha256, e.size))


def _quick_plan(entries: Mapping[str, _Entry], remote: _Remote) -> bool:
    """Whether anything may need writing, from the manifest and the listing alone."""
    return (
        set(entries) != set(remote.manifest)
        or MANIFEST not in remote.listing
        or not all(_untouched(p, e, remote) for p, e in entries.items())
    )


def _plan(s3: Any, location: S3Location, entries: Mapping[str, _Entry],
          remote: _Remote) -> _Plan:
    uploads: list[_Entry] = []
    etags: dict[str, str] = {}
    for path, e in entries.items():
        there, known = remote.listing.get(path), remote.manifest.get(path)
        if _untouched(path, e, remote):
            etags[path] = there[1]  # type: ignore[index]
            continue
        if there is None or (known is not None and there[1] == known[2]):
            uploads.append(e)  # missing, or exactly our old version of it
            continue
        # not what the manifest recorded: left by a killed publish (adopt it if it is the same
        # content), or someone else's (never overwrite it unless the manifest says it's ours)
        head = s3.head_object(Bucket=location.bucket, Key=location.key(path))
        theirs = head.get("Metadata", {}).get(SHA256_METADATA)
        if theirs is None and known is None:
            raise PublishError(
                f"refusing to overwrite {location.key(path)!r} in {location}: it was not "
                "written by spacy-index; choose a new or empty prefix"
            )
        if theirs == e.sha256 and there[0] == e.size:
            etags[path] = _etag(head.get("ETag")) or there[1]
        else:
            uploads.append(e)
    uploads.sort(key=lambda e: _phase(e.path))
    deletes = sorted(p for p in remote.manifest if p not in entries and p in remote.listing)
    return _Plan(uploads, deletes, etags, unchanged=len(etags))


def _marker_count(s3: Any, location: S3Location, remote: _Remote) -> int | None:
    if MARKER not in remote.listing:
        return None
    try:
        body = s3.get_object(Bucket=location.bucket, Key=location.key(MARKER))["Body"].read()
        return int(json.loads(body)["files"])
    except (ValueError, KeyError, TypeError):
        return None
    except Exception as exc:
        if _is_client_error(exc, _NOT_FOUND):
            return None
        raise


def _new_count(entries: Mapping[str, _Entry]) -> int | None:
    e = entries.get(MARKER)
    if e is None:
        return None
    try:
        raw = e.source.read_bytes() if isinstance(e.source, Path) else e.source
        return int(json.loads(raw)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
def _upload(s3: Any, location: S3Location, e: _Entry,
            types: Callable[[str], str]) -> str:
    """Upload one object; returns its ETag."""
    args = {
        "ContentType": types(e.path),
        "CacheControl": cache_control(e.path),
        "Metadata": {SHA256_METADATA: e.sha256},
    }
    key = location.key(e.path)
    if isinstance(e.source, bytes):
        return _etag(s3.put_object(Bucket=location.bucket, Key=key, Body=e.source, **args)["ETag"])
    path = e.source
    if e.size < MULTIPART_THRESHOLD:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != e.sha256:
            raise PublishError(f"{str(path)!r} changed while it was being published; rerun")
        return _etag(s3.put_object(Bucket=location.bucket, Key=key, Body=data, **args)["ETag"])
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                            multipart_chunksize=MULTIPART_CHUNKSIZE)
    s3.upload_file(str(path), location.bucket, key, ExtraArgs=args, Config=config)
    st = path.stat()
    if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
        raise PublishError(f"{str(path)!r} changed while it was being published; rerun")
    return _etag(s3.head_object(Bucket=location.bucket, Key=key)["ETag"])


def _delete(s3: Any, location: S3Location, paths: list[str]) -> None:
    for i in range(0, len(paths), 1000):
        batch = paths[i:i + 1000]
        r = s3.delete_objects(Bucket=location.bucket, Delete={
            "Objects": [{"Key": location.key(p)} for p in batch], "Quiet": True,
        })
        errors = r.get("Errors") or []
        if errors:
            first = errors[0]
            raise PublishError(
                f"could not delete {len(errors)} stale object(s) under {location} "
                f"(first: {first.get('Key')!r}: {first.get('Code')}); the new index is live, "
                "rerun to retry the cleanup"
            )


def publish_s3(
    files: Mapping[str, bytes | Path],
    location: S3Location,
    *,
    client: Any = None,
    endpoint_url: str | None = None,
    allow_shrink: bool = False,
    content_types: Callable[[str], str] | None = None,
    lock_ttl: float = LOCK_TTL,
) -> S3PublishReport:
    """Make ``location`` serve exactly ``files`` (plus objects we never wrote); see the
    module docstring for the order and guarantees.

    ``files`` maps relative paths to bytes, or to a local :class:`~pathlib.Path` (uploaded from
    disk, multipart when large). ``client`` is a boto3 S3 client; by default one is made from
    the standard AWS configuration and ``endpoint_url``.
    """
    entries = _entries(files)
    types = content_types or content_type
    endpoint = endpoint_url or getattr(getattr(client, "meta", None), "endpoint_url", None)
    progress = _Progress()
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise PublishError("publishing to S3 needs boto3: pip install 'spacy-index[s3]'") from None
    try:
        s3 = client if client is not None else make_s3_client(endpoint_url)
        if not _quick_plan(entries, _read_remote(s3, location)):
            return S3PublishReport(location, 0, 0, 0, len(entries), changed=False)
        with _locked(s3, location, lock_ttl) as lock:
            remote = _read_remote(s3, location)  # again: another publisher may have finished
            plan = _plan(s3, location, entries, remote)
            if (not plan.uploads and not plan.deletes and MANIFEST in remote.listing
                    and _records(entries, plan.etags) == remote.manifest):
                return S3PublishReport(location, 0, 0, 0, plan.unchanged, changed=False)
            before, after = _marker_count(s3, location, remote), _new_count(entries)
            if (not allow_shrink and before and after is not None
                    and after < before * (1 - SHRINK_LIMIT)):
                raise ShrinkRefused(before, after)
            uploaded = nbytes = 0
            for e in plan.uploads:
                if e.path in ROOTS and not progress.roots_started:
                    lock.verify()
                    progress.roots_started = True
                lock.check()
                plan.etags[e.path] = _upload(s3, location, e, types)
                progress.wrote = True
                uploaded += 1
                nbytes += e.size
            records = _records(entries, plan.etags)
            if records != remote.manifest or MANIFEST not in remote.listing:
                if not progress.roots_started:
                    lock.verify()
                    progress.roots_started = True
                body = _manifest_body(records)
                s3.put_object(Bucket=location.bucket, Key=location.key(MANIFEST),
                              Body=body, ContentType="application/json",
                              CacheControl="no-cache",
                              Metadata={SHA256_METADATA: hashlib.sha256(body).hexdigest()})
                progress.wrote = True
                uploaded += 1
                nbytes += len(body)
            lock.check()
            _delete(s3, location, plan.deletes)
            return S3PublishReport(
                location, uploaded_objects=uploaded, uploaded_bytes=nbytes,
                deleted_objects=len(plan.deletes), unchanged_objects=plan.unchanged,
                changed=True,
            )
    except (ClientError, BotoCoreError) as exc:
        raise PublishError(_describe_error(exc, location, endpoint, progress)) from None
    except OSError as exc:
        raise PublishError(
            f"cannot read a file to publish to {location}: {exc.strerror or exc}; "
            + ("nothing was changed" if not progress.wrote else "rerun to finish")
        ) from None
