"""The server protocol (``server/protocol.py``): zero-copy files and task-free cached pages
give the same bytes and headers as uvicorn's stock protocol, over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest

from spacy_index.server.logbuffer import BufferedStreamHandler
from spacy_index.server.protocol import ZEROCOPY, protocol_class
from spacy_index.server.wiring import create_app
from tests.servers import free_port, run_app, tls_files, wait_healthy
from tests.worlds import WorldSpec

TOKEN = "fake-ghp-PROTOCOLtokenPROTOCOL0123456789"
JSON = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


#: one pipeline on a fake GitHub; every server on one cache folder (it holds the files)
WORLD = WorldSpec("protocol", pipelines={"sm": {"version": "3.8.50"}}, token=TOKEN, shared_cache=True)


def _counting(app):
    """Record which requests the protocol answered without a task."""
    answered: list[str] = []
    inner = app.fast

    def fast(scope):
        answer = inner(scope)
        if answer is not None:
            answered.append(scope["path"])
        return answer

    app.fast = fast
    return answered


def _comparable(r: httpx.Response) -> tuple:
    headers = sorted((k, v) for k, v in r.headers.items() if k != "date")
    return r.status_code, headers, r.content


def test_cached_pages_skip_the_task_and_match_the_routed_answer(world):
    _server, app = world.app()
    answered = _counting(app)
    with run_app(app) as url, httpx.Client(base_url=url) as c:
        page = "/simple/en-core-web-sm/"
        first = {a: c.get(page, headers={"Accept": a}) for a in (PIP_ACCEPT, "text/html")}
        assert answered == []  # nothing rendered yet: the routed path answered and rendered
        again = {a: c.get(page, headers={"Accept": a}) for a in (PIP_ACCEPT, "text/html")}
        assert answered == [page, page]
        for a in first:
            assert _comparable(first[a]) == _comparable(again[a])
        etag = first[PIP_ACCEPT].headers["etag"]
        slow_304 = None
        with run_app(app, protocol="h11") as stock_url:
            # uvicorn's stock protocol (no fast path) gives the same answers
            stock = httpx.get(stock_url + page, headers={"Accept": PIP_ACCEPT})
            assert _comparable(stock) == _comparable(again[PIP_ACCEPT])
            slow_304 = httpx.get(stock_url + page, headers={"Accept": PIP_ACCEPT, "If-None-Match": etag})
        fast_304 = c.get(page, headers={"Accept": PIP_ACCEPT, "If-None-Match": etag})
        assert fast_304.status_code == 304 == slow_304.status_code
        assert _comparable(fast_304) == _comparable(slow_304)
        head = c.head(page, headers={"Accept": PIP_ACCEPT})
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(again[PIP_ACCEPT].content))
        n = len(answered)
        # not for the fast path: 406, redirects, a query string, other routes
        assert c.get(page, headers={"Accept": "application/xml"}).status_code == 406
        assert c.get("/simple/En_Core_Web_Sm/").status_code == 301
        assert c.get(page + "?x=1", headers={"Accept": PIP_ACCEPT}).status_code == 200
        assert len(answered) == n


def test_fast_path_never_serves_a_stale_page(world):
    server, app = world.app()
    answered = _counting(app)
    with run_app(app) as url, httpx.Client(base_url=url) as c:
        page = "/simple/en-core-web-sm/"
        c.get(page, headers={"Accept": JSON})
        c.get(page, headers={"Accept": JSON})
        assert answered == [page]
        # the catalog is due for a refresh: the routed path must look (and re-render)
        source = server.source_for("en-core-web-sm")
        source._loaded_at -= 10 * source._refresh
        c.get(page, headers={"Accept": JSON})
        assert answered == [page]
        c.get(page, headers={"Accept": JSON})
        assert answered == [page, page]
        # new metadata arrived (the page now advertises its sha256): re-rendered, not replayed
        before = c.get(page, headers={"Accept": JSON}).json()["files"][0]["core-metadata"]
        assert before is True
        sm = world.sm
        assert c.get(f"/files/{sm.wheel.name}.metadata").content == sm.metadata
        after = c.get(page, headers={"Accept": JSON}).json()["files"][0]["core-metadata"]
        assert after == {"sha256": hashlib.sha256(sm.metadata).hexdigest()}


def test_fast_answers_are_access_logged(world, caplog):
    _server, app = world.app()
    answered = _counting(app)
    with caplog.at_level(logging.INFO, logger="spacy_index.access"), run_app(app) as url:
        for _ in range(3):
            httpx.get(url + "/simple/en-core-web-sm/", headers={"Accept": JSON})
    lines = [r.getMessage() for r in caplog.records if r.name == "spacy_index.access"]
    assert len(answered) == 2
    assert len(lines) == 3 and all(line.startswith("GET /simple/en-core-web-sm/ 200 ") for line in lines)


def test_pipelined_requests_are_answered_in_order(world):
    _server, app = world.app()
    sm = world.sm
    with run_app(app) as url:
        httpx.get(url + "/simple/en-core-web-sm/", headers={"Accept": JSON})  # render it
        port = int(url.rsplit(":", 1)[1])
        requests = (
            f"GET /files/{sm.wheel.name} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
            f"GET /simple/en-core-web-sm/ HTTP/1.1\r\nHost: x\r\nAccept: {JSON}\r\n\r\n"
            f"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(requests)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"206", b"200", b"200"]
    assert data.index(sm.wheel.read_bytes()[:10]) < data.index(b'"files"') < data.index(b'"status"')


def test_connection_close_and_http10_on_cached_pages(world):
    _server, app = world.app()
    answered = _counting(app)
    with run_app(app) as url:
        httpx.get(url + "/simple/en-core-web-sm/", headers={"Accept": JSON})  # render it
        port = int(url.rsplit(":", 1)[1])
        page = f"GET /simple/en-core-web-sm/ HTTP/1.1\r\nHost: x\r\nAccept: {JSON}\r\n"
        for raw, closes in (((page + "\r\n") * 2 + page + "Connection: close\r\n\r\n", True),
                            (f"GET /simple/en-core-web-sm/ HTTP/1.0\r\nAccept: {JSON}\r\n\r\n", True)):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(raw.encode())
                data = b""
                while chunk := s.recv(65536):  # ends: the server closed the connection
                    data += chunk
            n = raw.count("GET ")
            assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"200"] * n
            assert data.count(b'"name":"en-core-web-sm"') == n
            assert data.lower().count(b"connection: close") == 1 and closes
    assert len(answered) == 4  # every page after the first render came from the fast path


@pytest.mark.parametrize("protocol", [None, "h11"], ids=["zero-copy", "stock"])
def test_files_whole_ranges_and_head_are_byte_exact(world, protocol):
    _server, app = world.app()
    sm = world.sm
    data = sm.wheel.read_bytes()
    size = len(data)
    with run_app(app, protocol=protocol) as url, httpx.Client(base_url=url) as c:
        path = f"/files/{sm.wheel.name}"
        c.get(path)  # cached now
        full = c.get(path)
        assert full.status_code == 200 and full.content == data
        assert full.headers["content-length"] == str(size)
        for rng, want in ((f"bytes=0-{size - 1}", data), ("bytes=1-1", data[1:2]),
                          ("bytes=-7", data[-7:]), (f"bytes={size - 5}-", data[-5:]),
                          (f"bytes=100-{size * 2}", data[100:])):
            r = c.get(path, headers={"Range": rng})
            assert r.status_code == 206 and r.content == want, rng
        head = c.head(path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(size)
        meta = c.get(path + ".metadata")
        assert meta.content == sm.metadata
        # keep-alive survives the zero-copy answers: one connection did all of this
        assert c.get("/health").status_code == 200


def test_a_client_leaving_mid_file_does_not_hurt_the_next(world, tmp_path):
    _server, app = world.app()
    sm = world.sm
    big = tmp_path / "files"
    big.mkdir()
    with run_app(app) as url:
        path = f"/files/{sm.wheel.name}"
        httpx.get(url + path)
        port = int(url.rsplit(":", 1)[1])
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                s.recv(100)
            # closed with most of the file unsent
        time.sleep(0.2)
        r = httpx.get(url + path)
        assert hashlib.sha256(r.content).hexdigest() == sm.sha256


def test_zero_copy_is_offered_on_plain_tcp_only(tmp_path):
    seen: list[bool] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append(ZEROCOPY in scope.get("extensions", {}))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    assert protocol_class() is not None  # httptools is a dependency: the real protocol runs
    with run_app(app) as url:
        httpx.get(url)
    cert, key, ca = tls_files(tmp_path)
    with run_app(app, ssl_certfile=cert, ssl_keyfile=key) as url:
        httpx.get(url, verify=ssl.create_default_context(cafile=ca))
    assert seen == [True, False]


def test_tls_files_still_stream_correctly(world, tmp_path):
    _server, app = world.app()
    sm = world.sm
    cert, key, ca = tls_files(tmp_path)
    with run_app(app, ssl_certfile=cert, ssl_keyfile=key) as url, \
            httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=ca)) as c:
        path = f"/files/{sm.wheel.name}"
        c.get(path)
        assert hashlib.sha256(c.get(path).content).hexdigest() == sm.sha256
        assert c.get(path, headers={"Range": "bytes=-3"}).content == sm.wheel.read_bytes()[-3:]


# ----------------------------------------------------------------------------- access log
def test_buffered_access_log_keeps_every_line_in_order():
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval=3600, max_bytes=200)
    logger = logging.getLogger("spacy_index.test-buffered")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("GET /a 200")
        logger.info("GET /b 200")
        assert stream.getvalue() == ""  # batched
        logger.warning("upstream slow")  # a warning is written at once, with what came before
        assert stream.getvalue() == "GET /a 200\nGET /b 200\nupstream slow\n"
        for i in range(20):  # max_bytes reached: written without waiting for the timer
            logger.info("GET /%02d 200", i)
        assert stream.getvalue().count("\n") >= 3 + 15
        logger.info("GET /last 200")
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = stream.getvalue().splitlines()
    assert lines[3:] == [f"GET /{i:02d} 200" for i in range(20)] + ["GET /last 200"]


@pytest.mark.slow
def test_cli_serve_writes_one_access_line_per_request(world, tmp_path):
    gh = world.gh
    port = free_port()
    env = {**os.environ, "GITHUB_API_URL": gh.api_url, "GITHUB_TOKEN": TOKEN,
           "SPACY_INDEX_CACHE_DIR": str(tmp_path / "cache")}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "spacy_index", "serve", "--port", str(port),
                                 "--upstream", "http://127.0.0.1:9/simple/"],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base)
        for _ in range(5):  # the first is routed and rendered, the others answered by the protocol
            assert httpx.get(base + "/simple/en-core-web-sm/", headers={"Accept": JSON}).status_code == 200
        wanted = "GET /simple/en-core-web-sm/ 200 "
        for _ in range(100):  # written within the flush interval (1 s), without a shutdown
            if log_path.read_text().count(wanted) == 5:
                break
            time.sleep(0.05)
        assert log_path.read_text().count(wanted) == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log_path.read_text()
    assert text.count(wanted) == 5 and "GET /health 200 " in text
    assert TOKEN not in text and "Traceback" not in text


# ----------------------------------------------------------------------------- threaded sendfile
# Spans of at least protocol.THREAD_MIN bytes go out by blocking sendfile(2) calls in a worker
# thread (protocol._threaded_sendfile); the wheel of ``world`` is far smaller, so these tests
# use their own world (BIG_WORLD), its pipeline padded above it.
import contextlib  # noqa: E402

from spacy_index.server import zerocopy  # noqa: E402


def _big_data(world) -> bytes:
    assert world.md.wheel.stat().st_size > 4 * zerocopy.THREAD_MIN
    return world.md.wheel.read_bytes()


#: a pipeline wheel of ~12 MiB (> THREAD_MIN) on a fake GitHub (``world_factory(BIG_WORLD)``)
BIG_WORLD = WorldSpec("protocol-big", token=TOKEN, shared_cache=True,
                      pipelines={"md": {"name": "core_web_md", "version": "3.8.51", "pad_bytes": 12 << 20}},
                      parts={"data": _big_data})


@pytest.fixture
def thread_jobs(monkeypatch):
    """Count the transfers the worker threads took (True) or left to loop.sendfile (False)."""
    taken: list[bool] = []
    senders = zerocopy._SENDERS
    submit = senders.submit

    def counting(job):
        ok = submit(job)
        taken.append(ok)
        return ok

    monkeypatch.setattr(senders, "submit", counting)
    return taken


def _busy_threads() -> int:
    s = zerocopy._SENDERS
    with s._lock:
        return s._threads - s._idle


def _wait_idle(timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _busy_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _busy_threads() == 0


def _request(sock: socket.socket, path: str, headers: str = "") -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())


def _response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """Read one response with a Content-Length from ``sock`` (``buf``: bytes read ahead)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "closed before the headers"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {len(body)} of {length} body bytes"
        body += chunk
    buf[:] = body[length:]
    return int(head.split(b" ", 2)[1]), bytes(body[:length])


