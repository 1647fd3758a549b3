"""serve under abuse and hostile upstreams (loopback only; bounded in count and time).

Each test plays one row of the red-team table (issue 14) and asserts the limit in force.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from tests.servers import run_app, serve_handler
from tests.test_upstream_fidelity import JSON, SHA, Index, _file, index_server


def _server(tmp_path, up: str):
    config = load_config(None, {}, upstream=up + "/simple/")
    return build_server(config, cache_dir=tmp_path / "cache", api_url="http://127.0.0.1:9",
                        token=None)


@pytest.mark.slow
def test_row9_an_upstream_error_is_remembered_briefly(tmp_path):
    """20 requests for a name whose upstream answers 500: one upstream request."""
    Index.routes = {"/simple/broken/": (500, "text/plain", b"oops")}
    with index_server() as up, run_app(create_app(_server(tmp_path, up))) as url:
        answers = [httpx.get(url + "/simple/broken/", headers={"Accept": JSON}) for _ in range(20)]
    assert {r.status_code for r in answers} == {502}
    assert Index.log.count("/simple/broken/") == 1


def test_row14_a_502_names_what_failed_without_internal_urls_or_paths(tmp_path):
    Index.routes = {"/simple/private-pkg/": (503, "text/plain", b"down")}
    with index_server() as up, run_app(create_app(_server(tmp_path, up))) as url:
        r = httpx.get(url + "/simple/private-pkg/", headers={"Accept": JSON})
    assert r.status_code == 502 and "HTTP 503" in r.text
    assert up not in r.text and "127.0.0.1:" not in r.text and str(tmp_path) not in r.text


def test_row15_invalid_range_syntax_is_ignored(tmp_path):
    data = b"0123456789" * 100
    import hashlib

    page = {"meta": {"api-version": "1.0"}, "name": "rng",
            "files": [_file("rng-1.0.tar.gz", hashlib.sha256(data).hexdigest())]}
    Index.routes = {"/simple/rng/": (200, JSON, json.dumps(page).encode()),
                    "/packages/rng-1.0.tar.gz": (200, "application/gzip", data)}
    with index_server() as up, run_app(create_app(_server(tmp_path, up))) as url:
        httpx.get(url + "/simple/rng/", headers={"Accept": JSON})
        assert httpx.get(url + "/files/rng-1.0.tar.gz").content == data  # cached now
        for bad in ("bytes=1_0-2_0", "bytes=+10-20", "bytes=-", "bytes=٣-٤"):
            r = httpx.get(url + "/files/rng-1.0.tar.gz", headers={"Range": bad.encode()})
            assert r.status_code == 200 and r.content == data, bad
        good = httpx.get(url + "/files/rng-1.0.tar.gz", headers={"Range": "bytes=10-19"})
        assert good.status_code == 206 and good.content == data[10:20]


@pytest.mark.slow
def test_row7_malformed_upstream_json_is_an_upstream_error_and_the_last_page_stays(tmp_path):
    good = {"meta": {"api-version": "1.0"}, "name": "mal", "files": [_file("mal-1.0.tar.gz", SHA["a"])]}
    Index.routes = {"/simple/mal/": (200, JSON, json.dumps(good).encode())}
    with index_server() as up:
        server = _server(tmp_path, up)
        server.upstream.ttl = server.upstream.stale = 0.0
        with run_app(create_app(server)) as url:
            first = httpx.get(url + "/simple/mal/", headers={"Accept": JSON})
            for body in (b'{"files": [1]}', b'{"files": [{"filename": "x", "hashes": []}]}',
                         b"[" * 100_000 + b"]" * 100_000, b"{not json"):
                Index.routes = {"/simple/mal/": (200, JSON, body)}
                r = httpx.get(url + "/simple/mal/", headers={"Accept": JSON})
                assert r.status_code == 200 and r.json() == first.json()
            fresh = _server(tmp_path / "other", up)
        with run_app(create_app(fresh)) as url2:
            r = httpx.get(url2 + "/simple/mal/", headers={"Accept": JSON})
            assert r.status_code == 502 and "unreadable page" in r.text


def test_row5_page_limits_files_and_parse_time_are_upstream_errors(tmp_path):
    """A page listing more files than ``max_page_files`` (counted in the raw body, before
    parsing) or whose parse outlasts ``parse_budget`` is an upstream error: 502 naming the
    limit for a name never seen, the last good page for one seen before."""
    files = [_file(f"lim-1.0.{i}.tar.gz", SHA["a"]) for i in range(20)]
    page = {"meta": {"api-version": "1.0"}, "name": "lim", "files": files[:5]}
    Index.routes = {"/simple/lim/": (200, JSON, json.dumps(page).encode()),
                    "/simple/many/": (200, JSON, json.dumps({**page, "name": "many",
                                                             "files": files}).encode()),
                    "/simple/slow/": (200, JSON, json.dumps({**page, "name": "slow"}).encode())}
    with index_server() as up:
        server = _server(tmp_path, up)
        server.upstream.max_files = 10
        with run_app(create_app(server)) as url:
            first = httpx.get(url + "/simple/lim/", headers={"Accept": JSON})
            many = httpx.get(url + "/simple/many/", headers={"Accept": JSON})
            server.upstream.parse_budget = 1e-9
            slow = httpx.get(url + "/simple/slow/", headers={"Accept": JSON})
            server.upstream.ttl = server.upstream.stale = 0.0
            Index.routes["/simple/lim/"] = (200, JSON, json.dumps({**page, "files": files[:6]}).encode())
            again = httpx.get(url + "/simple/lim/", headers={"Accept": JSON})
    assert first.status_code == 200 and len(first.json()["files"]) == 5
    assert many.status_code == 502 and "lists up to 20 files" in many.text
    assert "max_page_files limit of 10" in many.text
    assert slow.status_code == 502 and "parse_budget" in slow.text, slow.text
    assert again.status_code == 200 and again.json() == first.json()  # the last good page


@pytest.mark.slow
def test_row8_long_lived_maps_are_bounded(tmp_path):
    """Every map that lives as long as the server is an LRU with a size."""
    from cachetools import LRUCache

    with index_server() as up:
        server = _server(tmp_path, up)
        maps = [server.located, server._indexed, server.pages, server.metadata._digests,
                server.metadata._locks, server.upstream._pages, server.upstream._locks,
                server.upstream._errors, server.upstream.upstream_files]
        assert all(isinstance(m, LRUCache) and m.maxsize <= 1 << 30 for m in maps)
        # and they do evict: 3,000 distinct 404 names leave at most the bound behind
        server.upstream._errors = LRUCache(maxsize=100)
        Index.routes = {}
        with run_app(create_app(server)) as url, httpx.Client(base_url=url) as c:
            for i in range(300):
                c.get(f"/simple/nothing-{i}/", headers={"Accept": JSON})
        assert len(server.upstream._pages) <= 300 and len(server.upstream._errors) <= 100


def test_row11_forwarded_headers_are_not_trusted_by_default(tmp_path):
    page = {"meta": {"api-version": "1.0"}, "name": "fw", "files": [_file("fw-1.0.tar.gz", SHA["a"])]}
    Index.routes = {"/simple/fw/": (200, JSON, json.dumps(page).encode())}
    with index_server() as up, run_app(create_app(_server(tmp_path, up))) as url:
        r = httpx.get(url + "/pypi/fw/json", headers={"X-Forwarded-Proto": "https",
                                                      "X-Forwarded-Host": "evil.example"})
    urls = [f["url"] for files in r.json()["releases"].values() for f in files]
    assert urls and all(u.startswith(url + "/files/") for u in urls)


def test_row11_a_public_url_wins_over_the_host_header(tmp_path):
    page = {"meta": {"api-version": "1.0"}, "name": "fw", "files": [_file("fw-1.0.tar.gz", SHA["a"])]}
    Index.routes = {"/simple/fw/": (200, JSON, json.dumps(page).encode())}
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[server]\npublic_url = "https://index.example.org/"\n')
    with index_server() as up:
        config = load_config(cfg, {}, upstream=up + "/simple/")
        server = build_server(config, cache_dir=tmp_path / "cache", api_url="http://127.0.0.1:9",
                              token=None)
        with run_app(create_app(server)) as url:
            r = httpx.get(url + "/pypi/fw/json", headers={"Host": "evil.example"})
    urls = [f["url"] for files in r.json()["releases"].values() for f in files]
    assert urls and all(u.startswith("https://index.example.org/files/") for u in urls)


@pytest.mark.slow
def test_row10_head_and_range_on_a_cold_file_need_no_whole_download_first(tmp_path):
    """A slow upstream (a 2 MB file in about 4 s): HEAD answers from the listed size at once, a
    Range is read from upstream as it comes; the whole file is cached behind them, once."""
    import hashlib
    import http.server

    data = bytes(range(256)) * 8192  # 2 MiB
    sha = hashlib.sha256(data).hexdigest()
    log: list[str] = []

    class Slow(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/simple/cold/":
                page = {"meta": {"api-version": "1.1"}, "name": "cold", "files": [
                    {"filename": "cold-1.0.tar.gz", "url": "/p/cold-1.0.tar.gz",
                     "hashes": {"sha256": sha}, "size": len(data)}]}
                body = json.dumps(page).encode()
                self.send_response(200)
                self.send_header("Content-Type", JSON)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            rng = self.headers.get("Range")
            log.append(f"GET {rng or 'whole'}")
            if rng:
                start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
                part = data[start:end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                self.wfile.write(part)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(0, len(data), 1 << 17):  # 16 chunks, 0.25 s apart
                self.wfile.write(data[i:i + (1 << 17)])
                time.sleep(0.25)

    with serve_handler(Slow) as up, run_app(create_app(_server(tmp_path, up))) as url, \
            httpx.Client(base_url=url) as c:
        c.get("/simple/cold/", headers={"Accept": JSON})
        started = time.monotonic()
        head = c.head("/files/cold-1.0.tar.gz")
        tail = c.get("/files/cold-1.0.tar.gz", headers={"Range": "bytes=2097000-2097151"})
        answered = time.monotonic() - started
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        assert tail.status_code == 206 and tail.content == data[2097000:]
        assert answered < 2.0  # the whole download takes about 4 s
        whole = c.get("/files/cold-1.0.tar.gz")  # joins the download started behind
        assert whole.content == data
    assert log.count("GET whole") == 1


def test_the_garbage_collector_pauses_nest_across_threads():
    """gc_paused: the collector stays off while any pause runs, on again after the last
    (if it was on before the first), whatever order the threads finish in."""
    import gc
    import threading

    from spacy_index.gcpause import gc_paused, kept_without_gc, without_gc

    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gc_paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(10)
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the thread's pause still runs
    release.set()
    t.join(10)
    assert gc.isenabled()
    assert without_gc(gc.isenabled) is False and gc.isenabled()
    assert kept_without_gc(gc.isenabled) is False and gc.isenabled()
    def collectable(obj: object) -> bool:  # in one of the collector's three generations
        return any(o is obj for o in gc.get_objects())

    with gc_paused():  # nothing kept: nothing frozen
        made = []
    assert collectable(made)
    with gc_paused(keeps=True):  # kept: what is alive is frozen out of every generation
        kept = []
    assert not collectable(kept) and not collectable(made)
    gc.unfreeze()
    assert collectable(kept)
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # off before: stays off
    finally:
        gc.enable()


def test_page_fetches_run_on_their_own_loop_and_cancel_across_it():
    """LoopThread: the coroutine runs in the thread's loop, its result or exception comes
    back, cancelling the caller cancels it there, and aclose stops the thread."""
    import threading

    from spacy_index.server.loopthread import LoopThread

    async def main() -> None:
        pages = LoopThread("pages:test")
        here = threading.get_ident()
        cancelled = threading.Event()

        async def where() -> int:
            return threading.get_ident()

        async def fails() -> None:
            raise ValueError("upstream said no")

        async def forever() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        assert await pages.run(where()) != here
        with pytest.raises(ValueError, match="upstream said no"):
            await pages.run(fails())
        waiting = asyncio.ensure_future(pages.run(forever()))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await asyncio.to_thread(cancelled.wait, 5)
        thread = pages._thread
        await pages.aclose()
        assert thread is not None and not thread.is_alive()

    asyncio.run(main())
