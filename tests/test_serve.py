"""`spacy-index serve` over real HTTP on loopback: routing, negotiation, caching, metadata,
confusion, concurrency and secrets, with real pip, uv and pip-tools as clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import sys
import tarfile
from urllib.parse import quote

import httpx
import pytest

from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from tests.clients import build_wheelhouse, make_venv, run
from tests.htmlparse import parse_anchors
from tests.servers import run_app, write_simple_project
from tests.workflow_support import licensed_host, stub_wheel
from tests.worlds import WorldSpec

TOKEN = "fake-ghp-SERVEtokenSERVEtokenSERVE0123456789"
LICENCE_KEY = "LicKey-7c1e/9f+SECRET"  # has characters that get percent-encoded
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
              "text/html; q=0.01")


def placeholder_sdist(name: str) -> bytes:
    """PyPI's stub: an sdist whose setup.py aborts the install."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, text in {
            f"{name}-999.9.9/setup.py": "raise SystemExit('placeholder: this is not the model')\n",
            f"{name}-999.9.9/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 999.9.9\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tiny_wheel(name: str, version: str) -> bytes:
    return stub_wheel(name, version)[1]


def _placeholders(world):
    for spelling in ("en-core-web-trf", "en_core_web_trf", "En.Core.Web.Trf"):
        write_simple_project(world.root / "pypi", spelling,
                             {f"{spelling}-999.9.9.tar.gz": placeholder_sdist(spelling)}, dirname=spelling)


def _licensed_host(_world):
    return licensed_host(LICENCE_KEY, {
        "prodigy-1.15.0-py3-none-any.whl": tiny_wheel("prodigy", "1.15.0"),
        "prodigy_addon-0.1.0-py3-none-any.whl": tiny_wheel("prodigy_addon", "0.1.0")})


def _config(world) -> str:
    # the key twice: percent-encoded in the URL's username slot, and as basic auth
    return ("[[source]]\n"
            'name = "prodigy"\n'
            'kind = "find-links"\n'
            f'url = "http://${{PRODIGY_KEY}}@127.0.0.1:{world.host.port}/"\n'
            'projects = ["prodigy"]\n'
            "[[source]]\n"
            'name = "prodigy-basic"\n'
            'kind = "find-links"\n'
            f'url = "http://127.0.0.1:{world.host.port}/"\n'
            'username = "${PRODIGY_KEY_RAW}"\n'
            'projects = ["prodigy-*"]\n')


#: three real pipelines on a fake GitHub (one padded to 20 MB), a fake PyPI holding the
#: 999.9.9 placeholders under three spellings, a licensed private host, and the server
WORLD = WorldSpec(
    "serve", token=TOKEN, upstream="pypi", serve="app",
    pipelines={"sm": {"version": "3.8.50"},
               "md": {"name": "core_web_md", "version": "3.8.50", "pad_bytes": 20 << 20},
               "trf": {"name": "core_web_trf", "version": "3.8.50"}},
    parts={"placeholders": _placeholders, "host": _licensed_host}, config=_config,
    env={"PRODIGY_KEY": quote(LICENCE_KEY, safe=""), "PRODIGY_KEY_RAW": LICENCE_KEY})


def upstream_bytes(gh) -> int:
    return sum(r.bytes_sent for r in gh.requests if r.origin in ("web", "objects"))


# ----------------------------------------------------------------------------- protocol
@pytest.mark.slow
def test_negotiation_redirect_etag(world):
    url = world.url
    with httpx.Client(base_url=url) as c:
        r = c.get("/simple/en-core-web-sm/", headers={"Accept": PIP_ACCEPT})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(JSON_ACCEPT)
        assert r.headers["vary"] == "Accept"
        assert "max-age=" in r.headers["cache-control"]
        doc = r.json()
        assert doc["meta"]["api-version"] in ("1.0", "1.1")
        (f,) = doc["files"]
        assert f["url"] == "../../files/en_core_web_sm-3.8.50-py3-none-any.whl"
        assert f["hashes"] == {"sha256": world.sm.sha256}
        assert "core-metadata" in f and "dist-info-metadata" not in f
        etag = r.headers["etag"]
        assert c.get("/simple/en-core-web-sm/", headers={"Accept": PIP_ACCEPT, "If-None-Match": etag}).status_code == 304
        h = c.get("/simple/en-core-web-sm/", headers={"Accept": "text/html"})
        (attrs, _text), = parse_anchors(h.text).anchors
        assert attrs["href"].endswith("#sha256=" + world.sm.sha256)
        assert attrs["data-core-metadata"] == attrs["data-dist-info-metadata"]
        assert c.get("/simple/en-core-web-sm/", headers={"Accept": "application/xml"}).status_code == 406
        assert c.get("/simple/en-core-web-sm/", headers={"Accept": "text/html;q=0, application/json"}).status_code == 406
        for raw in ("En_Core_Web_SM/", "en.core.web.sm/", "en-core-web-sm"):
            r = c.get(f"/simple/{raw}")
            assert r.status_code == 301 and r.headers["location"].endswith("/simple/en-core-web-sm/")
        assert c.get("/simple/no-such-project-xyz/").status_code == 404
        assert c.get("/health").json()["status"] == "ok"