def test_threaded_sendfile_whole_and_ranges_are_byte_exact_then_keep_alive(world_factory, thread_jobs):
    big = world_factory(BIG_WORLD)
    _server, app = big.app()
    data, md = big.data, big.md
    size, small = len(data), zerocopy.THREAD_MIN - 1
    path = f"/files/{md.wheel.name}"
    with run_app(app) as url:
        assert httpx.get(url + path).content == data  # now cached
        thread_jobs.clear()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            buf = bytearray()
            for rng, want in ((None, data), (f"bytes=0-{size - 1}", data),
                              (f"bytes=7-{7 + 2 * zerocopy.THREAD_MIN}",
                               data[7:8 + 2 * zerocopy.THREAD_MIN]),
                              (f"bytes={size - zerocopy.THREAD_MIN - 3}-",
                               data[-zerocopy.THREAD_MIN - 3:]),
                              (f"bytes=0-{small - 1}", data[:small]),  # below: loop.sendfile
                              ("bytes=-7", data[-7:])):
                _request(s, path, f"Range: {rng}\r\n" if rng else "")
                status, body = _response(s, buf)
                assert status == (206 if rng else 200) and body == want, rng
            # keep-alive after the threaded answers: the same connection still works
            _request(s, "/health")
            assert _response(s, buf)[0] == 200
            # pipelined: a threaded answer, then a small one, both in order
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"
                      f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=1-1\r\n\r\n".encode())
            assert _response(s, buf) == (200, data)
            assert _response(s, buf) == (206, data[1:2])
        assert thread_jobs == [True] * 5  # whole x2, the two big ranges, the pipelined whole
        with httpx.Client(base_url=url) as c:
            head = c.head(path)
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(size)
        _wait_idle()


