"""A bucket shared by several ``serve`` processes as a second-level cache, so that N servers
make **one upstream download per file** between them.

Layout under ``s3://bucket/prefix``: ``files/<sha[:2]>/<sha>`` (the verified bytes, user
metadata ``sha256``) and ``locks/<sha>.lock`` (who is downloading it).

:meth:`S3FileStore.fetch` for one sha256:

1. the local :class:`~spacy_index.cache.store.FileCache` has it → done (no S3 request);
2. the object is in the bucket → it is downloaded (boto3's managed transfer) into the local
   cache with :meth:`FileCache.add <spacy_index.cache.store.FileCache.add>`, which checks its
   sha256;
3. otherwise we try to take the lock, a :class:`~spacy_index.s3.Lease` (a conditional put
   with ``If-None-Match: *``; see :mod:`spacy_index.s3` for the protocol and what 409 and
   412 mean). The one process that gets it calls ``download()`` (the upstream download into
   its local cache), checks the sha256, uploads the file, and deletes the lock. While it
   downloads, an asyncio task renews the lock every ``lock_ttl / 3`` with ``If-Match`` on
   its ETag;
4. everyone else polls (HEAD object, then the lock; backing off to ``poll_interval``) until
   the object appears, then does 2. A lock that was not renewed for ``lock_ttl`` (its holder
   died or hangs) is taken over with ``If-Match`` on the stale ETag, so exactly one of the
   waiters becomes the new downloader.

Guarantee (with a store whose conditional puts are atomic, as S3, MinIO and R2 are): one
upstream download per file across all processes sharing the bucket, plus one more for each
downloader that dies or stalls for longer than ``lock_ttl`` (the file is then downloaded again
by whoever takes the lock over) and one more after each ``download()`` that raised (the lock is
released at once so another process can try; a download that failed is not a download of the
file). A process that already has the file in its local cache makes no request at all. Bytes
from the bucket are verified against the sha256 before anyone uses them; an object that does
not match is deleted (conditionally, on its ETag) and treated as missing.

In one process, concurrent ``fetch`` calls for one sha256 share a single flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from spacy_index.cache.store import FileCache
from spacy_index.errors import CacheError, DigestMismatch
from spacy_index.hashing import check_sha256, file_sha256
from spacy_index.s3 import (
    NOT_FOUND,
    Lease,
    S3Location,
    error_code,
    is_client_error,
    make_s3_client,
)
from spacy_index.singleflight import SingleFlight

__all__ = ["S3CacheError", "S3FileStore"]


Notify = Callable[[str], None]


class S3CacheError(CacheError):
    """The shared S3 cache could not provide a file."""


class S3FileStore:
    """One process's view of the shared bucket; see the module docstring."""

    def __init__(
        self,
        cache: FileCache,
        location: S3Location,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        lock_ttl: float = 120.0,
        poll_interval: float = 1.0,
        max_wait: float = 3600.0,
        notify: Notify | None = None,
    ) -> None:
        self.cache = cache
        self.location = location
        self._client = client
        self._endpoint_url = endpoint_url
        self.lock_ttl = lock_ttl
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self._notify = notify
        self._flights: SingleFlight[str, Path] = SingleFlight()
        #: what happened, for tests and logs: downloads, uploads, s3 fetches, takeovers
        self.stats = {"downloads": 0, "uploads": 0, "s3_fetches": 0, "takeovers": 0,
                      "corrupt": 0}

    # -- plumbing ------------------------------------------------------------ #
    @property
    def s3(self) -> Any:
        if self._client is None:  # made on first use, never at import or construction
            self._client = make_s3_client(self._endpoint_url)
        return self._client

    def object_key(self, sha: str) -> str:
        return self.location.key(f"files/{sha[:2]}/{sha}")

    def lock_key(self, sha: str) -> str:
        return self.location.key(f"locks/{sha}.lock")

    def _say(self, message: str) -> None:
        if self._notify is not None:
            with contextlib.suppress(Exception):
                self._notify(message)

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.s3.head_object(Bucket=self.location.bucket, Key=key)
        except Exception as exc:
            if is_client_error(exc, NOT_FOUND):
                return None
            raise

    # -- public API ------------------------------------------------------------ #
    async def fetch(
        self, sha256: str, filename: str, download: Callable[[], Awaitable[Path]]
    ) -> Path:
        """A local, verified path of the file with this sha256: from the local cache, else
        from the bucket, else from ``download()`` (run by one process only), which is then
        uploaded for the others."""
        check_sha256(sha256)
        found = await asyncio.to_thread(self.cache.cached, sha256)
        if found is not None:
            return found
        return await self._flights.run(sha256, lambda: self._fly(sha256, filename, download),
                                       name=f"s3 cache {filename}")

    # -- one flight ------------------------------------------------------------ #
    async def _fly(self, sha: str, filename: str,
                   download: Callable[[], Awaitable[Path]]) -> Path:
        deadline = time.monotonic() + self.max_wait
        delay = min(0.05, self.poll_interval)
        try:
            while True:
                got = await asyncio.to_thread(self._from_bucket, sha, filename)
                if got is not None:
                    return got
                lease = await asyncio.to_thread(self._try_lock, sha, filename)
                if lease is not None:
                    return await self._download_as_owner(sha, filename, download, lease)
                if time.monotonic() > deadline:
                    raise S3CacheError(
                        f"gave up waiting {self.max_wait:g}s for another server to download "
                        f"{filename!r} into {self.location}; check the other servers' logs"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.poll_interval)
        except (S3CacheError, DigestMismatch, asyncio.CancelledError):
            raise
        except Exception as exc:
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, (BotoCoreError, ClientError)):
                code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
                raise S3CacheError(
                    f"the shared S3 cache {self.location} failed for {filename!r} ({code}); "
                    "check the credentials, the bucket and --s3-endpoint-url"
                ) from None
            raise

    def _from_bucket(self, sha: str, filename: str) -> Path | None:
        """Blocking: the object, downloaded into the local cache and verified; None if absent
        (or corrupt: it is then deleted, conditionally on its ETag)."""
        key = self.object_key(sha)
        head = self._head(key)
        if head is None:
            return None
        try:
            path = self.cache.add(
                sha, lambda partial: self.s3.download_file(self.location.bucket, key,
                                                           str(partial)),
                filename=filename)
        except DigestMismatch as exc:
            self.stats["corrupt"] += 1
            self._say(f"{key} in the shared cache is corrupt (sha256 {exc.actual}); removing it")
            with contextlib.suppress(Exception):
                self.s3.delete_object(Bucket=self.location.bucket, Key=key,
                                      IfMatch=head["ETag"])
            return None
        except Exception as exc:
            if is_client_error(exc, NOT_FOUND):  # deleted between HEAD and GET
                return None
            raise
        self.stats["s3_fetches"] += 1
        return path

    def _lease(self, sha: str, filename: str) -> Lease:
        """The download lock of one file (``locks/<sha>.lock``)."""
        return Lease(self.s3, self.location.bucket, self.lock_key(sha), self.lock_ttl,
                     info={"filename": filename})

    def _try_lock(self, sha: str, filename: str) -> Lease | None:
        """Blocking: the lock, if we now hold it (created, or taken over), else None."""
        lease = self._lease(sha, filename)
        got = lease.acquire()
        if got not in ("created", "taken over"):
            return None  # held by a live downloader, or released meanwhile: look again
        if got == "taken over":
            self.stats["takeovers"] += 1
            self._say(f"took over the stale download lock for {filename}")
        # the object may have landed between our HEAD and the lock
        if self._head(self.object_key(sha)) is not None:
            lease.release()
            return None
        return lease

    async def _download_as_owner(self, sha: str, filename: str,
                                 download: Callable[[], Awaitable[Path]], lease: Lease) -> Path:
        async with lease.renewing_in_task():
            self.stats["downloads"] += 1
            path = Path(await download())
            actual = await asyncio.to_thread(file_sha256, path)
            if actual != sha:
                raise DigestMismatch(filename, sha, actual)
            await asyncio.to_thread(
                self.s3.upload_file, str(path), self.location.bucket, self.object_key(sha),
                ExtraArgs={"Metadata": {"sha256": sha},
                           "ContentType": "application/octet-stream"},
            )
            self.stats["uploads"] += 1
            return path
