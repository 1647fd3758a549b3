"""`/metrics`, `/health` and `/ready` (server/metrics.py) over real HTTP on loopback: exact
request, cache and upstream counts (the task-free fast path included), single-flight gauges
while a slow upstream holds a download open, readiness before, during and after catalog
loads, several servers in one process, and the fast path's counting cost."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import threading
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spacy_index.server.accesslog import AccessLog
from spacy_index.server.metrics import Metrics, count_eviction, route_kind
from spacy_index.server.metrics_families import BOUNDS
from spacy_index.server.metrics_transport import MeteredTransport
from spacy_index.server.wiring import create_app
from tests.fakegithub import Fault
from tests.servers import run_app, serve_http, write_simple_project
from tests.worlds import WorldSpec

TOKEN = "fake-ghp-METRICStokenMETRICS0123456789ab"
JSON = "application/vnd.pypi.simple.v1+json"
SLOW_FILE = "slowpkg-1.0-py3-none-any.whl"


# ----------------------------------------------------------------------------- helpers
def scrape(url: str, **kwargs) -> dict[tuple[str, frozenset], float]:
    r = httpx.get(url + "/metrics", **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """A simple index with one 3 MiB file whose download stalls after 2.5 MiB until the
    server's ``gate`` opens (the file cache publishes all but its last 1 MiB while it runs)."""

    protocol_version = "HTTP/1.1"
    server: Any  #: serve_http's server, given ``data``, ``gate`` and ``seen`` by slow_index

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append(self.path)
        data = self.server.data
        if self.path.startswith("/simple/slowpkg/"):
            sha = hashlib.sha256(data).hexdigest()
            body = f'<a href="/files/{SLOW_FILE}#sha256={sha}">{SLOW_FILE}</a>\n'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == f"/files/{SLOW_FILE}":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            cut = len(data) * 5 // 6
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.server.gate.wait(30)
            self.wfile.write(data[cut:])
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@contextlib.contextmanager
def slow_index(_world) -> Iterator[Any]:
    with serve_http(_SlowHandler) as slow:
        slow.data, slow.gate, slow.seen = os.urandom(3 << 20), threading.Event(), []
        try:
            yield slow
        finally:
            slow.gate.set()  # a download still held at the gate ends before the server stops


def _config(world) -> str:
    return ("[[source]]\n"
            'name = "slow"\n'
            'kind = "simple"\n'
            f'url = "http://127.0.0.1:{world.slow.server_address[1]}/simple/"\n'
            'projects = ["slowpkg"]\n')


def _scrapes_walk_the_cache(server) -> None:
    server.metrics.disk_interval = 0  # every scrape walks the cache folder


#: a fake GitHub with one pipeline, a fake PyPI with one project, a slow private index
WORLD = WorldSpec(
    "metrics", pipelines={"sm": {"version": "3.8.50"}}, token=TOKEN, upstream="pypi",
    parts={"tinypkg": lambda w: write_simple_project(w.root / "pypi", "tinypkg", {"tinypkg-1.0.tar.gz": b"tiny sdist"}),
           "slow": slow_index},
    config=_config, tune=_scrapes_walk_the_cache)


# ----------------------------------------------------------------------------- units
@pytest.mark.parametrize(("path", "kind"), [
    ("/simple/", "page"), ("/simple/spacy/", "page"), ("/simple/Spacy", "page"),
    ("/simple/pypi/spacy/json", "json"), ("/pypi/spacy/json", "json"), ("/spacy/json", "json"),
    ("/files/a-1.0-py3-none-any.whl", "file"), ("/files/a-1.0-py3-none-any.whl.metadata", "metadata"),
    ("/health", "health"), ("/ready", "health"), ("/metrics", "metrics"), ("/", "other"),
    ("/catalogue/x.html", "other"), ("/a/b/json", "other"),
])
def test_route_kinds(path, kind):
    assert route_kind(path) == kind


