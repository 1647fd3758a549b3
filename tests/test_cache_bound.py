"""The bounded cache: LRU eviction across files and metadata, pins, the `cache` command."""

from __future__ import annotations

import hashlib
import json
import os
import time

import httpx

from spacy_index.cache.index import FILES, METADATA, CacheIndex
from spacy_index.cli import main
from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from tests.fakegithub import FakeGitHub
from tests.servers import run_app
from tests.test_upstream_fidelity import JSON, Index, _file, index_server


def _bytes_in(folder) -> int:
    """Bytes of the files below ``folder``; a file evicted while we look counts as gone."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


def _put(root, data: bytes, name: str, project: str, index: CacheIndex, when: float) -> str:
    sha = hashlib.sha256(data).hexdigest()
    path = root / "files" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    index.stored(FILES, sha, name, project, len(data))
    index._db.execute("UPDATE entries SET last_used = ? WHERE sha = ?", (when, sha))
    return sha


def test_evicts_least_recently_used_first_and_never_pins_or_files_in_use(tmp_path):
    index = CacheIndex(tmp_path)
    now = time.time()
    old = _put(tmp_path, b"a" * 100, "a-1.0.tar.gz", "a", index, now - 300)
    pinned = _put(tmp_path, b"b" * 100, "en_core_web_sm-3.8.0-py3-none-any.whl", "en-core-web-sm",
                  index, now - 200)
    busy = _put(tmp_path, b"c" * 100, "c-1.0.tar.gz", "c", index, now - 150)
    recent = _put(tmp_path, b"d" * 100, "d-1.0.tar.gz", "d", index, now - 100)
    index.used(FILES, old)  # a hit: now the most recently used
    removed = index.evict(150, pin=["en_core_web_*"], in_use=lambda sha: sha == busy)
    assert [e.sha256 for e in removed] == [recent, old]
    assert {e.sha256 for e in index.entries()} == {pinned, busy}
    assert not (tmp_path / "files" / old[:2] / old).exists()
    assert (tmp_path / "files" / pinned[:2] / pinned).exists()


def test_scan_adopts_what_is_on_disk_and_verify_removes_wrong_files(tmp_path):
    good, bad = b"good" * 10, b"bad" * 10
    for data, name in ((good, hashlib.sha256(good).hexdigest()), (bad, "0" * 64)):
        path = tmp_path / "files" / name[:2] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / f"{'1' * 64}.metadata").write_bytes(b"Name: x\n")
    index = CacheIndex(tmp_path)
    assert index.scan() == 3
    checked, wrong = index.verify()
    assert checked == 2 and [e.sha256 for e in wrong] == ["0" * 64]
    assert {(e.kind, e.sha256) for e in index.entries()} == {
        (FILES, hashlib.sha256(good).hexdigest()), (METADATA, "1" * 64)}


def test_serve_holds_the_bound_across_files_and_metadata(tmp_path):
    """Ten 100 kB files through a cache bounded at 350 kB: never more than the bound plus one
    file on disk, the newest stay, every answer is right."""
    blobs = {f"big-1.{i}.tar.gz": os.urandom(100_000) for i in range(10)}
    page = {"meta": {"api-version": "1.0"}, "name": "big",
            "files": [_file(n, hashlib.sha256(d).hexdigest()) for n, d in blobs.items()]}
    Index.routes = {"/simple/big/": (200, JSON, json.dumps(page).encode()),
                    **{f"/packages/{n}": (200, "application/gzip", d) for n, d in blobs.items()}}
    cache = tmp_path / "cache"
    with index_server() as up:
        config = load_config(None, {}, upstream=up + "/simple/")
        from dataclasses import replace

        config = replace(config, cache=replace(config.cache, max_size=350_000))
        server = build_server(config, cache_dir=cache, api_url="http://127.0.0.1:9", token=None)
        with run_app(create_app(server)) as url, httpx.Client(base_url=url, timeout=30) as c:
            c.get("/simple/big/", headers={"Accept": JSON})
            for name, data in blobs.items():
                assert c.get(f"/files/{name}").content == data
                deadline = time.monotonic() + 10
                while True:  # the index is written off the event loop
                    on_disk = _bytes_in(cache / "files")
                    if on_disk <= 350_000 + 100_000 or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                assert on_disk <= 350_000 + 100_000
            assert server.bound.evicted >= 6
            last = list(blobs)[-1]
            before = Index.log.count(f"/packages/{last}")
            assert c.get(f"/files/{last}").content == blobs[last]  # the newest is still cached
            assert Index.log.count(f"/packages/{last}") == before


def test_cache_command_stats_prune_rm_and_verify(tmp_path, capsys):
    index = CacheIndex(tmp_path)
    now = time.time()
    _put(tmp_path, b"x" * 1000, "x-1.0.tar.gz", "x", index, now - 100)
    _put(tmp_path, b"y" * 1000, "y-1.0.tar.gz", "y", index, now - 50)
    _put(tmp_path, b"z" * 1000, "en_core_web_md-3.8.0-py3-none-any.whl", "en-core-web-md", index, now)
    index.close()
    env = {"SPACY_INDEX_CACHE_DIR": str(tmp_path)}
    assert main(["cache", "stats", "--json"], env) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["filename"] for r in rows) == ["en_core_web_md-3.8.0-py3-none-any.whl",
                                                  "x-1.0.tar.gz", "y-1.0.tar.gz"]
    assert main(["cache", "prune", "--max-size", "2500"], env) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert main(["cache", "rm", "en_core_web_*"], env) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert main(["cache", "verify"], env) == 0
    assert "verified 1 files; removed 0" in capsys.readouterr().out
    assert main(["cache", "prune"], env) == 2
    assert "needs --max-size" in capsys.readouterr().err


def test_cache_warm_downloads_a_pipeline_once(tmp_path, capsys):
    from tests.test_serve_upstream import small_wheel

    data = small_wheel("en_core_web_sm", "3.8.77")
    with FakeGitHub(load_fixture=False) as gh:
        gh.add_release("en_core_web_sm-3.8.77", {"en_core_web_sm-3.8.77-py3-none-any.whl": data},
                       digest=True)
        env = {"SPACY_INDEX_CACHE_DIR": str(tmp_path), "GITHUB_API_URL": gh.api_url}
        assert main(["cache", "warm", "en_core_web_sm"], env) == 0
        assert "downloaded: en_core_web_sm-3.8.77-py3-none-any.whl" in capsys.readouterr().out
        assert main(["cache", "warm", "en_core_web_sm==3.8.77"], env) == 0
        assert "already cached" in capsys.readouterr().out
    sha = hashlib.sha256(data).hexdigest()
    assert (tmp_path / "files" / sha[:2] / sha).read_bytes() == data
    (entry,) = CacheIndex(tmp_path).entries()
    assert entry.project == "en-core-web-sm"


def test_evictions_are_counted_in_the_metrics(tmp_path):
    server = build_server(load_config(None, {}, upstream="http://127.0.0.1:9/simple/"),
                          cache_dir=tmp_path, api_url="http://127.0.0.1:9", token=None)
    server.bound.max_size = 150
    for i, data in enumerate((b"a" * 100, b"b" * 100)):
        sha = hashlib.sha256(data).hexdigest()
        path = tmp_path / "files" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        server.bound.stored(FILES, sha, f"p-1.{i}.tar.gz", "p", len(data))  # no loop: now
    assert server.bound.evicted == 1
    rendered = server.metrics.render()
    text = rendered.decode() if isinstance(rendered, bytes) else rendered
    assert 'spacy_index_cache_evictions_total{kind="file"} 1.0' in text


def test_cache_commands_are_safe_while_serve_runs(tmp_path, capsys):
    """prune, verify and rm against the folder a running serve uses: every answer stays
    right (files evicted under it are fetched again), and the commands finish."""
    import threading

    blobs = {f"live-1.{i}.tar.gz": os.urandom(50_000) for i in range(6)}
    page = {"meta": {"api-version": "1.0"}, "name": "live",
            "files": [_file(n, hashlib.sha256(d).hexdigest()) for n, d in blobs.items()]}
    Index.routes = {"/simple/live/": (200, JSON, json.dumps(page).encode()),
                    **{f"/packages/{n}": (200, "application/gzip", d) for n, d in blobs.items()}}
    cache = tmp_path / "cache"
    wrong: list[str] = []
    with index_server() as up:
        server = build_server(load_config(None, {}, upstream=up + "/simple/"), cache_dir=cache,
                              api_url="http://127.0.0.1:9", token=None)
        with run_app(create_app(server)) as url, httpx.Client(base_url=url, timeout=30) as c:
            c.get("/simple/live/", headers={"Accept": JSON})
            stop = threading.Event()

            def clients() -> None:
                with httpx.Client(base_url=url, timeout=30) as own:
                    while not stop.is_set():
                        for name, data in blobs.items():
                            if own.get(f"/files/{name}").content != data:
                                wrong.append(name)

            workers = [threading.Thread(target=clients) for _ in range(3)]
            for w in workers:
                w.start()
            env = {"SPACY_INDEX_CACHE_DIR": str(cache)}
            try:
                for _ in range(5):
                    assert main(["cache", "prune", "--max-size", "60000"], env) == 0
                    assert main(["cache", "verify"], env) == 0
                    assert main(["cache", "rm", "live"], env) == 0
            finally:
                stop.set()
                for w in workers:
                    w.join(30)
    assert wrong == []