def test_threaded_sendfile_client_leaving_mid_file_closes_only_that_connection(world_factory,
                                                                               thread_jobs):
    big = world_factory(BIG_WORLD)
    _server, app = big.app()
    data, md = big.data, big.md
    path = f"/files/{md.wheel.name}"
    with run_app(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url) as keep:
            assert keep.get(path).content == data  # cached; this connection stays open
            _wait_idle()
            fds = len(os.listdir("/proc/self/fd"))
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    _request(s, path)
                    s.recv(100)
                # closed with most of the file unsent: the blocked sendfile fails (EPIPE)
            _wait_idle()
            deadline = time.monotonic() + 5  # the loop closes the failed connections
            while len(os.listdir("/proc/self/fd")) > fds + 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(os.listdir("/proc/self/fd")) <= fds + 2  # the duplicates were closed
            # (a client may be gone before its transfer starts: then there is none to do)
            assert thread_jobs and all(thread_jobs)
            # the other connection, kept alive meanwhile, is unharmed
            assert hashlib.sha256(keep.get(path).content).hexdigest() == md.sha256
            assert keep.get("/health").status_code == 200


def test_all_sendfile_threads_busy_falls_back_to_loop_sendfile(world_factory, monkeypatch):
    full = zerocopy._Senders(0)  # as if every thread were taken
    thread_jobs: list[bool] = []
    monkeypatch.setattr(full, "submit", lambda job: thread_jobs.append(False) or False)
    monkeypatch.setattr(zerocopy, "_SENDERS", full)
    big = world_factory(BIG_WORLD)
    _server, app = big.app()
    data, md = big.data, big.md
    path = f"/files/{md.wheel.name}"
    with run_app(app) as url, httpx.Client(base_url=url) as c:
        c.get(path)
        thread_jobs.clear()
        assert c.get(path).content == data
        r = c.get(path, headers={"Range": f"bytes=3-{3 + 2 * zerocopy.THREAD_MIN}"})
        assert r.status_code == 206 and r.content == data[3:4 + 2 * zerocopy.THREAD_MIN]
        assert c.get("/health").status_code == 200
    assert thread_jobs == [False, False]