def test_metered_transport_counts_answers_bytes_and_failures(tmp_path):
    class Owner:
        cache_dir = tmp_path

    metrics = Metrics(Owner())

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/broken":
            def chunks():
                yield b"x" * 10
                raise httpx.ReadError("reset", request=request)
            return httpx.Response(200, stream=_Broken(chunks()))
        return httpx.Response(200 if request.url.path == "/ok" else 404, content=b"y" * 1234)

    transport = MeteredTransport(httpx.MockTransport(handler), metrics, "src")

    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            assert (await c.get("/ok")).content == b"y" * 1234
            assert (await c.get("/missing")).status_code == 404
            with pytest.raises(httpx.ConnectError):
                await c.get("/down")
            with pytest.raises(httpx.ReadError):
                await c.get("/broken")

    import asyncio

    asyncio.run(go())
    samples = _parse(metrics.render())
    assert value(samples, "spacy_index_upstream_requests_total", source="src", status="200") == 2
    assert value(samples, "spacy_index_upstream_requests_total", source="src", status="404") == 1
    assert value(samples, "spacy_index_upstream_errors_total", source="src", error="ConnectError") == 1
    assert value(samples, "spacy_index_upstream_errors_total", source="src", error="ReadError") == 1
    assert value(samples, "spacy_index_upstream_bytes_total", source="src") == 2 * 1234 + 10
    assert value(samples, "spacy_index_upstream_request_duration_seconds_count", source="src") == 4


class _Broken(httpx.AsyncByteStream):
    def __init__(self, chunks):
        self._chunks = chunks

    async def __aiter__(self):
        for chunk in self._chunks:
            yield chunk


def _parse(text: bytes) -> dict:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_disk_gauges_are_walked_at_most_every_interval(tmp_path):
    now = [1000.0]

    class Owner:
        cache_dir = tmp_path

    metrics = Metrics(Owner(), disk_interval=30, clock=lambda: now[0])
    files = tmp_path / "files" / "ab"
    files.mkdir(parents=True)
    (files / ("ab" + "0" * 62)).write_bytes(b"x" * 100)
    (files / ".tmp-partial").write_bytes(b"x" * 7)  # a temporary file: not counted
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "m.metadata").write_bytes(b"m" * 10)

    import asyncio

    asyncio.run(metrics.refresh_disk())
    s = _parse(metrics.render())
    assert value(s, "spacy_index_cache_size_bytes", kind="file") == 100
    assert value(s, "spacy_index_cache_files", kind="file") == 1
    assert value(s, "spacy_index_cache_size_bytes", kind="metadata") == 10
    (files / ("ab" + "1" * 62)).write_bytes(b"x" * 50)
    now[0] += 29
    assert not metrics.disk_due()
    asyncio.run(metrics.refresh_disk())
    assert value(_parse(metrics.render()), "spacy_index_cache_size_bytes", kind="file") == 100
    now[0] += 2
    assert metrics.disk_due()
    asyncio.run(metrics.refresh_disk())
    s = _parse(metrics.render())
    assert value(s, "spacy_index_cache_size_bytes", kind="file") == 150
    assert value(s, "spacy_index_cache_files", kind="file") == 2


def test_fast_path_counting_costs_well_under_a_microsecond(tmp_path):
    """``log_fast`` with metrics (two dict updates) against without, access log off."""

    class Owner:
        cache_dir = tmp_path

    on = AccessLog(None, metrics=Metrics(Owner()))  # type: ignore[arg-type]
    off = AccessLog(None)  # type: ignore[arg-type]
    scope = {"method": "GET", "path": "/simple/spacy/", "query_string": b""}
    n = 200_000

    def once(log) -> float:
        return timeit.timeit(lambda: log.log_fast(scope, 200, 4096), number=n) / n

    # interleaved, best of each: a busy spell of the machine slows both sides, not one
    runs = [(once(on), once(off)) for _ in range(5)]
    extra = min(t for t, _ in runs) - min(t for _, t in runs)
    print(f"log_fast: +{extra * 1e9:.0f} ns per fast-path answer with metrics")
    assert extra < 1e-6
    assert on.metrics.fast_counts["GET"][200] == 5 * n  # every call counted


