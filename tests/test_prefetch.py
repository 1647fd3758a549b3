"""Pages of a served wheel's requirements fetched behind its .metadata (server/prefetch.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace

import pytest
from cachetools import LRUCache

from spacy_index.server import prefetch as prefetch_module
from spacy_index.server.config import load_config
from spacy_index.server.prefetch import Prefetcher
from spacy_index.server.wiring import build_server, create_app
from spacy_index.wheelmeta.requires import required_projects
from tests.servers import run_app
from tests.test_upstream_fidelity import JSON, Index, _get, _json, _wait_for, index_server

METADATA = b"""Metadata-Version: 2.1
Name: app
Version: 1.0
Requires-Dist: Dep_One>=1.0
Requires-Dist: dep-two; python_version < "3.0"
Requires-Dist: dep-one[fast]
Requires-Dist: dev-only; extra == "dev"
Requires-Dist: not a requirement !!
Requires-Dist: dep.three

A description that mentions Requires-Dist: body-only
"""


def test_required_projects_are_the_names_outside_extras_in_order_once():
    assert required_projects(METADATA, 64) == ["dep-one", "dep-two", "dep-three"]
    assert required_projects(METADATA, 2) == ["dep-one", "dep-two"]
    assert required_projects(METADATA, 0) == []
    assert required_projects(b"Name: x\n", 64) == []


def _page(name: str, *files: str) -> tuple[int, str, bytes]:
    return (200, JSON, json.dumps({"meta": {"api-version": "1.0"}, "name": name, "files": [
        {"filename": f, "url": f"/packages/{f}",
         "hashes": {"sha256": hashlib.sha256(f.encode()).hexdigest()}} for f in files]}).encode())


WHEEL = "app-1.0-py3-none-any.whl"
ROUTES = {
    "/simple/app/": _page("app", WHEEL),
    "/simple/dep-one/": _page("dep-one", "dep_one-1.0-py3-none-any.whl"),
    "/simple/dep-two/": _page("dep-two", "dep_two-1.0.tar.gz"),
    "/simple/dep-three/": _page("dep-three", "dep_three-1.0.tar.gz"),
    "/simple/dev-only/": _page("dev-only", "dev_only-1.0.tar.gz"),
}


def _server(tmp_path, up: str, **changes):
    config = replace(load_config(None, {}, upstream=up + "/simple/"), **changes)
    server = build_server(config, cache_dir=tmp_path / "cache", api_url="http://127.0.0.1:9",
                          token=None)
    # the wheel's metadata is in the cache already (stored by an earlier process)
    server.metadata.put(hashlib.sha256(WHEEL.encode()).hexdigest(), METADATA, "app")
    return server


def test_a_wheels_metadata_brings_its_requirements_pages_before_the_client_asks(tmp_path):
    Index.routes = dict(ROUTES)
    with index_server() as up:
        server = _server(tmp_path, up)
        with run_app(create_app(server)) as url:
            assert _json(url, "/simple/app/").status_code == 200
            meta = _get(f"{url}/files/{WHEEL}.metadata")
            assert meta.status_code == 200 and meta.content == METADATA
            _wait_for(lambda: server.prefetch.counts["fetched"] == 3)
            asked = list(Index.log)
            # every requirement outside an extra, each once; the extra's never
            assert sorted(p for p in asked if p != "/simple/app/") == [
                "/simple/dep-one/", "/simple/dep-three/", "/simple/dep-two/"]
            for name in ("dep-one", "dep-two", "dep-three"):  # answered from the cache
                assert _json(url, f"/simple/{name}/").status_code == 200
            assert Index.log == asked
            # the same wheel again: nothing more is offered
            assert _get(f"{url}/files/{WHEEL}.metadata").status_code == 200
            assert server.prefetch.counts == {"fetched": 3, "dropped": 0, "failed": 0}
            assert Index.log == asked


def test_prefetch_zero_fetches_nothing_a_client_did_not_ask_for(tmp_path):
    Index.routes = dict(ROUTES)
    with index_server() as up:
        server = _server(tmp_path, up, prefetch=0)
        with run_app(create_app(server)) as url:
            assert _json(url, "/simple/app/").status_code == 200
            assert _get(f"{url}/files/{WHEEL}.metadata").status_code == 200
            assert _json(url, "/simple/dep-one/").status_code == 200
    assert Index.log == ["/simple/app/", "/simple/dep-one/"]
    assert server.prefetch.counts["fetched"] == 0


def test_the_config_setting_turns_it_off_and_refuses_negatives(tmp_path):
    from spacy_index.errors import UsageError

    path = tmp_path / "serve.toml"
    path.write_text("[server]\nprefetch = 0\n")
    assert load_config(path, {}).prefetch == 0
    assert load_config(None, {}).prefetch == 64
    path.write_text("[server]\nprefetch = -1\n")
    with pytest.raises(UsageError):
        load_config(path, {})


async def _run_prefetcher(monkeypatch, fail: set[str] = frozenset()):
    """A Prefetcher over a fake fetch that holds each name until released."""
    monkeypatch.setattr(prefetch_module, "QUEUE", 3)
    started: list[str] = []
    release = asyncio.Event()
    running = 0
    most = 0

    async def fetch(name):
        nonlocal running, most
        started.append(name)
        running += 1
        most = max(most, running)
        try:
            await release.wait()
            if name in fail:
                raise RuntimeError("upstream down")
        finally:
            running -= 1

    pf = Prefetcher(fetch, lambda name: name == "cached", 64, LRUCache(maxsize=100))
    return pf, started, release, lambda: most


def _meta(*names: str) -> bytes:
    return b"Name: w\n" + b"".join(b"Requires-Dist: " + n.encode() + b"\n" for n in names)


def test_prefetches_are_bounded_at_once_and_in_waiting_and_each_wheel_is_offered_once(
        monkeypatch):
    async def main():
        pf, started, release, most = await _run_prefetcher(monkeypatch, fail={"b"})
        pf.offer("w1", lambda: _meta("a", "b", "cached", "c", "d", "e", "f"))
        await asyncio.sleep(0.05)
        assert started == ["a", "b"]  # AT_ONCE = 2 running; c, d, e wait (QUEUE = 3)
        assert pf.counts["dropped"] == 1  # f: the queue was full; "cached" was skipped
        pf.offer("w1", lambda: _meta("g"))  # the same wheel: not offered again
        release.set()
        for _ in range(100):
            if not pf._running:
                break
            await asyncio.sleep(0.01)
        assert started == ["a", "b", "c", "d", "e"] and most() == 2
        assert pf.counts == {"fetched": 4, "dropped": 1, "failed": 1}
        # a failed name is forgotten: another wheel may offer it again
        pf.offer("w2", lambda: _meta("b"))
        await asyncio.sleep(0.05)
        assert started[-1] == "b"
        await pf.aclose()

    asyncio.run(main())


def test_aclose_cancels_running_prefetches_and_queues_nothing_more(monkeypatch):
    async def main():
        pf, started, _release, _most = await _run_prefetcher(monkeypatch)
        pf.offer("w1", lambda: _meta("a", "b", "c"))
        await asyncio.sleep(0.05)
        tasks = list(pf._running)
        await pf.aclose()
        assert all(t.cancelled() for t in tasks) and not pf._running
        pf.offer("w2", lambda: _meta("x"))
        await asyncio.sleep(0.05)
        assert started == ["a", "b"]

    asyncio.run(main())


def test_unreadable_metadata_offers_nothing(monkeypatch):
    async def main():
        pf, started, _release, _most = await _run_prefetcher(monkeypatch)

        def gone() -> bytes:
            raise FileNotFoundError("removed")

        pf.offer("w1", gone)
        await asyncio.sleep(0.02)
        assert started == [] and not pf._running

    asyncio.run(main())
