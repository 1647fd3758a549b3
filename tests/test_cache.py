"""Tests for spacy_index.cache: the verified, single-flight, resumable file cache.

Everything runs over real HTTP on 127.0.0.1: the GitHub fake (web URL → 302 → signed objects
URL with ranges and faults), plus a tiny scripted server for answers GitHub never gives
(ranges ignored, wrong ranges, content changing under us).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import spacy_index.cache.partial as cache_partial
from spacy_index.cache import (
    CacheWriteError,
    FileCache,
    InvalidDigest,
    SizeMismatch,
    Upstream,
    UpstreamChanged,
    UpstreamFileError,
)
from spacy_index.errors import DigestMismatch, SpacyIndexError, UpstreamError
from tests.fakegithub import FakeGitHub, Fault, RecordedRequest
from tests.servers import serve_http

T = TypeVar("T")
MB = 1 << 20
_tags = itertools.count(1)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def run(factory: Callable[[], Awaitable[T]], timeout: float = 120) -> T:
    async def main() -> T:
        return await asyncio.wait_for(factory(), timeout)

    return asyncio.run(main())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(load_fixture=False) as fake:
        yield fake


def publish(gh: FakeGitHub, data: bytes, name: str = "pkg-1.0-py3-none-any.whl") -> Upstream:
    release = gh.add_release(f"pkg-{next(_tags)}", {name: data})
    asset = release["assets"][0]
    return Upstream(asset["browser_download_url"], name, sha(data), len(data))


def body_gets(gh: FakeGitHub) -> list[RecordedRequest]:
    """Objects-origin GETs that sent body bytes (200/206)."""
    return [r for r in gh.requests if r.origin == "objects" and r.method == "GET"
            and r.status in (200, 206)]


def upstream_bytes(gh: FakeGitHub) -> int:
    return sum(r.bytes_sent for r in body_gets(gh))


def files_in(root: Path, sub: str) -> list[Path]:
    folder = root / sub
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


async def consume(cache: FileCache, up: Upstream) -> tuple[str, int, bool]:
    """Stream a file; returns (sha256, length, hit)."""
    h = hashlib.sha256()
    n = 0
    async with cache.open(up) as stream:
        async for chunk in stream:
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n, stream.hit


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30)


# --------------------------------------------------------------------------- #
# A scripted origin: answers given in order (the last one repeats)
# --------------------------------------------------------------------------- #
@dataclass
class Answer:
    body: bytes
    status: int = 200
    content_range: str | None = None
    abort_after: int | None = None  # close the connection after this many body bytes
    etag: str = '"v1"'
    total: int | None = None  # Content-Length (default: len(body))


class Scripted:
    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, str]] = []
        self.bytes_sent = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle(self) -> None:
                with contextlib.suppress(OSError):  # the client hung up: expected here
                    super().handle()

            def do_GET(self) -> None:
                outer.requests.append({k.lower(): v for k, v in self.headers.items()})
                a = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                self.send_response(a.status)
                self.send_header("Content-Length", str(a.total or len(a.body)))
                self.send_header("ETag", a.etag)
                self.send_header("Accept-Ranges", "bytes")
                if a.content_range:
                    self.send_header("Content-Range", a.content_range)
                self.end_headers()
                body = a.body if a.abort_after is None else a.body[: a.abort_after]
                try:
                    self.wfile.write(body)
                    outer.bytes_sent += len(body)
                    if a.abort_after is not None:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    self.close_connection = True

        self._handler = Handler
        self._stack = contextlib.ExitStack()
        self.url = ""  # set on __enter__, when the server has its port

    def __enter__(self) -> Scripted:
        server = self._stack.enter_context(serve_http(self._handler, name="scripted-origin"))
        self.url = f"http://127.0.0.1:{server.server_address[1]}/f.whl"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


# --------------------------------------------------------------------------- #
# Basics
# --------------------------------------------------------------------------- #
def test_miss_download_then_hit(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(3 * MB + 17)
    up = publish(gh, data)
    messages: list[str] = []

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, notify=messages.append)
            assert cache.cached(up.sha256) is None
            assert await consume(cache, up) == (up.sha256, len(data), False)
            path = await cache.ensure(up)
            assert path == tmp_path / "files" / up.sha256[:2] / up.sha256 == cache.path(up.sha256)
            assert path.read_bytes() == data
            async with cache.open(up) as stream:
                assert stream.hit and stream.path == path and stream.size == len(data)
                assert b"".join([c async for c in stream]) == data
            assert cache.cached(up.sha256) == path

    run(go)
    assert len(body_gets(gh)) == 1 and upstream_bytes(gh) == len(data)
    assert files_in(tmp_path, "partial") == []
    assert any("cached" in m for m in messages)
    before = len(gh.requests)

    async def again() -> None:  # a new process: the entry is verified, then served
        async with new_client() as client:
            cache = FileCache(tmp_path, client)
            assert await consume(cache, up) == (up.sha256, len(data), True)

    run(again)
    assert len(gh.requests) == before


def test_miss_reports_size_before_the_first_byte(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(MB)
    up = publish(gh, data)
    unsized = Upstream(up.url, up.filename, up.sha256)  # size from Content-Length

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, chunk_size=64 * 1024)
            async with cache.open(unsized) as stream:
                assert not stream.hit and stream.path is None and stream.size == len(data)
                assert b"".join([c async for c in stream]) == data

    run(go)


def test_invalid_digests_never_touch_the_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "cache"

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(root, client)
            for bad in ("../" * 20 + "etc/passwd", "A" * 64, "a" * 63, "a" * 65, "g" * 64,
                        "a" * 64 + "\n", ""):
                with pytest.raises(InvalidDigest):
                    cache.path(bad)
                with pytest.raises(InvalidDigest):
                    cache.cached(bad)
                with pytest.raises(InvalidDigest):
                    await cache.ensure(Upstream("http://127.0.0.1:9/x", "x.whl", bad))
                with pytest.raises(InvalidDigest):
                    cache.open(Upstream("http://127.0.0.1:9/x", "x.whl", bad))

    run(go)
    assert not root.exists()
    assert isinstance(InvalidDigest("x"), ValueError)


# --------------------------------------------------------------------------- #
# Single flight
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_fifty_concurrent_consumers_share_one_download(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(20 * MB + 12345)
    up = publish(gh, data)

    async def go() -> list[Any]:
        async with new_client() as client:
            cache = FileCache(tmp_path, client)
            jobs = [consume(cache, up) for _ in range(45)] + [cache.ensure(up) for _ in range(5)]
            return await asyncio.gather(*jobs)

    results = run(go)
    streamed, ensured = results[:45], results[45:]
    assert all(r == (up.sha256, len(data), False) for r in streamed)
    assert all(p == tmp_path / "files" / up.sha256[:2] / up.sha256 for p in ensured)
    assert len(body_gets(gh)) == 1 and body_gets(gh)[0].status == 200
    assert len([r for r in gh.requests if r.origin == "web"]) == 1
    assert upstream_bytes(gh) == len(data)


# --------------------------------------------------------------------------- #
# Resume
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("resets", [1, 2, 3])
def test_connection_resets_resume_with_range(gh: FakeGitHub, tmp_path: Path, resets: int) -> None:
    data = os.urandom(8 * MB + 999)
    up = publish(gh, data)
    rng = random.Random(resets)
    cuts = sorted(rng.sample(range(1, len(data) - 1), resets))
    # after_bytes counts the body of each (resumed) answer
    for prev, cut in zip([0, *cuts[:-1]], cuts, strict=True):
        gh.inject(Fault.reset_connection(after_bytes=cut - prev))
    messages: list[str] = []

    async def go() -> list[tuple[str, int, bool]]:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, chunk_size=256 * 1024, notify=messages.append)
            return await asyncio.gather(*[consume(cache, up) for _ in range(3)])

    assert run(go) == [(up.sha256, len(data), False)] * 3
    gets = body_gets(gh)
    assert [r.status for r in gets] == [200] + [206] * resets
    assert [r.headers.get("range") for r in gets] == [None] + [f"bytes={c}-" for c in cuts]
    etag = gets[0].headers.get("if-range")
    assert etag is None and all(r.headers["if-range"].startswith('"') for r in gets[1:])
    total = upstream_bytes(gh)
    print(f"\n{resets} reset(s) at {cuts}: upstream {total} bytes for {len(data)} "
          f"(ratio {total / len(data):.4f})")
    assert total <= 1.05 * len(data)
    assert (tmp_path / "files" / up.sha256[:2] / up.sha256).read_bytes() == data
    assert sum("retrying from byte" in m for m in messages) == resets


def test_expired_signed_url_gets_a_fresh_one(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(5 * MB)
    up = publish(gh, data)
    gh.inject(Fault.expire_mid_transfer(after_bytes=2 * MB + 5))

    async def go() -> tuple[str, int, bool]:
        async with new_client() as client:
            return await consume(FileCache(tmp_path, client), up)

    assert run(go) == (up.sha256, len(data), False)
    trail = [(r.origin, r.status, r.headers.get("range")) for r in gh.requests]
    rng = f"bytes={2 * MB + 5}-"
    assert trail == [("web", 302, None), ("objects", 200, None),
                     ("objects", 403, rng),  # the old signature expired
                     ("web", 302, rng), ("objects", 206, rng)]
    signed = [r.query for r in gh.requests if r.origin == "objects"]
    assert signed[0] == signed[1] != signed[2]
    assert upstream_bytes(gh) == len(data)


def test_too_many_resets_give_a_clean_error(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(MB)
    up = publish(gh, data)
    gh.inject(Fault.reset_connection(after_bytes=1000, times=10))

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, max_resumes=2)
            with pytest.raises(UpstreamFileError) as info:
                await cache.ensure(up)
            assert "gave up after 3 attempts" in str(info.value) and "\n" not in str(info.value)
            assert info.value.status is None

    run(go)
    assert len(body_gets(gh)) == 3
    assert files_in(tmp_path, "files") == files_in(tmp_path, "partial") == []


def test_range_ignored_restarts_and_compares_the_prefix(tmp_path: Path) -> None:
    data = os.urandom(3 * MB)
    cut = 1_500_000 + 3
    with Scripted([Answer(data, abort_after=cut), Answer(data)]) as srv:
        up = Upstream(srv.url, "f.whl", sha(data), len(data))

        async def go() -> list[tuple[str, int, bool]]:
            async with new_client() as client:
                cache = FileCache(tmp_path, client, chunk_size=256 * 1024)
                return await asyncio.gather(*[consume(cache, up) for _ in range(3)])

        assert run(go) == [(up.sha256, len(data), False)] * 3
    assert [r.get("range") for r in srv.requests] == [None, f"bytes={cut}-"]
    assert srv.requests[1]["if-range"] == '"v1"'
    assert (tmp_path / "files" / up.sha256[:2] / up.sha256).read_bytes() == data


def test_wrong_206_falls_back_to_a_plain_get(tmp_path: Path) -> None:
    data = os.urandom(2 * MB)
    cut = 700_001
    wrong = Answer(data[1000:], status=206, content_range=f"bytes 1000-{len(data) - 1}/{len(data)}")
    with Scripted([Answer(data, abort_after=cut), wrong, Answer(data)]) as srv:
        up = Upstream(srv.url, "f.whl", sha(data), len(data))

        async def go() -> Path:
            async with new_client() as client:
                return await FileCache(tmp_path, client, chunk_size=128 * 1024).ensure(up)

        assert run(go).read_bytes() == data
    assert [r.get("range") for r in srv.requests] == [None, f"bytes={cut}-", None]


def test_transient_errors_while_resuming_are_retried(tmp_path: Path) -> None:
    data = os.urandom(MB)
    cut = 300_000
    rest = Answer(data[cut:], status=206, content_range=f"bytes {cut}-{len(data) - 1}/{len(data)}")
    with Scripted([Answer(data, abort_after=cut), Answer(b"busy", status=503), rest]) as srv:
        up = Upstream(srv.url, "f.whl", sha(data), len(data))

        async def go() -> Path:
            async with new_client() as client:
                return await FileCache(tmp_path, client).ensure(up)

        assert run(go).read_bytes() == data
    assert [r.get("range") for r in srv.requests] == [None, f"bytes={cut}-", f"bytes={cut}-"]


def test_aclose_cancels_downloads_cleanly(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(16 * MB)
    up = publish(gh, data)

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, chunk_size=64 * 1024)
            async with cache.open(up) as stream:
                async for _ in stream:
                    break
                await cache.aclose()
                with pytest.raises(UpstreamFileError, match="cancelled"):
                    async for _ in stream:
                        pass
            assert files_in(tmp_path, "files") == files_in(tmp_path, "partial") == []

    run(go)


def test_content_changing_mid_download_fails_cleanly(tmp_path: Path) -> None:
    data = os.urandom(2 * MB)
    other = data[:MB] + os.urandom(MB)  # same size, differs at byte 1 MiB
    cut = MB + 200_000
    with Scripted([Answer(data, abort_after=cut), Answer(other, etag='"v2"'), Answer(data)]) as srv:
        up = Upstream(srv.url, "f.whl", sha(data), len(data))

        async def go() -> None:
            async with new_client() as client:
                cache = FileCache(tmp_path, client, chunk_size=128 * 1024)
                with pytest.raises(UpstreamChanged) as info:
                    await consume(cache, up)
                assert f"at byte {MB}" in str(info.value)
                assert files_in(tmp_path, "files") == files_in(tmp_path, "partial") == []
                # not remembered: the next request downloads afresh
                assert (await cache.ensure(up)).read_bytes() == data

        run(go)
    assert len(srv.requests) == 3


# --------------------------------------------------------------------------- #
# Verification
# --------------------------------------------------------------------------- #
def test_digest_mismatch_stores_nothing_and_is_remembered(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(4 * MB)
    good = publish(gh, data)
    wrong = "0" * 64
    up = Upstream(good.url, good.filename, wrong, len(data))
    chunk = 256 * 1024

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, chunk_size=chunk, failure_ttl=0.5)
            got = [0] * 4

            async def reader(i: int) -> None:
                async with cache.open(up) as stream:
                    assert stream.size == len(data)
                    async for piece in stream:
                        got[i] += len(piece)

            results = await asyncio.gather(*[reader(i) for i in range(4)],
                                           cache.ensure(up), return_exceptions=True)
            for exc in results:
                assert isinstance(exc, DigestMismatch)
                assert (exc.filename, exc.expected, exc.actual) == (up.filename, wrong, sha(data))
                assert str(exc).count("\n") == 0
            # the last chunk was never handed out: no consumer got the whole (wrong) file
            assert max(got) <= len(data) - chunk
            assert files_in(tmp_path, "files") == files_in(tmp_path, "partial") == []
            seen = len(gh.requests)
            for _ in range(3):  # fail fast, without asking upstream
                with pytest.raises(DigestMismatch):
                    await cache.ensure(up)
                with pytest.raises(DigestMismatch):
                    async with cache.open(up):
                        pass
            assert len(gh.requests) == seen
            await asyncio.sleep(0.6)  # the window is over: upstream is asked again
            with pytest.raises(DigestMismatch):
                await cache.ensure(up)
            assert len(gh.requests) > seen

    run(go)
    assert len(body_gets(gh)) == 2


def test_size_mismatch_is_refused_before_downloading(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(MB)
    good = publish(gh, data)
    up = Upstream(good.url, good.filename, good.sha256, len(data) + 1)

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client)
            with pytest.raises(SizeMismatch) as info:
                async with cache.open(up):
                    pass
            assert (info.value.expected, info.value.actual) == (len(data) + 1, len(data))
            assert isinstance(info.value, UpstreamError)
            seen = len(gh.requests)
            with pytest.raises(SizeMismatch):
                await cache.ensure(up)
            assert len(gh.requests) == seen

    run(go)
    assert files_in(tmp_path, "files") == files_in(tmp_path, "partial") == []


def test_planted_truncated_and_bitflipped_files_are_evicted(gh: FakeGitHub, tmp_path: Path) -> None:
    a, b = os.urandom(2 * MB), os.urandom(2 * MB)
    up_a, up_b = publish(gh, a, "a-1.0-py3-none-any.whl"), publish(gh, b, "b-1.0-py3-none-any.whl")
    messages: list[str] = []

    async def fill() -> tuple[Path, Path]:
        async with new_client() as client:
            cache = FileCache(tmp_path, client)
            return await cache.ensure(up_a), await cache.ensure(up_b)

    path_a, path_b = run(fill)
    with open(path_a, "r+b") as fh:
        fh.truncate(MB)
    flipped = bytearray(path_b.read_bytes())
    flipped[12345] ^= 0x01
    path_b.write_bytes(flipped)
    assert len(body_gets(gh)) == 2

    async def check() -> None:  # a new process
        async with new_client() as client:
            cache = FileCache(tmp_path, client, notify=messages.append)
            assert cache.cached(up_a.sha256) is None and not path_a.exists()
            assert await consume(cache, up_b) == (up_b.sha256, len(b), False)
            assert await consume(cache, up_a) == (up_a.sha256, len(a), False)
            assert path_a.read_bytes() == a and path_b.read_bytes() == b
            # verified once per process; afterwards a size check catches truncation
            assert cache.cached(up_a.sha256) == path_a
            with open(path_a, "r+b") as fh:
                fh.truncate(10)
            assert cache.cached(up_a.sha256) is None and not path_a.exists()
            assert (await cache.ensure(up_a)).read_bytes() == a

    run(check)
    assert len(body_gets(gh)) == 5
    assert sum("evicted corrupt cache entry" in m for m in messages) == 3


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #
def test_upstream_404_is_one_line_and_redacted(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(1000)
    up = publish(gh, data)
    secret_url = up.url.replace("http://", "http://alice:s3cret@")
    up = Upstream(secret_url, up.filename, up.sha256, up.size)
    gh.inject(Fault.status(404, origin="web"))

    async def go() -> None:
        async with new_client() as client:
            with pytest.raises(UpstreamFileError) as info:
                async with FileCache(tmp_path, client).open(up):
                    pass
            err = info.value
            assert err.status == 404 and err.filename == up.filename
            assert "s3cret" not in str(err) and "alice" not in str(err) and "***@" in err.url
            assert "\n" not in str(err) and "HTTP 404" in str(err)
            assert isinstance(err, UpstreamError) and isinstance(err, SpacyIndexError)

    run(go)
    assert files_in(tmp_path, "files") == files_in(tmp_path, "partial") == []


def test_disk_full_is_a_clean_error(gh: FakeGitHub, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    small = os.urandom(100_000)
    big = os.urandom(6 * MB)
    up_small = publish(gh, small, "small-1.0-py3-none-any.whl")
    up_big = publish(gh, big, "big-1.0-py3-none-any.whl")
    real = cache_partial._pwrite_all

    def disk_full(fd: int, data: Any, pos: int) -> None:
        if pos + len(data) > 3 * MB:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data, pos)

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, chunk_size=256 * 1024)
            small_path = await cache.ensure(up_small)
            monkeypatch.setattr(cache_partial, "_pwrite_all", disk_full)
            results = await asyncio.gather(*[consume(cache, up_big) for _ in range(3)],
                                           cache.ensure(up_big), return_exceptions=True)
            for exc in results:
                assert isinstance(exc, CacheWriteError)
                assert exc.root == tmp_path and str(tmp_path) in str(exc)
                assert "No space left on device" in str(exc) and "\n" not in str(exc)
            assert files_in(tmp_path, "partial") == []
            assert files_in(tmp_path, "files") == [small_path]
            assert small_path.read_bytes() == small
            assert cache.cached(up_small.sha256) == small_path
            monkeypatch.setattr(cache_partial, "_pwrite_all", real)
            # not remembered: once there is room, it works
            assert (await cache.ensure(up_big)).read_bytes() == big

    run(go)


# --------------------------------------------------------------------------- #
# Consumers leaving
# --------------------------------------------------------------------------- #
def test_a_consumer_leaving_does_not_disturb_the_others(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(10 * MB)
    up = publish(gh, data)

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, chunk_size=256 * 1024)
            first_chunk = asyncio.Event()

            async def cancelled_reader() -> None:
                async with cache.open(up) as stream:
                    async for _ in stream:
                        first_chunk.set()
                        await asyncio.sleep(3600)  # a stalled client, cancelled below

            async def quitter() -> int:
                async with cache.open(up) as stream:
                    async for piece in stream:
                        return len(piece)  # stops iterating after one chunk
                return 0

            victim = asyncio.create_task(cancelled_reader())
            others = [asyncio.create_task(consume(cache, up)) for _ in range(3)]
            assert await quitter() > 0
            await first_chunk.wait()
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            assert await asyncio.gather(*others) == [(up.sha256, len(data), False)] * 3

    run(go)
    assert len(body_gets(gh)) == 1


def test_download_completes_when_every_consumer_left(gh: FakeGitHub, tmp_path: Path) -> None:
    data = os.urandom(8 * MB)
    up = publish(gh, data)

    async def go() -> None:
        async with new_client() as client:
            cache = FileCache(tmp_path, client, chunk_size=128 * 1024)

            async def reader() -> None:
                async with cache.open(up) as stream:
                    async for _ in stream:
                        await asyncio.sleep(3600)

            tasks = [asyncio.create_task(reader()) for _ in range(3)]
            await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await cache.wait_idle()
            path = cache.cached(up.sha256)
            assert path is not None and path.read_bytes() == data

    run(go)
    assert len(body_gets(gh)) == 1
    assert files_in(tmp_path, "partial") == []


# --------------------------------------------------------------------------- #
# Memory
# --------------------------------------------------------------------------- #
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _rss_probe(size_mb: int, consumers: int, root: str) -> None:
    """Run in a fresh interpreter (so earlier tests' allocations don't blur the numbers):
    stream a file to ``consumers`` consumers and print the peak RSS growth as JSON."""
    with FakeGitHub(load_fixture=False) as gh:
        data = os.urandom(MB) * size_mb + os.urandom(777)  # held by the in-process fake
        up = publish(gh, data)
        base = _status_kb("VmRSS")
        try:  # reset the high-water mark, so setup peaks don't count
            Path("/proc/self/clear_refs").write_text("5")
            hwm = _status_kb("VmHWM") <= base + 1024
        except OSError:
            hwm = False
        peak = [base]
        stop = threading.Event()

        def sample() -> None:  # in case the high-water mark cannot be reset
            while not stop.wait(0.005):
                peak[0] = max(peak[0], _status_kb("VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        async def go() -> list[tuple[str, int, bool]]:
            async with new_client() as client:
                cache = FileCache(Path(root), client)
                return await asyncio.gather(*[consume(cache, up) for _ in range(consumers)])

        try:
            ok = run(go, timeout=600) == [(up.sha256, len(data), False)] * consumers
        finally:
            stop.set()
            sampler.join()
        if hwm:
            peak[0] = max(peak[0], _status_kb("VmHWM"))
        print(json.dumps({"ok": ok, "base_kb": base, "growth_kb": peak[0] - base,
                          "hwm_reset": hwm, "gets": len(body_gets(gh)), "size": len(data)}))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_memory_stays_flat_while_streaming_a_big_file(tmp_path: Path) -> None:
    code = f"from tests.test_cache import _rss_probe; _rss_probe(200, 8, {str(tmp_path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    growth_mb = out["growth_kb"] / 1024
    print(f"\npeak RSS growth streaming {out['size'] / MB:.0f} MiB to 8 consumers: "
          f"{growth_mb:.1f} MiB (baseline {out['base_kb'] / 1024:.0f} MiB, "
          f"high-water mark reset: {out['hwm_reset']})")
    assert out["ok"] and out["gets"] == 1
    # 1 MiB chunks: a consumer holds ~2 (the one it was given, the one being read) plus
    # allocator slack; the download itself ~2. Nothing may scale with the file size.
    assert growth_mb < 48