# ----------------------------------------------------------------------------- over HTTP
def test_requests_cache_and_upstream_counts_are_exact(world):
    sm = world.sm
    size = sm.wheel.stat().st_size
    server = world.server()
    with run_app(create_app(server)) as url, httpx.Client(base_url=url) as c:
        page = "/simple/en-core-web-sm/"
        for _ in range(3):  # one routed (renders), two from the task-free fast path
            assert c.get(page, headers={"Accept": JSON}).status_code == 200
        assert c.get("/simple/no-such-project-xyz/").status_code == 404
        wheel = f"/files/{sm.wheel.name}"
        assert c.get(wheel).content == sm.wheel.read_bytes()  # miss
        assert c.get(wheel).status_code == 200  # hit
        assert c.head(wheel).status_code == 200  # hit, no body
        assert c.get(wheel + ".metadata").content == sm.metadata  # miss (read from the wheel)
        assert c.get(wheel + ".metadata").status_code == 200  # hit
        # the pipeline requires spacy: its page is prefetched (a 404 from the fake PyPI)
        deadline = time.monotonic() + 10
        while server.prefetch.counts["fetched"] < 1:
            assert time.monotonic() < deadline, "the prefetch did not happen"
            time.sleep(0.01)
        assert c.get("/files/nope-1.0-py3-none-any.whl").status_code == 404
        assert c.get("/pypi/en-core-web-sm/json").status_code == 200
        assert c.get("/health").status_code == 200
        s = scrape(url)
    req = "spacy_index_requests_total"
    assert value(s, req, kind="page", method="GET", status="200") == 3
    assert value(s, req, kind="page", method="GET", status="404") == 1
    assert value(s, req, kind="file", method="GET", status="200") == 2
    assert value(s, req, kind="file", method="HEAD", status="200") == 1
    assert value(s, req, kind="file", method="GET", status="404") == 1
    assert value(s, req, kind="metadata", method="GET", status="200") == 2
    assert value(s, req, kind="json", method="GET", status="200") == 1
    assert value(s, req, kind="health", method="GET", status="200") == 1
    assert value(s, "spacy_index_fast_path_responses_total") == 2
    assert value(s, "spacy_index_request_duration_seconds_count", kind="page") == 4
    # the fast-path answers sit in the first bucket
    first = value(s, "spacy_index_request_duration_seconds_bucket", kind="page", le=repr(BOUNDS[0]))
    assert first >= 2
    assert value(s, "spacy_index_request_duration_seconds_bucket", kind="file", le="+Inf") == 4
    # cache outcomes: the catalogue's CacheStats, exported
    assert value(s, "spacy_index_cache_misses_total", kind="file") == 1
    assert value(s, "spacy_index_cache_hits_total", kind="file") == 2
    assert value(s, "spacy_index_cache_misses_total", kind="metadata") == 1
    assert value(s, "spacy_index_cache_hits_total", kind="metadata") == 1
    assert value(s, "spacy_index_cache_requests_total", kind="file", outcome="hit") == 2
    assert value(s, "spacy_index_cache_served_bytes_total", kind="file", outcome="miss") == size
    assert value(s, "spacy_index_cache_served_bytes_total", kind="file", outcome="hit") == size
    assert value(s, "spacy_index_response_bytes_total", kind="file") == 2 * size + len("no such file in this index\n")
    # upstream, by source: the fake PyPI's 404s (no-such-project-xyz, nope, the prefetched
    # spacy), GitHub's download (redirect + blob)
    assert value(s, "spacy_index_upstream_requests_total", source="upstream", status="404") == 3
    assert value(s, "spacy_index_prefetched_pages_total", outcome="fetched") == 1
    assert value(s, "spacy_index_prefetched_pages_total", outcome="failed") == 0
    assert total(s, "spacy_index_upstream_requests_total", source="spacy-models") >= 1
    assert value(s, "spacy_index_upstream_bytes_total", source="spacy-models") >= size
    assert value(s, "spacy_index_upstream_errors_total", source="upstream", error="ConnectError") == 0
    assert value(s, "spacy_index_catalog_loads_total", source="spacy-models", outcome="ok") == 1
    assert 0 <= value(s, "spacy_index_catalog_age_seconds", source="spacy-models") < 60
    assert value(s, "spacy_index_source_ready", source="spacy-models") == 1
    # the cache folder
    assert value(s, "spacy_index_cache_size_bytes", kind="file") == size
    assert value(s, "spacy_index_cache_files", kind="file") == 1
    assert value(s, "spacy_index_cache_files", kind="metadata") == 1
    assert value(s, "spacy_index_cache_downloads_in_flight") == 0
    assert value(s, "spacy_index_cache_evictions_total", kind="file") == 0


