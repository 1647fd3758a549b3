"""The S3 lease (spacy_index.s3.Lease) shared by the publisher and the shared-bucket cache:
S3's answers to a conditional write, 412 PreconditionFailed and 409 ConditionalRequestConflict,
mean the same thing at every step and on both paths: someone else holds or changed the lock."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from spacy_index.cache import FileCache
from spacy_index.cache.s3 import S3FileStore
from spacy_index.errors import OutputLocked, PublishError
from spacy_index.publish.s3 import _PublishLock, publish_s3
from spacy_index.publish.s3_objects import LOCK
from spacy_index.s3 import Lease, S3Location

from .s3server import S3Env, new_client, s3_fixture  # noqa: F401

pytestmark = [
    pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:datetime.datetime.utcfromtimestamp:DeprecationWarning"),
]

#: (error code, HTTP status) as botocore reports them; some stores send only the status
CONFLICTS = [("PreconditionFailed", 412), ("ConditionalRequestConflict", 409), ("", 412),
             ("", 409)]
SHA = "ab" * 32


def client_error(code: str, status: int, op: str = "PutObject") -> Exception:
    from botocore.exceptions import ClientError

    error = {"Code": code, "Message": "x"} if code else {}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


class FakeS3:
    """A lock object that exists (fresh or stale); writes under ``fail`` raise ``error``.
    ``fail`` names a step: ``create`` (If-None-Match), ``match`` (If-Match puts: takeover
    and renewal), ``delete`` (conditional delete)."""

    def __init__(self, *, fail: set[str], error: Exception, age: float = 0.0) -> None:
        self.fail, self.error, self.age = fail, error, age
        self.calls: list[str] = []
        self.n = 0

    def put_object(self, **kw: Any) -> dict[str, Any]:
        step = "create" if "IfNoneMatch" in kw else "match" if "IfMatch" in kw else "put"
        self.calls.append(step)
        if step in self.fail:
            raise self.error
        self.n += 1
        return {"ETag": f'"etag{self.n}"'}

    def get_object(self, **kw: Any) -> dict[str, Any]:
        self.calls.append("get")
        now = datetime.now(timezone.utc).replace(microsecond=0)
        return {"Body": io.BytesIO(b'{"ttl": 60}'), "ETag": '"theirs"', "Metadata": {"ttl": "60"},
                "LastModified": now - timedelta(seconds=self.age),
                "ResponseMetadata": {"HTTPHeaders": {"date": format_datetime(now, usegmt=True)}}}

    def head_object(self, **kw: Any) -> dict[str, Any]:
        self.calls.append("head")
        if kw["Key"].endswith(".lock"):
            return {"ETag": '"theirs"'}
        raise client_error("404", 404, "HeadObject")  # no cached object yet

    def delete_object(self, **kw: Any) -> dict[str, Any]:
        step = "delete" if "IfMatch" in kw else "unconditional delete"
        self.calls.append(step)
        if step in self.fail:
            raise self.error
        return {}


def store(s3: Any, tmp_path: Path) -> S3FileStore:
    return S3FileStore(FileCache(tmp_path, client=None), S3Location("b", "cache"),  # type: ignore[arg-type]
                       client=s3, lock_ttl=60)


# --------------------------------------------------------------------------- #
# Each step, on the lease and through both users of it
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("code", "status"), CONFLICTS)
def test_a_refused_create_means_someone_holds_it(code, status, tmp_path):
    def fake() -> FakeS3:
        return FakeS3(fail={"create"}, error=client_error(code, status))

    s3 = fake()
    assert Lease(s3, "b", "k", 60).acquire() == "held"
    assert s3.calls == ["create", "get"]  # the lock was read, found fresh, left alone
    with pytest.raises(OutputLocked):
        _PublishLock(fake(), S3Location("b", "idx"), 60).acquire()
    s3 = fake()
    assert store(s3, tmp_path)._try_lock(SHA, "x.whl") is None
    assert s3.calls == ["create", "get"]


@pytest.mark.parametrize(("code", "status"), CONFLICTS)
def test_a_refused_takeover_means_another_waiter_won(code, status, tmp_path):
    def fake() -> FakeS3:
        return FakeS3(fail={"create", "match"}, error=client_error(code, status), age=120)

    s3 = fake()
    assert Lease(s3, "b", "k", 60).acquire() == "held"
    assert s3.calls == ["create", "get", "match"]
    with pytest.raises(OutputLocked):
        _PublishLock(fake(), S3Location("b", "idx"), 60).acquire()
    cache = store(fake(), tmp_path)
    assert cache._try_lock(SHA, "x.whl") is None and cache.stats["takeovers"] == 0


def test_a_stale_lock_is_taken_over(tmp_path):
    s3 = FakeS3(fail={"create"}, error=client_error("PreconditionFailed", 412), age=120)
    lease = Lease(s3, "b", "k", 60)
    assert lease.acquire() == "taken over" and lease.etag == '"etag1"'
    cache = store(FakeS3(fail={"create"}, error=client_error("", 409), age=120), tmp_path)
    assert cache._try_lock(SHA, "x.whl") is not None and cache.stats["takeovers"] == 1


@pytest.mark.parametrize(("code", "status"), CONFLICTS)
def test_a_refused_renewal_loses_the_lease_and_stops_renewing(code, status):
    s3 = FakeS3(fail={"match"}, error=client_error(code, status))
    lease = Lease(s3, "b", "k", 60)
    assert lease.acquire() == "created"
    assert lease.renew() is False and lease.lost
    assert lease.renew() is False  # no second attempt
    lease.release()  # not ours: nothing is deleted
    assert s3.calls == ["create", "match"]


def test_a_renewal_that_fails_otherwise_is_retried():
    s3 = FakeS3(fail={"match"}, error=client_error("InternalError", 500))
    lease = Lease(s3, "b", "k", 60)
    lease.acquire()
    assert lease.renew() is True and not lease.lost
    s3.fail = set()
    assert lease.renew() is True and lease.etag == '"etag2"'


@pytest.mark.parametrize(("code", "status"), CONFLICTS)
def test_a_refused_release_deletes_nothing(code, status):
    s3 = FakeS3(fail={"delete"}, error=client_error(code, status, "DeleteObject"))
    lease = Lease(s3, "b", "k", 60)
    lease.acquire()
    lease.release()
    assert s3.calls == ["create", "delete"]  # no HEAD-and-delete fallback


def test_a_store_without_conditional_deletes_compares_then_deletes():
    s3 = FakeS3(fail={"delete"}, error=client_error("NotImplemented", 501, "DeleteObject"))
    lease = Lease(s3, "b", "k.lock", 60)
    lease.acquire()
    lease.etag = '"theirs"'  # what head_object answers: still ours
    lease.release()
    assert s3.calls == ["create", "delete", "head", "unconditional delete"]


# --------------------------------------------------------------------------- #
# A renewal refused with 409 in a real publish and a real cache fetch (moto)
# --------------------------------------------------------------------------- #
class RefuseRenewal:
    """Passes everything to the real client, but answers the first renewal of a lock
    (an ``If-Match`` put of a ``.lock`` key) with 409 ConditionalRequestConflict."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.refused = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def put_object(self, **kw: Any) -> Any:
        if kw["Key"].endswith(".lock") and "IfMatch" in kw and not self.refused.is_set():
            self.refused.set()
            raise client_error("ConditionalRequestConflict", 409)
        return self._real.put_object(**kw)


