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

from spacy_index.server.app import build_server, create_app
from spacy_index.server.config import load_config
from spacy_index.server.logbuffer import BufferedStreamHandler
from spacy_index.server.protocol import ZEROCOPY, protocol_class
from tests.fakegithub import FakeGitHub
from tests.servers import free_port, run_app, tls_files, wait_healthy
from tests.wheels import meta_archive

TOKEN = "fake-ghp-PROTOCOLtokenPROTOCOL0123456789"
JSON = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_wheels):
    """One pipeline on a fake GitHub; a server whose file cache already holds it."""
    root = tmp_path_factory.mktemp("protocol")
    sm = model_wheels(version="3.8.50")
    with FakeGitHub(load_fixture=False, archive=meta_archive([sm]), token=TOKEN) as gh:
        gh.add_release(f"{sm.project}-{sm.version}", {sm.wheel.name: sm.wheel.read_bytes()})
        config = load_config(None, {}, upstream="http://127.0.0.1:9/simple/")

        def make():
            server = build_server(config, cache_dir=root / "cache", api_url=gh.api_url, token=TOKEN)
            return server, create_app(server)

        yield {"gh": gh, "sm": sm, "make": make}


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
    _server, app = world["make"]()
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
    server, app = world["make"]()
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
        sm = world["sm"]
        assert c.get(f"/files/{sm.wheel.name}.metadata").content == sm.metadata
        after = c.get(page, headers={"Accept": JSON}).json()["files"][0]["core-metadata"]
        assert after == {"sha256": hashlib.sha256(sm.metadata).hexdigest()}


def test_fast_answers_are_access_logged(world, caplog):
    _server, app = world["make"]()
    answered = _counting(app)
    with caplog.at_level(logging.INFO, logger="spacy_index.access"), run_app(app) as url:
        for _ in range(3):
            httpx.get(url + "/simple/en-core-web-sm/", headers={"Accept": JSON})
    lines = [r.getMessage() for r in caplog.records if r.name == "spacy_index.access"]
    assert len(answered) == 2
    assert len(lines) == 3 and all(line.startswith("GET /simple/en-core-web-sm/ 200 ") for line in lines)


def test_pipelined_requests_are_answered_in_order(world):
    _server, app = world["make"]()
    sm = world["sm"]
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
    _server, app = world["make"]()
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
    _server, app = world["make"]()
    sm = world["sm"]
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
    _server, app = world["make"]()
    sm = world["sm"]
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
    _server, app = world["make"]()
    sm = world["sm"]
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


def test_cli_serve_writes_one_access_line_per_request(world, tmp_path):
    gh = world["gh"]
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