@pytest.mark.slow
def test_file_head_range_and_cache_headers(world):
    sm = world.sm
    data = sm.wheel.read_bytes()
    with httpx.Client(base_url=world.url) as c:
        path = f"/files/{sm.wheel.name}"
        full = c.get(path)
        assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == sm.sha256
        assert "immutable" in full.headers["cache-control"] and full.headers["etag"]
        head = c.head(path)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
        part = c.get(path, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        tail = c.get(path, headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == data[-100:]
        assert c.get(path, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        meta = c.get(path + ".metadata")
        assert meta.status_code == 200 and meta.content == sm.metadata
        page = c.get("/simple/en-core-web-sm/", headers={"Accept": JSON_ACCEPT}).json()
        assert page["files"][0]["core-metadata"] == {"sha256": hashlib.sha256(sm.metadata).hexdigest()}


@pytest.mark.slow
def test_pypi_json_for_pip_tools_everywhere_it_looks(world):
    with httpx.Client(base_url=world.url) as c:
        for path in ("/pypi/en-core-web-sm/json", "/simple/pypi/en_core_web_sm/json", "/en-core-web-sm/json"):
            doc = c.get(path).json()
            files = doc["releases"]["3.8.50"]
            assert {f["url"] for f in files} == {
                f"{world.url}/files/en_core_web_sm-3.8.50-py3-none-any.whl",
                f"{world.url}/files/en_core_web_sm-3.8.50-py3-none-any.whl#sha256={world.sm.sha256}",
            }


# ----------------------------------------------------------------------------- clients
@pytest.mark.e2e
@pytest.mark.slow
def test_pip_and_uv_install_through_serve_and_second_install_moves_nothing(world, tmp_path, client_env):
    gh, url = world.gh, world.url + "/simple/"
    venv = make_venv(tmp_path / "a", env=client_env)
    venv.pip("install", "--index-url", url, "en_core_web_sm")
    venv.run("-c", "import spacy; spacy.load('en_core_web_sm')")
    before = upstream_bytes(gh)
    again = make_venv(tmp_path / "b", env=client_env)
    again.pip("install", "--index-url", url, "en_core_web_sm")
    uvenv = make_venv(tmp_path / "c", env=client_env)
    uvenv.uv_pip("install", "--index-url", url, "en_core_web_sm")
    uvenv.run("-c", "import spacy; spacy.load('en_core_web_sm')")
    assert upstream_bytes(gh) == before  # both second installs: 0 bytes from upstream


@pytest.mark.e2e
@pytest.mark.slow
def test_resolving_a_large_pipeline_moves_only_metadata(world, tmp_path, client_env):
    gh, md = world.gh, world.md
    before = upstream_bytes(gh)
    venv = make_venv(tmp_path / "v", env=client_env)
    report = tmp_path / "report.json"
    venv.pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report),
             "--index-url", world.url + "/simple/", "en_core_web_md")
    (item,) = json.loads(report.read_text())["install"]
    assert item["metadata"]["version"] == "3.8.50"
    moved = upstream_bytes(gh) - before
    assert moved <= 64 * 1024, moved
    assert md.wheel.stat().st_size > 20_000_000


@pytest.mark.e2e
@pytest.mark.slow
def test_pip_compile_through_serve_writes_the_hash_without_the_wheel(world, tmp_path, client_env):
    gh, trf = world.gh, world.trf
    wheelhouse = build_wheelhouse(tmp_path / "wh")
    (tmp_path / "requirements.in").write_text("en_core_web_trf\n")
    before = upstream_bytes(gh)
    run([sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--strip-extras",
         "--index-url", world.url + "/simple/", "--find-links", str(wheelhouse),
         "-o", "requirements.txt", "requirements.in"], env=client_env, cwd=tmp_path)
    text = (tmp_path / "requirements.txt").read_text()
    assert "en-core-web-trf==3.8.50" in text and f"--hash=sha256:{trf.sha256}" in text
    assert upstream_bytes(gh) - before < trf.wheel.stat().st_size  # metadata only, never the wheel


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["en-core-web-trf", "en_core_web_trf", "En.Core.Web.Trf"])
def test_dependency_confusion_is_impossible(world, tmp_path, client_env, spelling):
    venv = make_venv(tmp_path / "v", env=client_env)
    report = tmp_path / "r.json"
    venv.pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report),
             "--index-url", world.url + "/simple/", spelling)
    (item,) = json.loads(report.read_text())["install"]
    assert item["metadata"]["version"] == "3.8.50"
    out = venv.uv_pip("install", "--dry-run", "--no-deps", "--index-url", world.url + "/simple/", spelling)
    assert "999.9.9" not in out.stdout + out.stderr
    # the upstream was never even asked about a routed name
    assert not [line for line in world.pypi.requests if "core-web-trf" in line.lower().replace("_", "-").replace(".", "-")]