def test_a_publish_whose_renewal_gets_409_stops_before_the_roots(s3: S3Env):
    client = RefuseRenewal(s3.client)
    files: dict[str, bytes | Path] = {"files/a.whl": b"a", "simple/index.html": b"root"}

    def types(path: str) -> str:  # runs before each upload: wait for the refused renewal
        assert client.refused.wait(30)
        return "application/octet-stream"

    with pytest.raises(PublishError, match="lost the publish lock"):
        publish_s3(files, S3Location(s3.bucket, "idx"), client=client, lock_ttl=0.3,
                   content_types=types)
    objects = s3.objects("idx")
    assert "simple/index.html" not in objects
    assert LOCK in objects  # lost: never deleted (it is someone else's, or expires)


def test_a_cache_download_whose_renewal_gets_409_leaves_the_lock_alone(s3: S3Env, tmp_path):
    client = RefuseRenewal(new_client(s3.endpoint_url))
    cache = FileCache(tmp_path, client=None)  # type: ignore[arg-type]
    st = S3FileStore(cache, S3Location(s3.bucket, "cache"), client=client, lock_ttl=0.3)
    payload = b"payload"
    sha = hashlib.sha256(payload).hexdigest()

    async def download() -> Path:
        assert await asyncio.to_thread(client.refused.wait, 30)
        path = cache.path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        return path

    path = asyncio.run(st.fetch(sha, "x.whl", download))
    assert path.read_bytes() == payload and st.stats["uploads"] == 1
    # the lease was lost, so it was neither renewed again nor deleted
    assert f"locks/{sha}.lock" in s3.objects("cache")
