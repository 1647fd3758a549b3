"""serve: the upstream side (PyPI-like pages and files), verification, TLS and logging."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import logging
import ssl
import subprocess
import sys
import time
import zipfile
from typing import ClassVar

import httpx
import pytest

from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from tests.fakegithub import FakeGitHub
from tests.servers import run_app, serve_handler, tls_files

PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
              "text/html; q=0.01")


def small_wheel(name="demo_pkg", version="1.0") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(f"{name}/__init__.py", (2020, 1, 1, 0, 0, 0)), b"")
        z.writestr(zipfile.ZipInfo(f"{name}-{version}.dist-info/METADATA", (2020, 1, 1, 0, 0, 0)),
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(zipfile.ZipInfo(f"{name}-{version}.dist-info/WHEEL", (2020, 1, 1, 0, 0, 0)),
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    return buf.getvalue()


class Upstream(http.server.BaseHTTPRequestHandler):
    """A PyPI-like index whose behaviour a test can switch: ok, error, captive portal."""

    mode = "ok"
    wheel = small_wheel()
    log: ClassVar[list[str]] = []

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", ctype="text/html"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.log.append(self.path)
        if self.path == "/simple/demo-pkg/":
            if self.mode == "error":
                return self._send(503, b"down")
            if self.mode == "captive":
                return self._send(200, b"<html><body>Please log in to the hotel wifi</body></html>")
            sha = hashlib.sha256(self.wheel).hexdigest()
            doc = {"meta": {"api-version": "1.1"}, "name": "demo-pkg", "versions": ["1.0"],
                   "files": [{"filename": "demo_pkg-1.0-py3-none-any.whl",
                              "url": "/packages/demo_pkg-1.0-py3-none-any.whl",
                              "hashes": {"sha256": sha}, "size": len(self.wheel),
                              "requires-python": ">=3.8", "core-metadata": False}]}
            return self._send(200, json.dumps(doc).encode(), "application/vnd.pypi.simple.v1+json")
        if self.path == "/packages/demo_pkg-1.0-py3-none-any.whl":
            return self._send(200, self.wheel, "application/octet-stream")
        return self._send(404, b"not found")


@contextlib.contextmanager
def upstream():
    Upstream.mode, Upstream.log = "ok", []
    with serve_handler(Upstream) as url:
        yield url


@pytest.fixture
def served(tmp_path):
    with FakeGitHub(load_fixture=False) as gh, upstream() as up:
        config = load_config(None, {}, upstream=up + "/simple/")
        config = type(config)(sources=config.sources, upstream=config.upstream, page_ttl=0.0)
        server = build_server(config, cache_dir=tmp_path / "cache", api_url=gh.api_url, token=None)
        with run_app(create_app(server)) as url:
            yield {"url": url, "gh": gh, "upstream": up}


def test_upstream_pages_are_rewritten_and_files_cached_once(served):
    with httpx.Client(base_url=served["url"]) as c:
        doc = c.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT}).json()
        (f,) = doc["files"]
        assert f["url"] == "../../files/demo_pkg-1.0-py3-none-any.whl"
        assert f["requires-python"] == ">=3.8"
        for _ in range(3):
            r = c.get("/files/demo_pkg-1.0-py3-none-any.whl")
            assert r.status_code == 200 and r.content == Upstream.wheel
        meta = c.get("/files/demo_pkg-1.0-py3-none-any.whl.metadata")
        assert meta.status_code == 200 and b"Name: demo_pkg" in meta.content
    assert Upstream.log.count("/packages/demo_pkg-1.0-py3-none-any.whl") == 1


def test_last_good_page_when_upstream_fails_and_captive_pages_are_never_cached(served):
    with httpx.Client(base_url=served["url"]) as c:
        good = c.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
        assert good.status_code == 200
        Upstream.mode = "error"
        stale = c.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
        assert stale.status_code == 200 and stale.json() == good.json()
        Upstream.mode = "captive"
        still = c.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
        assert still.json() == good.json()  # the portal page was not taken for a project page
        Upstream.mode = "ok"
        assert c.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT}).json() == good.json()


def test_captive_page_without_a_last_good_copy_is_a_502(served):
    Upstream.mode = "captive"
    r = httpx.get(served["url"] + "/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    assert r.status_code == 502
    assert "lists no distributions" in r.text


def test_hash_mismatch_is_a_502_naming_both_hashes_and_nothing_is_stored(tmp_path):
    data = small_wheel("en_core_web_sm", "3.8.7")
    wrong = "0" * 64
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        meta = json.dumps({"lang": "en", "name": "core_web_sm", "version": "3.8.7",
                           "spacy_version": ">=3.8.0,<3.9.0", "checksum_whl": wrong}).encode()
        info = tarfile.TarInfo("x-0000000/meta/en_core_web_sm-3.8.7.json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    with FakeGitHub(load_fixture=False, archive=buf.getvalue()) as gh:
        gh.add_release("en_core_web_sm-3.8.7", {"en_core_web_sm-3.8.7-py3-none-any.whl": data})
        config = load_config(None, {}, upstream="http://127.0.0.1:9/simple/")
        server = build_server(config, cache_dir=tmp_path / "cache", api_url=gh.api_url, token=None)
        with run_app(create_app(server)) as url:
            r = httpx.get(url + "/files/en_core_web_sm-3.8.7-py3-none-any.whl")
            assert r.status_code == 502
            assert wrong in r.text and hashlib.sha256(data).hexdigest() in r.text
            n = len([q for q in gh.requests if q.origin == "objects"])
            again = httpx.get(url + "/files/en_core_web_sm-3.8.7-py3-none-any.whl")
            assert again.status_code == 502
            assert len([q for q in gh.requests if q.origin == "objects"]) == n  # no retry storm
    assert not [p for p in (tmp_path / "cache" / "files").rglob("*") if p.is_file()]


def test_access_log_has_one_line_per_request(served, caplog):
    caplog.set_level(logging.INFO, logger="spacy_index.access")
    with httpx.Client(base_url=served["url"]) as c:
        c.get("/simple/demo-pkg/")
        c.get("/files/demo_pkg-1.0-py3-none-any.whl")
        c.get("/files/demo_pkg-1.0-py3-none-any.whl")
    deadline = time.monotonic() + 5  # the line is written once the response has been sent
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "spacy_index.access"]
        if len(lines) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(lines) == 3, lines
    assert lines[0].startswith("GET /simple/demo-pkg/ 200 ")
    assert lines[1].startswith("GET /files/demo_pkg-1.0-py3-none-any.whl 200 ") and " miss " in lines[1]
    assert " hit " in lines[2] and lines[2].endswith("s")


@pytest.mark.e2e
def test_tls_lets_pip_use_its_cache(tmp_path, client_env):
    cert_pem, key_pem, ca_pem = tls_files(tmp_path)
    with FakeGitHub(load_fixture=False) as gh, upstream() as up:
        config = load_config(None, {}, upstream=up + "/simple/")
        server = build_server(config, cache_dir=tmp_path / "cache", api_url=gh.api_url, token=None)
        with run_app(create_app(server), ssl_certfile=str(cert_pem), ssl_keyfile=str(key_pem)) as url:
            assert url.startswith("https://")
            r = httpx.get(url + "/simple/demo-pkg/", verify=ssl.create_default_context(cafile=str(ca_pem)))
            assert r.status_code == 200
            dest = tmp_path / "dl"
            # pip ≥ 24.2 verifies through the system trust store (truststore); point every
            # trust setting at the test CA
            env = {**client_env, "SSL_CERT_FILE": str(ca_pem), "REQUESTS_CA_BUNDLE": str(ca_pem),
                   "PIP_CERT": str(ca_pem)}
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--cert", str(ca_pem),
                            "--index-url", url + "/simple/", "-d", str(dest), "demo-pkg"],
                           env=env, check=False, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert (dest / "demo_pkg-1.0-py3-none-any.whl").read_bytes() == Upstream.wheel
