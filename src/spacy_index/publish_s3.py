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

Concurrent publishers to one prefix are excluded by a lock object ``<prefix>/.spacy-index.lock``,
a :class:`spacy_index.s3.Lease`: created with a conditional put (``If-None-Match: *``), renewed
from a thread with ``If-Match`` on its ETag, and deleted at the end. A lock whose holder stopped
renewing it for its TTL (a crashed publisher) is taken over, again with ``If-Match``, so only
one of several waiting publishers wins. S3's 412 and 409 answers to these conditional writes
both mean "another publisher holds or changed the lock" (see :mod:`spacy_index.s3`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacy_index.errors import OutputLocked, PublishError, ShrinkRefused
from spacy_index.http import redact_url
from spacy_index.publish import SHRINK_LIMIT, check_relative_path
from spacy_index.render.tree import MARKER
from spacy_index.s3 import (
    NOT_FOUND,
    Lease,
    S3Location,
    error_code,
    is_client_error,
    make_s3_client,
    parse_s3_url,
)

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
_AUTH = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
})
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})


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
        code = error_code(exc)
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


# --------------------------------------------------------------------------- #
# The lock
# --------------------------------------------------------------------------- #
class _PublishLock:
    """``<prefix>/.spacy-index.lock``: a :class:`~spacy_index.s3.Lease` (created with
    ``If-None-Match: *``, renewed every ``ttl/3`` from a thread with ``If-Match`` on its ETag,
    taken over with ``If-Match`` once it was not renewed for its TTL, deleted with
    ``If-Match`` at the end), and what the publisher does when it is lost."""

    def __init__(self, s3: Any, location: S3Location, ttl: float) -> None:
        self.location = location
        self.lease = Lease(s3, location.bucket, location.key(LOCK), ttl)

    def acquire(self) -> None:
        for _ in range(3):  # "gone": released while we looked, try again
            got = self.lease.acquire()
            if got in ("created", "taken over"):
                return
            if got == "held":
                break
        raise OutputLocked(str(self.location))

    def check(self) -> None:
        if self.lease.lost:
            raise PublishError(
                f"lost the publish lock on {self.location} (it was not renewed within "
                f"{self.lease.ttl:g}s and another publisher took it over); rerun when it is done"
            )

    def verify(self) -> None:
        """Before the roots go live: is the lock object still ours?"""
        self.check()
        self.lease.still_held()
        self.check()


@contextlib.contextmanager
def _locked(s3: Any, location: S3Location, ttl: float) -> Iterator[_PublishLock]:
    lock = _PublishLock(s3, location, ttl)
    lock.acquire()
    with lock.lease.renewing_in_thread():
        yield lock


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
            if not is_client_error(exc, NOT_FOUND):
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
        if is_client_error(exc, NOT_FOUND):
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
