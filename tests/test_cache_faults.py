"""serve's caches heal: folders removed while serving, caches that cannot be written.

Over real HTTP on loopback; each asserts the status and that the next request succeeds.
(Root ignores file modes, so "cannot be written" is a cache folder below a regular file.)
"""

from __future__ import annotations

import hashlib
import shutil

import httpx

from spacy_index.server.wiring import create_app
from tests.servers import run_app
from tests.test_serve_upstream import PIP_ACCEPT, Upstream, small_wheel, upstream
from tests.worlds import WorldSpec

WHEEL = "demo_pkg-1.0-py3-none-any.whl"
#: one fake GitHub and one upstream for the module (a test switches neither; the one
#: release a test adds is its own pipeline), a fresh server and cache per test
WORLD = WorldSpec("cache-faults", upstream=lambda _w: upstream())


def _serve(world, cache_dir):
    return run_app(create_app(world.server(cache_dir=cache_dir)))


def test_metadata_folder_removed_while_serving_is_rebuilt(world, tmp_path):
    cache = tmp_path / "cache"
    with _serve(world, cache) as url, httpx.Client(base_url=url) as c:
        c.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
        first = c.get(f"/files/{WHEEL}.metadata")
        assert first.status_code == 200 and b"Name: demo_pkg" in first.content
        shutil.rmtree(cache / "metadata")
        again = c.get(f"/files/{WHEEL}.metadata")  # the digest was remembered: no stale 500
        assert again.status_code == 200 and again.content == first.content
        assert (cache / "metadata").is_dir()
        assert c.get(f"/files/{WHEEL}.metadata").status_code == 200


def test_an_unwritable_cache_degrades_to_pass_through(world, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be\n")
    with _serve(world, blocker / "cache") as url, httpx.Client(base_url=url) as c:
        page = c.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
        assert page.status_code == 200
        meta = c.get(f"/files/{WHEEL}.metadata")  # cold metadata, kept in memory
        assert meta.status_code == 200 and b"Name: demo_pkg" in meta.content
        for _ in range(2):
            r = c.get(f"/files/{WHEEL}")
            assert r.status_code == 200 and r.content == Upstream.wheel
            assert hashlib.sha256(r.content).hexdigest() == page.json()["files"][0]["hashes"]["sha256"]
        assert r.headers["cache-control"] == "no-store"
        assert c.get("/health").status_code == 200


def test_pipeline_pages_work_when_the_catalog_state_cannot_be_written(world, tmp_path):
    """The catalog refresh writes its ETag store under the cache; reading must not need it."""
    data = small_wheel("en_core_web_sm", "3.8.77")
    world.gh.add_release("en_core_web_sm-3.8.77", {"en_core_web_sm-3.8.77-py3-none-any.whl": data},
                   digest=True)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x\n")
    with _serve(world, blocker / "cache") as url, httpx.Client(base_url=url) as c:
        r = c.get("/simple/en-core-web-sm/", headers={"Accept": PIP_ACCEPT})
        assert r.status_code == 200
        assert [f["filename"] for f in r.json()["files"]] == ["en_core_web_sm-3.8.77-py3-none-any.whl"]