def test_single_flight_gauges_while_a_download_runs(world):
    slow = world.slow
    slow.gate.clear()
    data = slow.data
    server = world.server()
    with run_app(create_app(server)) as url:
        assert httpx.get(f"{url}/simple/slowpkg/").status_code == 200
        digests: list[str] = []

        def fetch():
            h = hashlib.sha256()
            with httpx.stream("GET", f"{url}/files/{SLOW_FILE}", timeout=60) as r:
                for chunk in r.iter_bytes():
                    h.update(chunk)
            digests.append(h.hexdigest())

        threads = [threading.Thread(target=fetch) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 20
            while True:
                s = scrape(url)
                if value(s, "spacy_index_cache_flight_consumers") == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert value(s, "spacy_index_cache_flight_consumers") == 3
            assert value(s, "spacy_index_cache_downloads_in_flight") == 1
            assert value(s, "spacy_index_cache_flight_waiters") == 2
        finally:
            slow.gate.set()
            for t in threads:
                t.join(60)
        assert digests == [hashlib.sha256(data).hexdigest()] * 3
        s = scrape(url)
    assert value(s, "spacy_index_cache_flight_consumers") == 0
    assert value(s, "spacy_index_cache_downloads_in_flight") == 0
    assert value(s, "spacy_index_cache_misses_total", kind="file") == 3
    assert value(s, "spacy_index_upstream_requests_total", source="slow", status="200") == 2  # page + file
    assert value(s, "spacy_index_upstream_bytes_total", source="slow") >= len(data)
    assert slow.seen.count(f"/files/{SLOW_FILE}") == 1


def test_health_and_ready_before_during_and_after_the_first_catalog_load(world):
    server = world.server()
    with run_app(create_app(server)) as url, httpx.Client(base_url=url) as c:
        assert c.get("/health").status_code == 200
        first = c.get("/ready")  # nothing loaded yet: 503, and the load starts
        assert first.status_code == 503
        assert first.headers["cache-control"] == "no-store"
        body = first.json()
        assert body["not_ready"] == ["spacy-models"]
        assert body["sources"]["spacy-models"]["state"] in ("loading", "ready")
        deadline = time.monotonic() + 20
        while (r := c.get("/ready")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["status"] == "ready" and doc["not_ready"] == []
        assert doc["sources"]["spacy-models"]["state"] == "ready"
        assert doc["sources"]["upstream"]["state"] == "ready"
        # a failed refresh keeps the catalog: stale, still serving, still ready
        source = server.sources["spacy-models"]
        source._loaded_at -= 10 * source._refresh
        gh = world.gh
        gh.inject(Fault.status(500, path_contains="/releases", times=20))
        try:
            assert c.get("/simple/en-core-web-sm/").status_code == 200
        finally:
            with gh._lock:
                gh._faults.clear()
        r = c.get("/ready")
        assert r.status_code == 200
        assert r.json()["sources"]["spacy-models"]["state"] == "stale"
        s = scrape(url)
        assert value(s, "spacy_index_catalog_loads_total", source="spacy-models", outcome="error") >= 1


def test_ready_stays_503_while_github_is_unreachable(world, tmp_path):
    server = world.server(api_url="http://127.0.0.1:9", offline_snapshot=False)
    with run_app(create_app(server)) as url, httpx.Client(base_url=url) as c:
        assert c.get("/ready").status_code == 503
        deadline = time.monotonic() + 20
        while (r := c.get("/ready")).json()["sources"]["spacy-models"]["state"] != "failed":
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        assert r.status_code == 503 and r.json()["not_ready"] == ["spacy-models"]
        assert "127.0.0.1:9" not in r.text  # states only, no upstream detail for anonymous probes
        assert c.get("/health").status_code == 200
        s = scrape(url)
    assert value(s, "spacy_index_source_ready", source="spacy-models") == 0
    assert value(s, "spacy_index_catalog_loads_total", source="spacy-models", outcome="error") >= 1


def test_several_servers_in_one_process_and_metrics_off(world):
    a, b, off = world.server(), world.server(), world.server()
    assert a.metrics.registry is not b.metrics.registry
    with run_app(create_app(a)) as ua, run_app(create_app(b)) as ub, \
            run_app(create_app(off, metrics=False)) as uo:
        for _ in range(2):
            httpx.get(ua + "/simple/no-such-project-xyz/")
        httpx.get(ub + "/simple/no-such-project-xyz/")
        httpx.get(uo + "/simple/no-such-project-xyz/")
        assert httpx.get(uo + "/metrics").status_code == 404
        assert httpx.get(uo + "/ready").status_code in (200, 503)  # the probes stay
        a.metrics.count_eviction("file", 1000)
        count_eviction("metadata", 10, root=b.cache_dir / "metadata")
        sa, sb = scrape(ua), scrape(ub)
    page404 = {"kind": "page", "method": "GET", "status": "404"}
    assert value(sa, "spacy_index_requests_total", **page404) == 2
    assert value(sb, "spacy_index_requests_total", **page404) == 1
    assert value(sa, "spacy_index_cache_evictions_total", kind="file") == 1
    assert value(sa, "spacy_index_cache_evicted_bytes_total", kind="file") == 1000
    assert value(sa, "spacy_index_cache_evictions_total", kind="metadata") == 0
    assert value(sb, "spacy_index_cache_evictions_total", kind="metadata") == 1
    assert value(sb, "spacy_index_cache_evictions_total", kind="file") == 0
    assert not off.metrics._requests and not any(off.metrics.fast_counts.values())


def test_metrics_keep_label_sets_bounded(world):
    server = world.server()
    with run_app(create_app(server)) as url, httpx.Client(base_url=url) as c:
        for i in range(50):
            c.get(f"/random/path/{i}")
            c.request("PROPFIND", f"/simple/x{i}/")
        s = scrape(url)
    labels = {ls for (n, ls) in s if n == "spacy_index_requests_total"}
    assert len(labels) <= 4, labels
    assert value(s, "spacy_index_requests_total", kind="other", method="GET", status="404") == 50
    assert total(s, "spacy_index_requests_total", method="other") == 50


def test_metrics_text_is_valid_for_prometheus(world, tmp_path):
    """promtool (Debian's prometheus package) accepts the exposition, when installed."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    server = world.server()
    with run_app(create_app(server)) as url:
        httpx.get(url + "/simple/en-core-web-sm/")
        text = httpx.get(url + "/metrics").text
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    # "check metrics" also lints naming; only errors in the format fail
    assert "error while linting" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert Path(promtool).exists()
