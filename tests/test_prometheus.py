"""A real Prometheus (Debian's ``prometheus`` package, /usr/bin/prometheus) scrapes ``serve``
every second on 127.0.0.1; the counters read back through its HTTP API (``/api/v1/query``)
are exactly the traffic this test sent: pages (routed and fast path), files, metadata, 404s,
cache hits and misses."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from tests.clients import serve_directory
from tests.fakegithub import FakeGitHub
from tests.servers import free_port, run_app, stop_process
from tests.wheels import meta_archive

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TOKEN = "fake-ghp-PROMETHEUStokenPROMETHEUS012345"
JSON = "application/vnd.pypi.simple.v1+json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _prometheus_or_skip() -> str:
    if Path(PROMETHEUS).exists():
        return PROMETHEUS
    message = "Debian's prometheus is not installed (apt-get install -y prometheus)"
    if os.environ.get("CI"):
        pytest.fail(message)  # .ci/run installs it: never skipped there
    pytest.skip(message)


@contextlib.contextmanager
def prometheus(target: str, folder: Path) -> Iterator[str]:
    """Prometheus on 127.0.0.1 scraping ``target`` (host:port) every second; stopped after."""
    binary = _prometheus_or_skip()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: serve\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['{target}']\n")
    for _attempt in range(3):
        port = free_port()
        log = (folder / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    ready = True
                    break
            time.sleep(0.1)
        if ready:
            break
        stop_process(proc, grace=20)
        log.close()
    else:
        raise RuntimeError("prometheus did not start:\n" + (folder / "prometheus.log").read_text()[-3000:])
    try:
        yield url
    finally:
        stop_process(proc, grace=30)
        log.close()


def query(prom: str, expr: str) -> dict[frozenset, float]:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    doc = r.json()
    assert doc["status"] == "success", doc
    return {frozenset((k, v) for k, v in item["metric"].items() if k not in ("job", "instance")):
            float(item["value"][1]) for item in doc["data"]["result"]}


def scalar(prom: str, expr: str) -> float | None:
    found = query(prom, expr)
    assert len(found) <= 1, found
    return next(iter(found.values()), None)


def test_prometheus_scrapes_exact_counts(tmp_path, model_wheels):
    sm = model_wheels(version="3.8.50")
    (tmp_path / "pypi").mkdir()
    with FakeGitHub(load_fixture=False, archive=meta_archive([sm]), token=TOKEN) as gh, \
            serve_directory(tmp_path / "pypi") as pypi:
        gh.add_release(f"{sm.project}-{sm.version}", {sm.wheel.name: sm.wheel.read_bytes()})
        # no prefetch: every count is the traffic this test sent (test_metrics.py counts the
        # prefetched page of the pipeline's requirement)
        config = replace(load_config(None, {}, upstream=pypi.url + "/simple/"), prefetch=0)
        server = build_server(config, cache_dir=tmp_path / "cache", api_url=gh.api_url, token=TOKEN)
        server.metrics.disk_interval = 1  # the cache folder walked at most every second
        with run_app(create_app(server)) as url, \
                prometheus(url.removeprefix("http://"), tmp_path / "prom") as prom:
            deadline = time.monotonic() + 30
            while scalar(prom, 'up{job="serve"}') != 1:
                assert time.monotonic() < deadline, "prometheus never scraped serve"
                time.sleep(0.2)
            wheel = f"/files/{sm.wheel.name}"
            with httpx.Client(base_url=url) as c:
                for _ in range(4):  # one routed and rendered, three from the fast path
                    assert c.get("/simple/en-core-web-sm/", headers={"Accept": JSON}).status_code == 200
                assert c.get("/simple/no-such-project-abc/").status_code == 404
                assert c.get(wheel).content == sm.wheel.read_bytes()  # miss
                assert c.get(wheel).status_code == 200  # hit
                assert c.get(wheel + ".metadata").content == sm.metadata  # miss
                for _ in range(2):
                    assert c.get(wheel + ".metadata").status_code == 200  # hits
                assert c.get("/files/nothing-here-1.0-py3-none-any.whl").status_code == 404  # last
            deadline = time.monotonic() + 30
            last = 'spacy_index_requests_total{kind="file",method="GET",status="404"}'
            while scalar(prom, last) != 1:  # scraped after the last request: all are in
                assert time.monotonic() < deadline, "the last request never showed up"
                time.sleep(0.2)
            requests = query(prom, "spacy_index_requests_total")
            assert scalar(prom, "spacy_index_fast_path_responses_total") == 3
            assert scalar(prom, 'spacy_index_cache_hits_total{kind="file"}') == 1
            assert scalar(prom, 'spacy_index_cache_misses_total{kind="file"}') == 1
            assert scalar(prom, 'spacy_index_cache_hits_total{kind="metadata"}') == 2
            assert scalar(prom, 'spacy_index_cache_misses_total{kind="metadata"}') == 1
            assert scalar(prom, 'spacy_index_request_duration_seconds_count{kind="page"}') == 5
            assert scalar(prom, 'sum(spacy_index_requests_total{kind!="metrics"})') == 11
            assert scalar(prom, 'spacy_index_upstream_requests_total{source="upstream",status="404"}') == 2
            while scalar(prom, 'spacy_index_cache_files{kind="file"}') != 1:
                assert time.monotonic() < deadline, "the cache folder's file never showed up"
                time.sleep(0.2)
            assert scalar(prom, 'spacy_index_cache_size_bytes{kind="file"}') == sm.wheel.stat().st_size
            age = scalar(prom, 'spacy_index_catalog_age_seconds{source="spacy-models"}')
            assert age is not None and 0 <= age < 120
            # a scrape is counted once it has been answered, so the scrape that showed the last
            # request may show only the one before it: wait for the next (at most 1 s later)
            while (scalar(prom, 'sum(spacy_index_requests_total{kind="metrics"})') or 0) < 2:
                assert time.monotonic() < deadline, "serve's own scrapes were never counted"
                time.sleep(0.2)
    expected = {
        ("page", "GET", "200"): 4, ("page", "GET", "404"): 1, ("file", "GET", "200"): 2,
        ("file", "GET", "404"): 1, ("metadata", "GET", "200"): 3,
    }
    got = {(d["kind"], d["method"], d["status"]): v for labels, v in requests.items()
           for d in [dict(labels)] if d["kind"] != "metrics"}
    assert got == expected