# ----------------------------------------------------------------------------- concurrency
@pytest.mark.slow
def test_fifty_clients_one_upstream_download(world, tmp_path):
    gh, md = world.gh, world.md
    # use a fresh server on a fresh cache so the padded wheel is uncached
    config = load_config(None, {}, upstream=world.pypi.url + "/simple/")
    server = build_server(config, cache_dir=tmp_path / "cache", api_url=gh.api_url, token=TOKEN)
    with run_app(create_app(server)) as url:
        httpx.get(f"{url}/simple/en-core-web-md/")  # warm the catalog
        n = len(gh.requests)

        async def one(client):
            h = hashlib.sha256()
            async with client.stream("GET", f"{url}/files/{md.wheel.name}") as r:
                assert r.status_code == 200
                async for chunk in r.aiter_bytes():
                    h.update(chunk)
            return h.hexdigest()

        async def all_of_them():
            limits = httpx.Limits(max_connections=60)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                return await asyncio.gather(*(one(client) for _ in range(50)))

        digests = asyncio.run(all_of_them())
    assert digests == [md.sha256] * 50
    downloads = [r for r in gh.requests[n:] if r.origin == "objects" and r.method == "GET"]
    assert len(downloads) == 1, downloads


# ----------------------------------------------------------------------------- secrets
@pytest.mark.e2e
@pytest.mark.slow
def test_private_source_key_never_leaks(world, tmp_path, client_env, caplog):
    caplog.set_level(logging.DEBUG)
    url = world.url + "/simple/"
    seen: list[str] = []
    with httpx.Client() as c:
        for path in ("prodigy/", "Prodigy/"):
            r = c.get(url + path, headers={"Accept": PIP_ACCEPT}, follow_redirects=True)
            seen.append(r.text + json.dumps(dict(r.headers)))
            assert r.status_code == 200
        r = c.get(world.url + "/files/prodigy-1.15.0-py3-none-any.whl")
        assert r.status_code == 200 and r.content == tiny_wheel("prodigy", "1.15.0")
        seen.append(json.dumps(dict(r.headers)))
        seen.append(c.get(world.url + "/pypi/prodigy/json").text)
    venv = make_venv(tmp_path / "v", env=client_env)
    venv.pip("install", "--index-url", url, "prodigy", "prodigy-addon")
    assert venv.installed()["prodigy"] == "1.15.0" and venv.installed()["prodigy-addon"] == "0.1.0"
    seen.append(httpx.get(url + "no-such-project-abc/").text)  # an error page, too
    (tmp_path / "requirements.in").write_text("prodigy\nprodigy-addon\n")
    run([sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--strip-extras",
         "--index-url", url, "-o", "pip-tools.txt", "requirements.in"], env=client_env, cwd=tmp_path)
    venv.uv_pip("compile", "--generate-hashes", "--index-url", url, "requirements.in",
                "-o", str(tmp_path / "uv.txt"), cwd=tmp_path)
    for lock in ("pip-tools.txt", "uv.txt"):
        text = (tmp_path / lock).read_text()
        assert "prodigy==1.15.0" in text and "prodigy-addon==0.1.0" in text and "--hash=sha256:" in text
        seen.append(text)
    seen.append(caplog.text)
    seen.extend(str(p) for p in world.cache.rglob("*"))
    for f in world.cache.rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            seen.append(f.read_bytes().decode("latin-1"))
    blob = "\n".join(seen)
    for secret in (LICENCE_KEY, quote(LICENCE_KEY, safe=""), base64.b64encode(f"{LICENCE_KEY}:".encode()).decode(), TOKEN):
        assert secret not in blob
