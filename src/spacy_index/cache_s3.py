"""A bucket shared by several ``serve`` processes as a second-level cache, so that N servers
make **one upstream download per file** between them.

Layout under ``s3://bucket/prefix``: ``files/<sha[:2]>/<sha>`` (the verified bytes, user
metadata ``sha256``) and ``locks/<sha>.lock`` (who is downloading it).

:meth:`S3FileStore.fetch` for one sha256:

1. the local :class:`~spacy_index.cache.FileCache` has it → done (no S3 request);
2. the object is in the bucket → it is downloaded (boto3's managed transfer), its sha256
   checked, and it is moved into the local cache;
3. otherwise we try to create the lock with a conditional put (``If-None-Match: *``). The one
   process that succeeds calls ``download()`` (the upstream download into its local cache),
   checks the sha256, uploads the file, and deletes the lock. While it downloads, it renews
   the lock every ``lock_ttl / 3`` with ``If-Match`` on its ETag;
4. everyone else polls (HEAD object, HEAD lock; backing off to ``poll_interval``) until the
   object appears, then does 2. A lock that was not renewed for ``lock_ttl`` (its holder
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
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from spacy_index.cache import CacheError, FileCache, InvalidDigest
from spacy_index.errors import DigestMismatch
from spacy_index.publish_s3 import (
    S3Location,
    _error_code,
    _is_client_error,
    _server_now,
    make_s3_client,
)

__all__ = ["S3CacheError", "S3FileStore"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PRECONDITION = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_HASH_BLOCK = 1 << 20

Notify = Callable[[str], None]


class S3CacheError(CacheError):
    """The shared S3 cache could not provide a file."""


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


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
        self._flights: dict[str, asyncio.Task[Path]] = {}
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
            if _is_client_error(exc, _NOT_FOUND):
                return None
            raise

    # -- public API ------------------------------------------------------------ #
    async def fetch(
        self, sha256: str, filename: str, download: Callable[[], Awaitable[Path]]
    ) -> Path:
        """A local, verified path of the file with this sha256: from the local cache, else
        from the bucket, else from ``download()`` (run by one process only), which is then
        uploaded for the others."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise InvalidDigest(sha256)
        found = await asyncio.to_thread(self.cache.cached, sha256)
        if found is not None:
            return found
        task = self._flights.get(sha256)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._fly(sha256, filename, download), name=f"s3 cache {filename}"
            )
            self._flights[sha256] = task
            task.add_done_callback(lambda t: self._flights.pop(sha256, None)
                                   if self._flights.get(sha256) is t else None)
        return await asyncio.shield(task)

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
                etag = await asyncio.to_thread(self._try_lock, sha, filename)
                if etag is not None:
                    return await self._download_as_owner(sha, filename, download, etag)
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
                code = _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
                raise S3CacheError(
                    f"the shared S3 cache {self.location} failed for {filename!r} ({code}); "
                    "check the credentials, the bucket and --s3-endpoint-url"
                ) from None
            raise

    def _from_bucket(self, sha: str, filename: str) -> Path | None:
        """Blocking: the object, downloaded into the local cache and verified; None if absent."""
        key = self.object_key(sha)
        head = self._head(key)
        if head is None:
            return None
        final = self.cache.path(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.parent / f".{sha}.{os.getpid()}-{secrets.token_hex(4)}.s3"
        try:
            self.s3.download_file(self.location.bucket, key, str(partial))
            actual = _hash_file(partial)
            if actual != sha:
                self.stats["corrupt"] += 1
                self._say(f"{key} in the shared cache is corrupt (sha256 {actual}); removing it")
                with contextlib.suppress(Exception):
                    self.s3.delete_object(Bucket=self.location.bucket, Key=key,
                                          IfMatch=head["ETag"])
                return None
            os.replace(partial, final)
        except Exception as exc:
            if _is_client_error(exc, _NOT_FOUND):  # deleted between HEAD and GET
                return None
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        self.stats["s3_fetches"] += 1
        return final

    def _lock_body(self, filename: str) -> dict[str, Any]:
        return {
            # a fresh owner token per put: two replicas with the same host name and pid (pid 1
            # in containers) never write identical bodies, so their ETags (MD5s) differ and only
            # one If-Match takeover of a dead lock can succeed
            "Body": json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                "owner": secrets.token_hex(16),
                                "filename": filename, "ttl": self.lock_ttl}).encode(),
            "ContentType": "application/json",
            "Metadata": {"ttl": f"{self.lock_ttl:g}"},
        }

    def _try_lock(self, sha: str, filename: str) -> str | None:
        """Blocking: the lock's ETag if we now own it (created, or taken over), else None."""
        key = self.lock_key(sha)
        try:
            r = self.s3.put_object(Bucket=self.location.bucket, Key=key, IfNoneMatch="*",
                                   **self._lock_body(filename))
            # the object may have landed between our HEAD and the lock
            if self._head(self.object_key(sha)) is not None:
                self._unlock(sha, r["ETag"])
                return None
            return r["ETag"]
        except Exception as exc:
            if not _is_client_error(exc, _PRECONDITION):
                raise
        head = self._head(key)
        if head is None:
            return None  # released meanwhile: look for the object again
        try:
            ttl = float(head.get("Metadata", {}).get("ttl", self.lock_ttl))
        except ValueError:
            ttl = self.lock_ttl
        if (_server_now(head) - head["LastModified"]).total_seconds() < ttl:
            return None
        try:
            r = self.s3.put_object(Bucket=self.location.bucket, Key=key, IfMatch=head["ETag"],
                                   **self._lock_body(filename))
        except Exception as exc:
            if _is_client_error(exc, _PRECONDITION | _NOT_FOUND):
                return None  # another waiter took it over first
            raise
        self.stats["takeovers"] += 1
        self._say(f"took over the stale download lock for {filename}")
        if self._head(self.object_key(sha)) is not None:
            self._unlock(sha, r["ETag"])
            return None
        return r["ETag"]

    def _unlock(self, sha: str, etag: str) -> None:
        key = self.lock_key(sha)
        with contextlib.suppress(Exception):  # a leftover lock expires after its TTL
            try:
                self.s3.delete_object(Bucket=self.location.bucket, Key=key, IfMatch=etag)
            except Exception as exc:
                if _is_client_error(exc, _PRECONDITION | _NOT_FOUND):
                    return
                head = self._head(key)  # a store without conditional deletes
                if head is not None and head.get("ETag") == etag:
                    self.s3.delete_object(Bucket=self.location.bucket, Key=key)

    async def _download_as_owner(self, sha: str, filename: str,
                                 download: Callable[[], Awaitable[Path]], etag: str) -> Path:
        state = {"etag": etag}

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lock_ttl / 3)
                with contextlib.suppress(Exception):  # on failure the lock may expire
                    r = await asyncio.to_thread(
                        self.s3.put_object, Bucket=self.location.bucket, Key=self.lock_key(sha),
                        IfMatch=state["etag"], **self._lock_body(filename))
                    state["etag"] = r["ETag"]

        renewer = asyncio.get_running_loop().create_task(renew())
        try:
            self.stats["downloads"] += 1
            path = Path(await download())
            actual = await asyncio.to_thread(_hash_file, path)
            if actual != sha:
                raise DigestMismatch(filename, sha, actual)
            await asyncio.to_thread(
                self.s3.upload_file, str(path), self.location.bucket, self.object_key(sha),
                ExtraArgs={"Metadata": {"sha256": sha},
                           "ContentType": "application/octet-stream"},
            )
            self.stats["uploads"] += 1
            return path
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await asyncio.to_thread(self._unlock, sha, state["etag"])