@pytest.mark.slow
def test_a_stalled_client_does_not_hold_up_shutdown(world_factory, thread_jobs):
    """A client that stops reading keeps the worker thread in sendfile(2); at shutdown, after
    uvicorn's graceful timeout (5 s in run_app), the cancelled transfer shuts the socket down,
    which ends the blocked call, and the thread is free again."""
    big = world_factory(BIG_WORLD)
    _server, app = big.app()
    data, md = big.data, big.md
    path = f"/files/{md.wheel.name}"
    s = None
    try:
        with run_app(app) as url:
            assert httpx.get(url + path).content == data
            _wait_idle()
            # (default buffers: the 12 MiB do not fit in both sides' socket buffers)
            s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30)
            _request(s, path)
            deadline = time.monotonic() + 10
            while not _busy_threads() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _busy_threads() == 1  # blocked: the client reads nothing
            t0 = time.monotonic()
        assert time.monotonic() - t0 < 12
        _wait_idle(5)
        got = 0
        with contextlib.suppress(ConnectionError):
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        assert got < len(data)  # the connection ended without the whole body
    finally:
        if s is not None:
            s.close()


def test_threaded_sendfile_corks_while_sending_and_uncorks_before_reporting_back(tmp_path):
    """The worker thread corks the socket for the file (full segments, as nginx's
    ``tcp_nopush``) and uncorks it after its last call, before the loop hears back: the
    file's last partial segment leaves at once instead of after the loop has woken up (or
    the kernel's 200 ms cork ceiling)."""
    if not hasattr(socket, "TCP_CORK"):
        pytest.skip("TCP_CORK is Linux-only")
    data = os.urandom(3 * zerocopy.THREAD_MIN + 12345)  # not a whole number of segments
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    cork = (socket.IPPROTO_TCP, socket.TCP_CORK)

    async def main() -> tuple[list[int], int, bytes]:
        import asyncio

        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname(), timeout=30)
            accepted, _ = listener.accept()
        # small buffers: the thread stays in sendfile(2) until the client reads
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
        sock = transport.get_extra_info("socket")
        seen: list[int] = []
        got = bytearray()

        def read() -> None:
            # the client, before reading anything: the socket becomes corked once the thread
            # runs, and stays so while the file goes out (it cannot finish unread)
            deadline = time.monotonic() + 10
            while not sock.getsockopt(*cork) and time.monotonic() < deadline:
                time.sleep(0.005)
            seen.append(sock.getsockopt(*cork))
            while len(got) < len(data):
                chunk = client.recv(1 << 20)
                if not chunk:
                    break
                got.extend(chunk)

        reader = loop.run_in_executor(None, read)
        with open(path, "rb") as f:
            assert await zerocopy._threaded_sendfile(loop, transport, f, 0, len(data))
        after = sock.getsockopt(*cork)  # the loop's first look once the thread reported
        await reader
        transport.close()
        client.close()
        return seen, after, bytes(got)

    import asyncio

    seen, after, got = asyncio.run(main())
    assert seen == [1] and after == 0
    assert got == data


