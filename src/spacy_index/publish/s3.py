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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from spacy_index.errors import OutputLocked, PublishError
from spacy_index.publish.guard import check_shrink, marker_file_count
from spacy_index.publish.report import Content
from spacy_index.publish.s3_errors import Progress, describe_error
from spacy_index.publish.s3_objects import (
    LOCK,
    MANIFEST,
    ROOTS,
    SHA256_METADATA,
    Entry,
    Record,
    cache_control,
    content_type,
    entries,
    etag,
    manifest_body,
    parse_manifest,
    phase,
    records,
)
from spacy_index.render.tree import MARKER
from spacy_index.s3 import NOT_FOUND, Lease, S3Location, is_client_error, make_s3_client

#: A lock not renewed for this long belongs to a dead publisher and may be taken over.
LOCK_TTL = 900.0
#: Local files at least this big are uploaded with boto3's managed (multipart) transfer.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class S3PublishReport:
    location: S3Location
    uploaded_objects: int  #: including the manifest
    uploaded_bytes: int
    deleted_objects: int
    unchanged_objects: int  #: objects of the new tree that were already there
    changed: bool


@dataclass(frozen=True)
class _Remote:
    manifest: dict[str, Record]  #: path → what we last published there
    listing: dict[str, tuple[int, str]]  #: path → (size, ETag) of what is there now


@dataclass
class _Plan:
    uploads: list[Entry]
    deletes: list[str]
    etags: dict[str, str]  #: path → ETag of the objects that need no upload
    unchanged: int


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
            listing[location.rel(obj["Key"])] = (int(obj["Size"]), etag(obj.get("ETag")))
    manifest: dict[str, Record] = {}
    if MANIFEST in listing:
        try:
            body = s3.get_object(Bucket=location.bucket, Key=location.key(MANIFEST))["Body"].read()
        except Exception as exc:
            if not is_client_error(exc, NOT_FOUND):
                raise
        else:
            manifest = parse_manifest(body)
    return _Remote(manifest=manifest, listing=listing)


def _untouched(path: str, e: Entry, remote: _Remote) -> bool:
    """The object is there, and is exactly what the manifest says we wrote, and that is ``e``."""
    there, known = remote.listing.get(path), remote.manifest.get(path)
    return (there is not None and known is not None and there[1] == known[2]
            and known[:2] == (e.sha256, e.size))


def _quick_plan(new: Mapping[str, Entry], remote: _Remote) -> bool:
    """Whether anything may need writing, from the manifest and the listing alone."""
    return (
        set(new) != set(remote.manifest)
        or MANIFEST not in remote.listing
        or not all(_untouched(p, e, remote) for p, e in new.items())
    )


def _plan(s3: Any, location: S3Location, new: Mapping[str, Entry],
          remote: _Remote) -> _Plan:
    uploads: list[Entry] = []
    etags: dict[str, str] = {}
    for path, e in new.items():
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
            etags[path] = etag(head.get("ETag")) or there[1]
        else:
            uploads.append(e)
    uploads.sort(key=lambda e: phase(e.path))
    deletes = sorted(p for p in remote.manifest if p not in new and p in remote.listing)
    return _Plan(uploads, deletes, etags, unchanged=len(etags))


