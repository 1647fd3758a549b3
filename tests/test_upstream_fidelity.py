"""serve against upstream indexes as they really are: every listed file passed through, files
without a hash, stale-while-revalidate, the system trust store, private CAs and proxies.

The upstream here is a scriptable index on 127.0.0.1 (the real PyPI is exercised by
tests/test_pypi_conformance.py and tests/test_real_pypi_clients.py)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import ClassVar

import httpx
import pytest

from spacy_index.http import describe_error, make_client, ssl_context
from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from spacy_index.simple.parse import parse_page
from tests.servers import run_app, serve_handler, tls_files

JSON = "application/vnd.pypi.simple.v1+json"
SHA = {n: hashlib.sha256(n.encode()).hexdigest() for n in ("a", "b", "c", "d", "e", "f")}


def _file(filename: str, sha: str | None, **extra: object) -> dict[str, object]:
    return {"filename": filename, "url": f"/packages/{filename}",
            "hashes": {"sha256": sha} if sha else {}, **extra}


#: a page with everything a real PyPI page can hold (the shapes seen on pypi.org)
PAGE = {
    "meta": {"api-version": "1.4", "_last-serial": 1},
    "name": "oldpkg",
    "versions": ["0.9b", "1.0", "1.0.0", "2004b", "1.0.dev-r123"],
    "project-status": {"status": "archived", "reason": "superseded by newpkg"},
    "files": [
        _file("oldpkg-0.9b-py2.4.egg", SHA["a"], size=10, **{"upload-time": "2006-01-01T00:00:00Z"}),
        _file("oldpkg-1.0.win32-py2.7.exe", SHA["b"], size=11, yanked="broken installer"),
        _file("oldpkg-1.0.tar.bz2", SHA["c"], size=12, **{"requires-python": ">=2.4"}),
        _file("oldpkg-1.0.0.tar.gz", SHA["d"], size=13),
        _file("oldpkg-1.0.dev-r123.tar.gz", SHA["e"], size=14),
        _file("oldpkg-2004b-py3-none-any.whl", SHA["f"], size=15,
              provenance="https://up.example/integrity/oldpkg/2004b/oldpkg-2004b-py3-none-any.whl/provenance",
              **{"core-metadata": {"sha256": SHA["a"]}}),
        _file("../escape.tar.gz", SHA["a"], size=1),
        _file("bad\x01name-1.0.tar.gz", SHA["a"], size=1),
    ],
}
SAFE = [f["filename"] for f in PAGE["files"]][:6]


class Index(http.server.BaseHTTPRequestHandler):
    """``routes``: path -> (status, content type, body); every request is logged."""

    routes: ClassVar[dict[str, tuple[int, str, bytes]]] = {}
    log: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        status, ctype, body = self.routes.get(self.path, (404, "text/plain", b"not found"))
        self.log.append(self.path)  # after the answer was chosen: tests wait on the log
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def index_server(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    Index.log = []
    with serve_handler(Index, tls=tls) as url:
        yield url


@contextlib.contextmanager
def serving(tmp_path, upstream: str, config_text: str = "", env=None, **changes) -> Iterator[str]:
    path = None
    tmp_path.mkdir(parents=True, exist_ok=True)
    if config_text:
        path = tmp_path / "serve.toml"
        path.write_text(config_text)
    config = load_config(path, env or {}, upstream=upstream)
    config = replace(config, **changes)
    server = build_server(config, cache_dir=tmp_path / "cache", api_url="http://127.0.0.1:9",
                          token=None)
    with run_app(create_app(server)) as url:
        yield url


def _get(url: str, **kwargs: object) -> httpx.Response:
    """A request to serve that never takes a proxy from the environment (the proxy test
    sets one for serve's upstream)."""
    return httpx.get(url, trust_env=False, timeout=30, **kwargs)


def _json(url: str, path: str) -> httpx.Response:
    return _get(url + path, headers={"Accept": JSON})


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --------------------------------------------------------------------------- parsing
def test_parse_page_keeps_every_file_in_order_and_refuses_only_unsafe_names():
    page = parse_page(json.dumps(PAGE).encode(), JSON, "https://up.example/simple/oldpkg/", "oldpkg")
    assert [d.filename for d in page.dists] == SAFE
    assert len(page.refused) == 2 and all("escape" in r or "bad" in r for r in page.refused)
    kinds = {d.filename: (d.kind, d.release) for d in page.dists}
    assert kinds["oldpkg-0.9b-py2.4.egg"] == ("other", "0.9b0")
    assert kinds["oldpkg-1.0.tar.bz2"] == ("sdist", "1.0")
    assert kinds["oldpkg-1.0.dev-r123.tar.gz"] == ("other", "1.0.dev-r123")
    assert page.versions == tuple(PAGE["versions"])
    assert page.status == ("archived", "superseded by newpkg")


def test_html_links_are_unquoted_and_their_query_is_not_part_of_the_filename():
    body = (b'<a href="../../p/name-1.0%2Blocal-py3-none-any.whl#sha256=' + SHA["a"].encode()
            + b'">x</a><a href="/p/name-1.0.tar.gz?token=abc">y</a>'
            b'<meta name="pypi:project-status" content="deprecated">')
    page = parse_page(body, "text/html", "https://up.example/simple/name/", "name")
    assert [d.filename for d in page.dists] == ["name-1.0+local-py3-none-any.whl", "name-1.0.tar.gz"]
    assert page.dists[1].url == "https://up.example/p/name-1.0.tar.gz?token=abc"
    assert page.status == ("deprecated", None)


# --------------------------------------------------------------------------- pass-through
def test_serve_passes_every_listed_file_through_with_all_its_fields(tmp_path):
    Index.routes = {"/simple/oldpkg/": (200, JSON, json.dumps(PAGE).encode())}
    with index_server() as up, serving(tmp_path, up + "/simple/") as url:
        doc = _json(url, "/simple/oldpkg/").json()
        html = _get(url + "/simple/oldpkg/", headers={"Accept": "text/html"}).text
        pypi = _get(url + "/pypi/oldpkg/json")
    assert [f["filename"] for f in doc["files"]] == SAFE
    by_name = {f["filename"]: f for f in doc["files"]}
    upstream = {f["filename"]: f for f in PAGE["files"]}
    for name in SAFE:
        got, want = by_name[name], upstream[name]
        assert got["hashes"] == want["hashes"] and got["size"] == want["size"]
        for key in ("requires-python", "yanked", "provenance", "upload-time"):
            assert (key in got) == (key in want) and got.get(key, "").rstrip("Z").rstrip("0.") \
                == want.get(key, "").rstrip("Z").rstrip("0."), (name, key)
    assert doc["versions"] == PAGE["versions"]
    assert doc["project-status"] == PAGE["project-status"]
    assert doc["meta"]["api-version"] == "1.4"
    assert 'name="pypi:project-status" content="archived"' in html
    assert 'data-provenance="https://up.example/integrity/' in html
    assert all(f">{name}</a>" in html for name in SAFE)
    assert pypi.status_code == 200
    releases = pypi.json()["releases"]
    assert {"1.0", "1.0.0", "1.0.dev-r123", "0.9b0", "2004b0"} <= set(releases)
    listed = {f["filename"] for files in releases.values() for f in files}
    assert listed == set(SAFE)


def test_a_file_listed_without_a_hash_is_served_unverified_once(tmp_path, caplog):
    data = b"prodigy wheel bytes" * 1000
    page = {"meta": {"api-version": "1.0"}, "name": "nohash",
            "files": [_file("nohash-1.0-py3-none-any.whl", None)]}
    Index.routes = {"/simple/nohash/": (200, JSON, json.dumps(page).encode()),
                    "/packages/nohash-1.0-py3-none-any.whl": (200, "application/zip", data)}
    with caplog.at_level(logging.INFO, logger="spacy_index.access"), index_server() as up, \
            serving(tmp_path, up + "/simple/") as url:
        doc = _json(url, "/simple/nohash/").json()
        assert doc["files"][0]["hashes"] == {}
        answers = [_get(url + "/files/nohash-1.0-py3-none-any.whl") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert all(r.content == data for r in answers)
    assert answers[0].headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert Index.log.count("/packages/nohash-1.0-py3-none-any.whl") == 1
    lines = [r.getMessage() for r in caplog.records if "/files/nohash" in r.getMessage()]
    assert "miss-unverified" in lines[0] and all("hit-unverified" in x for x in lines[1:])


def test_require_hashes_refuses_a_file_listed_without_a_hash(tmp_path):
    page = {"meta": {"api-version": "1.0"}, "name": "acme-tool",
            "files": [_file("acme_tool-1.0-py3-none-any.whl", None)]}
    Index.routes = {"/private/acme-tool/": (200, JSON, json.dumps(page).encode())}
    with index_server() as up:
        config = (f'[[source]]\nname = "private"\nkind = "simple"\nurl = "{up}/private/"\n'
                  'projects = ["acme-*"]\nrequire_hashes = true\n')
        with serving(tmp_path, up + "/simple/", config) as url:
            assert _json(url, "/simple/acme-tool/").status_code == 200
            r = _get(url + "/files/acme_tool-1.0-py3-none-any.whl")
    assert r.status_code == 502 and "require_hashes" in r.text
    assert "/packages/acme_tool-1.0-py3-none-any.whl" not in Index.log


def test_stale_page_is_answered_at_once_and_refreshed_behind(tmp_path):
    def page(files):
        return (200, JSON, json.dumps({"meta": {"api-version": "1.0"}, "name": "swr",
                                       "files": files}).encode())

    Index.routes = {"/simple/swr/": page([_file("swr-1.0.tar.gz", SHA["a"])])}
    with index_server() as up, serving(tmp_path, up + "/simple/", page_ttl=0.3,
                                       stale_while_revalidate=60.0) as url:
        first = _json(url, "/simple/swr/")
        time.sleep(0.4)
        same = _json(url, "/simple/swr/")  # stale, unchanged upstream: the same page
        assert same.headers["etag"] == first.headers["etag"]
        _wait_for(lambda: Index.log.count("/simple/swr/") == 2)  # the background refresh
        time.sleep(0.1)  # its answer is parsed and stored
        Index.routes = {"/simple/swr/": page([_file("swr-1.0.tar.gz", SHA["a"]),
                                               _file("swr-2.0.tar.gz", SHA["b"])])}
        time.sleep(0.4)
        stale = _json(url, "/simple/swr/")  # answered from the cache, refresh started
        assert [f["filename"] for f in stale.json()["files"]] == ["swr-1.0.tar.gz"]
        for _ in range(100):
            fresh = _json(url, "/simple/swr/")
            if len(fresh.json()["files"]) == 2:
                break
            time.sleep(0.05)
    assert [f["filename"] for f in fresh.json()["files"]] == ["swr-1.0.tar.gz", "swr-2.0.tar.gz"]


# --------------------------------------------------------------------------- TLS and proxies
@pytest.fixture
def tls_upstream(tmp_path):
    cert, key, ca = tls_files(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    Index.routes = {"/simple/demo/": (200, JSON, json.dumps(
        {"meta": {"api-version": "1.0"}, "name": "demo",
         "files": [_file("demo-1.0.tar.gz", SHA["a"])]}).encode())}
    with index_server(ctx) as up:
        yield up, ca


def test_an_untrusted_certificate_is_one_clear_line_in_the_502_and_the_log(tmp_path, tls_upstream, caplog):
    up, _ca = tls_upstream
    with caplog.at_level(logging.WARNING, logger="spacy_index.server"), \
            serving(tmp_path, up + "/simple/") as url:
        r = _json(url, "/simple/demo/")
    assert r.status_code == 502
    assert "certificate verify failed" in r.text and "for 127.0.0.1" in r.text
    assert "SSL_CERT_FILE or ca_bundle" in r.text and "ConnectError" not in r.text
    assert any("certificate verify failed" in rec.getMessage() for rec in caplog.records)


def test_a_private_ca_from_the_config_or_ssl_cert_file_is_trusted(tmp_path, tls_upstream, monkeypatch):
    up, ca = tls_upstream
    config = f'[server]\nca_bundle = "{ca}"\n'
    with serving(tmp_path / "a", up + "/simple/", config) as url:
        assert _json(url, "/simple/demo/").status_code == 200
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    with serving(tmp_path / "b", up + "/simple/") as url:
        assert _json(url, "/simple/demo/").status_code == 200
    with make_client() as client:  # the build/install client, same rule
        assert client.get(up + "/simple/demo/").status_code == 200


def test_the_default_context_is_the_system_trust_store(monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    import truststore

    assert isinstance(ssl_context(), truststore.SSLContext)


def test_a_missing_ca_bundle_is_a_usage_error():
    from spacy_index.errors import UsageError

    with pytest.raises(UsageError, match="cannot load the CA certificates in ca_bundle"):
        ssl_context("/nonexistent/ca.pem")


def test_describe_error_names_host_and_cause():
    request = httpx.Request("GET", "https://pypi.org/simple/x/")
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "self-signed certificate in certificate chain"
    exc = httpx.ConnectError("[SSL] ...", request=request)
    exc.__cause__ = cause
    assert describe_error(exc) == (
        "certificate verify failed: self-signed certificate in certificate chain for pypi.org; "
        "set SSL_CERT_FILE or ca_bundle (--ca-bundle) to the CA that signs it")
    assert describe_error(httpx.ConnectTimeout("t", request=request)) == "connection timed out for pypi.org"


class Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy for plain HTTP that answers every absolute URL from ``Index.routes``."""

    seen: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        status, ctype, body = Index.routes.get(httpx.URL(self.path).path, (404, "text/plain", b"no"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def proxy_server() -> Iterator[str]:
    Proxy.seen = []
    with serve_handler(Proxy) as url:
        yield url


@pytest.mark.parametrize("how", ["environment", "config"])
def test_proxies_from_the_environment_or_the_config(tmp_path, monkeypatch, how):
    Index.routes = {"/simple/demo/": (200, JSON, json.dumps(
        {"meta": {"api-version": "1.0"}, "name": "demo",
         "files": [_file("demo-1.0.tar.gz", SHA["a"])]}).encode())}
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    with proxy_server() as proxy:
        config = ""
        if how == "environment":
            monkeypatch.setenv("HTTP_PROXY", proxy)
        else:
            config = f'[server]\nproxy = "{proxy}"\n'
        # a host that does not resolve: only the proxy can answer for it
        with serving(tmp_path, "http://pypi.invalid/simple/", config) as url:
            r = _json(url, "/simple/demo/")
    assert r.status_code == 200 and r.json()["files"][0]["filename"] == "demo-1.0.tar.gz"
    assert Proxy.seen == ["http://pypi.invalid/simple/demo/"]


class Conditional(Index):
    """Answers 304 to a matching If-None-Match."""

    def do_GET(self) -> None:
        if self.headers.get("If-None-Match") == '"v1"':
            self.log.append("304 " + self.path)
            self.send_response(304)
            self.send_header("ETag", '"v1"')
            self.end_headers()
            return
        status, ctype, body = self.routes.get(self.path, (404, "text/plain", b"not found"))
        self.log.append(self.path)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("ETag", '"v1"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_pages_are_revalidated_with_the_upstreams_etag(tmp_path):
    Index.routes = {"/simple/etag/": (200, JSON, json.dumps(
        {"meta": {"api-version": "1.0"}, "name": "etag",
         "files": [_file("etag-1.0.tar.gz", SHA["a"])]}).encode())}
    Index.log = []
    with serve_handler(Conditional) as up, \
            serving(tmp_path, up + "/simple/", page_ttl=0.0, stale_while_revalidate=0.0) as url:
        first = _json(url, "/simple/etag/")
        second = _json(url, "/simple/etag/")
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert Index.log == ["/simple/etag/", "304 /simple/etag/"]


def test_access_log_counts_zero_copy_bytes_and_escapes_control_characters(tmp_path, caplog):
    data = b"w" * 300_000
    page = {"meta": {"api-version": "1.0"}, "name": "zc",
            "files": [_file("zc-1.0-py3-none-any.whl", hashlib.sha256(data).hexdigest())]}
    Index.routes = {"/simple/zc/": (200, JSON, json.dumps(page).encode()),
                    "/packages/zc-1.0-py3-none-any.whl": (200, "application/zip", data)}
    with caplog.at_level(logging.INFO, logger="spacy_index.access"), index_server() as up, \
            serving(tmp_path, up + "/simple/") as url:
        _json(url, "/simple/zc/")
        for _ in range(2):  # a miss (streamed), then a hit (sendfile)
            assert _get(url + "/files/zc-1.0-py3-none-any.whl").content == data
        _get(url + "/simple/a%0aGET%20/forged%1b[31m/")
    lines = [r.getMessage() for r in caplog.records if r.name == "spacy_index.access"]
    files = [x for x in lines if "/files/zc-1.0" in x]
    assert len(files) == 2 and all(f" 200 {len(data)}B " in x for x in files), files
    assert "hit" in files[1]
    (forged,) = [x for x in lines if "forged" in x]
    assert "\n" not in forged and "\x1b" not in forged and "a\\x0aGET /forged\\x1b[31m" in forged


def test_metadata_for_one_project_does_not_re_render_another_projects_page(tmp_path):
    """A cold install stores metadata for 45 wheels: pages of other projects stay rendered."""
    from spacy_index.model import Distribution, Project
    from spacy_index.server.config import load_config
    from spacy_index.server.wiring import build_server

    server = build_server(load_config(None, {}, upstream="http://127.0.0.1:9/simple/"),
                          cache_dir=tmp_path, api_url="http://127.0.0.1:9", token=None)
    from packaging.version import Version

    big = Project("big", "big", tuple(Distribution("big", f"big-1.{i}.tar.gz", "http://u/x",
                                                   Version(f"1.{i}"), "sdist", SHA["a"])
                                      for i in range(3)))
    body, etag = server.render(big, JSON)
    server.metadata.put(SHA["b"], b"Metadata-Version: 2.1\nName: other\n", "other")
    assert server.rendered(big, JSON) == (body, etag)
    server.metadata.put(SHA["c"], b"Metadata-Version: 2.1\nName: big\n", "big")
    assert server.rendered(big, JSON) is None  # its own metadata: re-rendered next time


def _wheels_project(n: int):
    from packaging.version import Version

    from spacy_index.model import Distribution, Project

    files = [Distribution("big", f"big-1.{i}-py3-none-any.whl", f"http://u/big-1.{i}.whl",
                          Version(f"1.{i}"), "wheel", hashlib.sha256(b"w%d" % i).hexdigest(),
                          size=10 + i, requires_python=">=3.8" if i % 2 else None)
             for i in range(n)]
    files.append(Distribution("big", "big-1.0.tar.gz", "http://u/big-1.0.tar.gz", Version("1.0"),
                              "sdist", SHA["a"], size=9))
    return Project("big", "Big", tuple(files))


def _reference(server, project, ctype: str) -> bytes:
    """The page as the plain renderers write it from the local view (every file encoded)."""
    from spacy_index.render import html, pep691
    from spacy_index.render.json_api import dumps

    doc = pep691.project_dict(server.local_view(project))
    return (dumps(doc) if ctype == JSON else html.project_page(doc, project.display_name)).encode()


@pytest.mark.parametrize("ctype", [JSON, "text/html"])
def test_new_metadata_re_renders_only_its_file_and_the_page_is_the_same_bytes(tmp_path, ctype,
                                                                              monkeypatch):
    """After metadata arrives for one wheel, its page advertises the hash; the re-render
    encodes that one file again and copies the others from the last body, byte for byte
    what a full render (and a fresh server on the same cache) writes."""
    from spacy_index.server import pages

    config = load_config(None, {}, upstream="http://127.0.0.1:9/simple/")
    server = build_server(config, cache_dir=tmp_path, api_url="http://127.0.0.1:9", token=None)
    big = _wheels_project(40)
    per_file = 1 if ctype == JSON else 2  # HTML: data-core-metadata, data-dist-info-metadata
    body, _etag = server.render(big, ctype)
    assert body == _reference(server, big, ctype)
    assert body.count(b"true") == 40 * per_file  # every hashed wheel; no hash known yet
    encoded = []
    original = pages.local_file_dict
    monkeypatch.setattr(pages, "local_file_dict",
                        lambda d, meta: encoded.append(d.filename) or original(d, meta))
    meta = b"Metadata-Version: 2.1\nName: big\nVersion: 1.7\n"
    server.metadata.put(big.files[7].sha256, meta, "big")
    assert server.rendered(big, ctype) is None
    again, etag = server.render(big, ctype)
    assert encoded == [big.files[7].filename]
    assert again == _reference(server, big, ctype)
    assert hashlib.sha256(meta).hexdigest().encode() in again and again.count(b"true") == 39 * per_file
    monkeypatch.undo()
    fresh = build_server(config, cache_dir=tmp_path, api_url="http://127.0.0.1:9", token=None)
    assert fresh.render(big, ctype) == (again, etag)
    # another project object (a refreshed upstream page) is rendered in full
    other = _wheels_project(41)
    assert server.render(other, ctype)[0] == _reference(server, other, ctype)


def test_page_metadata_lookups_follow_the_folder_also_when_another_process_writes(tmp_path):
    """A render takes one listing of the metadata folder (not one probe per wheel): a file
    another process writes or removes shows in the next listing, a removed folder lists
    nothing, metadata kept in memory is still found."""
    from spacy_index.server.stores import MetadataStore

    store = MetadataStore(tmp_path / "metadata")
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    assert store.listed() == frozenset()
    store.put(a, b"Name: a\n", "a")
    (tmp_path / "metadata" / f"{b}.metadata").write_bytes(b"Name: b\n")  # not through put
    listed = store.listed()
    assert listed == {a, b}
    assert store.digest(b, listed) == hashlib.sha256(b"Name: b\n").hexdigest()
    (tmp_path / "metadata" / f"{a}.metadata").unlink()
    listed = store.listed()
    assert listed == {b} and store.digest(a, listed) is None and store.digest(a) is None
    # an unchanged folder (changed long enough ago) is not listed again
    import os

    os.utime(tmp_path / "metadata", ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))
    first = store.listed()
    assert store.listed() is first
    (tmp_path / "metadata" / f"{a}.metadata").write_bytes(b"Name: a\n")  # the mtime moves
    assert store.listed() == {a, b}
    import shutil

    shutil.rmtree(tmp_path / "metadata")
    assert store.listed() == frozenset() and store.digest(b, store.listed()) is None
    store.in_memory[a] = b"Name: a\n"
    assert store.digest(a, store.listed()) == hashlib.sha256(b"Name: a\n").hexdigest()