def test_cache_hits_answer_without_the_disconnect_race_and_are_still_counted(world, tmp_path,
                                                                            monkeypatch):
    """A GET that has to wait for a download races it against the client leaving
    (``routes.unless_gone``); a cache hit has nothing to wait for and answers without that race
    (two tasks and loop turns before the first byte). Its hit is still recorded in the cache
    index, off the request's path."""
    from spacy_index.cache.index import FILES
    from spacy_index.server import routes as app_module

    raced: list[str] = []
    unless_gone = app_module.unless_gone

    async def counting(request, step):
        raced.append(request.url.path)
        return await unless_gone(request, step)

    monkeypatch.setattr(app_module, "unless_gone", counting)
    sm = world.sm
    server = world.server(cache_dir=tmp_path / "cache")
    path = f"/files/{sm.wheel.name}"
    data = sm.wheel.read_bytes()
    with run_app(create_app(server)) as url, httpx.Client(base_url=url) as c:
        assert c.get(path).content == data  # a miss: waits for the download
        misses = len(raced)
        assert misses >= 1
        for _ in range(3):
            r = c.get(path)
            assert r.status_code == 200 and r.content == data
            assert r.headers["etag"] == f'"{sm.sha256}"'
        assert len(raced) == misses  # the hits did not race
        deadline = time.monotonic() + 10
        hits = 0
        while hits < 3 and time.monotonic() < deadline:
            hits = sum(e.hits for e in server.bound.index.entries()
                       if e.kind == FILES and e.sha256 == sm.sha256)
            time.sleep(0.02)
        assert hits == 3