def _marker_count(s3: Any, location: S3Location, remote: _Remote) -> int | None:
    if MARKER not in remote.listing:
        return None
    try:
        body = s3.get_object(Bucket=location.bucket, Key=location.key(MARKER))["Body"].read()
    except Exception as exc:
        if is_client_error(exc, NOT_FOUND):
            return None
        raise
    return marker_file_count(body)


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
def _upload(s3: Any, location: S3Location, e: Entry,
            types: Callable[[str], str]) -> str:
    """Upload one object; returns its ETag."""
    args = {
        "ContentType": types(e.path),
        "CacheControl": cache_control(e.path),
        "Metadata": {SHA256_METADATA: e.sha256},
    }
    key = location.key(e.path)
    if isinstance(e.source, bytes):
        return etag(s3.put_object(Bucket=location.bucket, Key=key, Body=e.source, **args)["ETag"])
    path = e.source
    if e.size < MULTIPART_THRESHOLD:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != e.sha256:
            raise PublishError(f"{str(path)!r} changed while it was being published; rerun")
        return etag(s3.put_object(Bucket=location.bucket, Key=key, Body=data, **args)["ETag"])
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                            multipart_chunksize=MULTIPART_CHUNKSIZE)
    s3.upload_file(str(path), location.bucket, key, ExtraArgs=args, Config=config)
    st = path.stat()
    if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
        raise PublishError(f"{str(path)!r} changed while it was being published; rerun")
    return etag(s3.head_object(Bucket=location.bucket, Key=key)["ETag"])


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
    files: Mapping[str, Content],
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
    new = entries(files)
    endpoint = endpoint_url or getattr(getattr(client, "meta", None), "endpoint_url", None)
    progress = Progress()
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise PublishError("publishing to S3 needs boto3: pip install 'spacy-index[s3]'") from None
    try:
        s3 = client if client is not None else make_s3_client(endpoint_url)
        if not _quick_plan(new, _read_remote(s3, location)):
            return S3PublishReport(location, 0, 0, 0, len(new), changed=False)
        with _locked(s3, location, lock_ttl) as lock:
            writer = _Writer(s3, location, lock, content_types or content_type, progress)
            return writer.publish(new, allow_shrink=allow_shrink)
    except (ClientError, BotoCoreError) as exc:
        raise PublishError(describe_error(exc, location, endpoint, progress)) from None
    except OSError as exc:
        raise PublishError(
            f"cannot read a file to publish to {location}: {exc.strerror or exc}; "
            + ("nothing was changed" if not progress.wrote else "rerun to finish")
        ) from None


@dataclass
class _Writer:
    """One publish under the lock: plan against the remote state, then write in order."""

    s3: Any
    location: S3Location
    lock: _PublishLock
    types: Callable[[str], str]
    progress: Progress
    uploaded: int = 0
    nbytes: int = 0

    def publish(self, new: Mapping[str, Entry], *, allow_shrink: bool) -> S3PublishReport:
        s3, location = self.s3, self.location
        remote = _read_remote(s3, location)  # again: another publisher may have finished
        plan = _plan(s3, location, new, remote)
        if (not plan.uploads and not plan.deletes and MANIFEST in remote.listing
                and records(new, plan.etags) == remote.manifest):
            return S3PublishReport(location, 0, 0, 0, plan.unchanged, changed=False)
        check_shrink(_marker_count(s3, location, remote), marker_file_count(_source(new)),
                     allow_shrink=allow_shrink)
        for e in plan.uploads:
            if e.path in ROOTS:
                self._roots_start()
            self.lock.check()
            plan.etags[e.path] = _upload(s3, location, e, self.types)
            self._wrote(e.size)
        new_records = records(new, plan.etags)
        if new_records != remote.manifest or MANIFEST not in remote.listing:
            self._roots_start()
            self._put_manifest(new_records)
        self.lock.check()
        _delete(s3, location, plan.deletes)
        return S3PublishReport(
            location, uploaded_objects=self.uploaded, uploaded_bytes=self.nbytes,
            deleted_objects=len(plan.deletes), unchanged_objects=plan.unchanged,
            changed=True,
        )

    def _roots_start(self) -> None:
        """Before the first root (or the manifest) goes live: is the lock still ours?"""
        if not self.progress.roots_started:
            self.lock.verify()
            self.progress.roots_started = True

    def _wrote(self, size: int) -> None:
        self.progress.wrote = True
        self.uploaded += 1
        self.nbytes += size

    def _put_manifest(self, new_records: Mapping[str, Record]) -> None:
        body = manifest_body(new_records)
        self.s3.put_object(Bucket=self.location.bucket, Key=self.location.key(MANIFEST),
                           Body=body, ContentType="application/json", CacheControl="no-cache",
                           Metadata={SHA256_METADATA: hashlib.sha256(body).hexdigest()})
        self._wrote(len(body))


def _source(new: Mapping[str, Entry]) -> Content | None:
    e = new.get(MARKER)
    return e.source if e is not None else None
