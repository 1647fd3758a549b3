"""Page fetches in a process of their own (``[limits] page_fetch = "process"``, the default) and
in a thread (``"thread"``): the same answers, errors and caps, cancellation that reaches the
upstream, a process that dies and is replaced, nothing left running, no secret on a command
line, and the upstream requests counted in serve's metrics."""

from __future__ import annotations

import asyncio
import gc
import http.server
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from spacy_index.errors import UpstreamError
from spacy_index.server.metrics import Metrics
from spacy_index.server.sources.fetch import ProcessFetcher, ThreadFetcher, page_fetcher
from tests.servers import serve_http

SECRET = "fetch-secret-7c41d2"
MODES = ["process", "thread"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.auth_seen.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        if self.path.startswith("/slow/"):
            srv.slow_started.set()  # type: ignore[attr-defined]
            # answer nothing until the client goes away (or 20 s)
            self.connection.settimeout(20)
            try:
                gone = self.connection.recv(1) == b""
            except OSError:
                gone = True
            srv.client_left.append(gone)  # type: ignore[attr-defined]
            return
        if self.path.startswith("/big/"):
            body = b"x" * 300_000
        elif self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", "/simple/demo/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            body = b'{"meta": {"api-version": "1.0"}, "name": "demo", "files": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("ETag", '"abc"')
        self.send_header("X-Other", "not kept")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def upstream():
    with serve_http(_Handler) as httpd:
        httpd.auth_seen, httpd.client_left = [], []
        httpd.slow_started = threading.Event()
        httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
        yield httpd


def _settings(base: str, password: str | None = None) -> dict[str, object]:
    return {"cfg_url": f"{base}/simple/", "username": "user" if password else None,
            "password": password, "credentials": "none", "ca_bundle": None, "proxy": None}


@pytest.mark.parametrize("mode", MODES)
def test_fetch_answers_the_page_with_the_kept_headers(upstream, mode):
    async def main():
        fetcher = page_fetcher(mode, "up", _settings(upstream.base))
        try:
            got = await fetcher.fetch(f"{upstream.base}/moved/", {"Accept": "*/*"}, 1 << 20,
                                      "the page for 'demo'")
        finally:
            await fetcher.aclose()
        return got

    got = asyncio.run(main())
    assert got.status == 200
    assert got.url == f"{upstream.base}/simple/demo/"  # the URL after the redirect
    assert got.headers == {"content-type": "application/vnd.pypi.simple.v1+json",
                           "etag": '"abc"'}
    assert got.body.startswith(b'{"meta"')


@pytest.mark.parametrize("mode", MODES)
def test_errors_and_caps_are_one_line_upstream_errors(upstream, mode):
    async def main():
        fetcher = page_fetcher(mode, "up", _settings(upstream.base))
        try:
            with pytest.raises(UpstreamError) as big:
                await fetcher.fetch(f"{upstream.base}/big/", {}, 100_000, "the page for 'big'")
            dead = f"http://127.0.0.1:{_closed_port()}/simple/x/"
            with pytest.raises(UpstreamError) as refused:
                await fetcher.fetch(dead, {}, 1 << 20, "the page for 'x'")
        finally:
            await fetcher.aclose()
        return str(big.value), str(refused.value)

    big, refused = asyncio.run(main())
    assert big == "the page for 'big' is 300,000 bytes, over the 100,000 byte limit"
    assert "127.0.0.1" in refused and "\n" not in refused
    assert "Traceback" not in refused


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _held_fetch(fetcher: ProcessFetcher, upstream, name: str) -> asyncio.Task:
    """A fetch of ``/slow/<name>/``, once the upstream holds it unanswered."""
    task = asyncio.create_task(fetcher.fetch(f"{upstream.base}/slow/{name}/", {}, 1 << 20,
                                             f"the page for {name!r}"))
    assert await asyncio.to_thread(upstream.slow_started.wait, 20)
    return task


def test_cancelling_a_fetch_closes_the_upstream_connection(upstream):
    async def main():
        fetcher = ProcessFetcher("up", _settings(upstream.base))
        try:
            task = await _held_fetch(fetcher, upstream, "a")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            deadline = time.monotonic() + 10
            while not upstream.client_left and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            # the process is still there for the next fetch
            again = await fetcher.fetch(f"{upstream.base}/simple/demo/", {}, 1 << 20, "demo")
        finally:
            await fetcher.aclose()
        return again

    again = asyncio.run(main())
    assert upstream.client_left == [True]
    assert again.status == 200


def test_a_process_that_dies_fails_its_fetches_and_is_replaced(upstream):
    async def main():
        fetcher = ProcessFetcher("up", _settings(upstream.base))
        try:
            task = await _held_fetch(fetcher, upstream, "b")
            first = fetcher._child
            first.proc.kill()
            with pytest.raises(UpstreamError) as stopped:
                await asyncio.wait_for(task, 20)
            again = await fetcher.fetch(f"{upstream.base}/simple/demo/", {}, 1 << 20, "demo")
            second = fetcher._child
        finally:
            await fetcher.aclose()
        return str(stopped.value), again, first, second

    stopped, again, first, second = asyncio.run(main())
    assert stopped == ("the page fetch process of source 'up' stopped; the next request "
                       "starts another")
    assert again.status == 200
    assert second is not first
    assert first.proc.returncode is not None and second.proc.returncode == 0


def test_aclose_and_garbage_collection_stop_the_process(upstream):
    async def fetch_once(fetcher):
        await fetcher.fetch(f"{upstream.base}/simple/demo/", {}, 1 << 20, "demo")

    closed = ProcessFetcher("up", _settings(upstream.base))
    asyncio.run(fetch_once(closed))
    asyncio.run(closed.aclose())
    assert closed._child.proc.returncode == 0

    dropped = ProcessFetcher("up", _settings(upstream.base))
    asyncio.run(fetch_once(dropped))
    proc = dropped._child.proc
    del dropped
    gc.collect()
    assert proc.returncode == 0  # the finalizer closed its stdin and reaped it


def test_the_secret_goes_through_the_pipe_not_the_command_line(upstream):
    async def main():
        fetcher = ProcessFetcher("up", _settings(upstream.base, password=SECRET))
        try:
            await fetcher.fetch(f"{upstream.base}/simple/demo/", {}, 1 << 20, "demo")
            pid = fetcher._child.proc.pid
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        finally:
            await fetcher.aclose()
        return cmdline, environ

    cmdline, environ = asyncio.run(main())
    assert SECRET.encode() not in cmdline and SECRET.encode() not in environ
    assert b"spacy_index.server.sources.fetch_worker" in cmdline
    assert upstream.auth_seen and all(a and a.startswith("Basic ") for a in upstream.auth_seen)


@pytest.mark.parametrize("mode", MODES)
def test_upstream_requests_are_counted_in_serve_metrics(upstream, mode, tmp_path):
    metrics = Metrics(SimpleNamespace(cache_dir=tmp_path))

    class _Source:  # what Metrics.instrument looks at: the source's attributes
        name = "up"

        def __init__(self):
            self.pages = page_fetcher(mode, "up", _settings(upstream.base))

        def wrap_loads(self, wrap):
            pass

    source = _Source()
    metrics.instrument(source)

    async def main():
        try:
            await source.pages.fetch(f"{upstream.base}/moved/", {}, 1 << 20, "demo")
            await asyncio.sleep(0.1)  # the counts arrive on the loop just after the answer
        finally:
            await source.pages.aclose()

    asyncio.run(main())
    requests = metrics.upstream_requests
    assert requests.labels("up", "302")._value.get() == 1  # the redirect, then the page
    assert requests.labels("up", "200")._value.get() == 1
    assert metrics.upstream_bytes.labels("up")._value.get() > 0


def test_start_runs_the_process_before_the_first_fetch(upstream):
    async def main():
        fetcher = ProcessFetcher("up", _settings(upstream.base))
        try:
            fetcher.start()  # what serve does before it listens
            started = fetcher._child
            assert started is not None and started.proc.poll() is None
            got = await fetcher.fetch(f"{upstream.base}/simple/demo/", {}, 1 << 20, "demo")
            return got, started is fetcher._child
        finally:
            await fetcher.aclose()

    got, same = asyncio.run(main())
    assert got.status == 200 and same  # the fetch used the process started before it


def test_thread_mode_keeps_a_replaceable_client(upstream):
    fetcher = ThreadFetcher("up", _settings(upstream.base))
    assert fetcher.client is not None
    asyncio.run(fetcher.aclose())


def test_no_fetch_process_outlives_its_test():
    # every ProcessFetcher above was closed or collected: none of our children is left
    gc.collect()
    mine = [p for p in Path("/proc").iterdir() if p.name.isdigit()
            and _ppid(p) == os.getpid() and b"fetch_worker" in _cmdline(p)]
    assert mine == []


def _ppid(proc: Path) -> int:
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
