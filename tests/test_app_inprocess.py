"""The serve app in process (``httpx.ASGITransport``, no socket, no network): routing, content
negotiation, redirects, 404s, ETags, error bodies and /health. Fast and exact; the same
behaviour over real HTTP (uvicorn, the zero-copy protocol, real clients) is test_serve.py's."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from spacy_index.server.config import load_config
from tests.htmlparse import parse_anchors
from tests.servers import asgi_client, build_app
from tests.workflow_support import stub_wheel

JSON = "application/vnd.pypi.simple.v1+json"
HTML = "application/vnd.pypi.simple.v1+html"
PIP_ACCEPT = f"{JSON}, {HTML}; q=0.1, text/html; q=0.01"
NOT_ACCEPTABLE = "not acceptable: this index serves PEP 691 JSON and PEP 503 HTML\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict[str, bytes]:
    """A folder source's wheels: two versions of one project, one of another."""
    root = tmp_path_factory.mktemp("inprocess")
    wheels = dict(stub_wheel(n, v) for n, v in
                  (("Local.Tool", "1.0"), ("Local.Tool", "1.1"), ("other_pkg", "0.1")))
    for filename, data in wheels.items():
        (root / filename).write_bytes(data)
    return {"root": root, "wheels": wheels}  # type: ignore[dict-item]


def folder_app(folder: dict, tmp_path: Path) -> tuple:
    """``(server, app)`` whose only source is the folder: every name routes there
    (``projects = ["*"]``), so no upstream is ever asked; the upstream it has refuses
    connections, so a test that reached it would fail, not go to the network."""
    config_file = tmp_path / "serve.toml"
    config_file.write_text(
        "[server]\nspacy_models = false\n"
        f'[[source]]\nname = "local"\nkind = "folder"\npath = "{folder["root"]}"\n'
        'projects = ["*"]\n')
    config = load_config(config_file, {}, upstream="http://127.0.0.1:9/simple/")
    return build_app(config, cache_dir=tmp_path / "cache")


@pytest.fixture
def call(folder, tmp_path) -> Callable[[Callable[[httpx.AsyncClient], Awaitable[None]]], None]:
    """Run ``check(client)`` against a fresh :func:`folder_app`, inside its lifespan."""

    def run(check: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
        _server, app = folder_app(folder, tmp_path)

        async def main() -> None:
            async with asgi_client(app) as client:
                await check(client)

        asyncio.run(main())

    return run


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_health_names_the_sources(call):
    async def check(c: httpx.AsyncClient) -> None:
        r = await c.get("/health")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"status": "ok", "sources": ["local"]}

    call(check)


def test_root_page_lists_the_folder_in_json_and_html(call):
    async def check(c: httpx.AsyncClient) -> None:
        r = await c.get("/simple/", headers={"Accept": JSON})
        assert r.status_code == 200 and r.headers["content-type"] == JSON
        assert r.headers["vary"] == "Accept"
        assert r.json()["meta"] == {"api-version": "1.1"}
        # names as the folder spells them (wheel filenames), one per normalized name
        assert [p["name"] for p in r.json()["projects"]] == ["local_tool", "other_pkg"]
        h = await c.get("/simple/")  # no Accept: anything goes, and HTML is what all read
        assert h.status_code == 200 and h.headers["content-type"].startswith("text/html")
        assert [text for _attrs, text in parse_anchors(h.text).anchors] == ["local_tool", "other_pkg"]
        r = await c.get("/simple/", headers={"Accept": "application/xml"})
        assert (r.status_code, r.text) == (406, NOT_ACCEPTABLE)

    call(check)


@pytest.mark.parametrize(("accept", "ctype"), [
    (PIP_ACCEPT, JSON),
    ("application/vnd.pypi.simple.latest+json", JSON),
    (HTML, HTML),
    ("text/html", "text/html"),
    ("*/*", "text/html"),
    (None, "text/html"),
    (f"{JSON};q=0.5, {HTML}", HTML),
])
def test_project_page_negotiates_pep691(call, folder, accept, ctype):
    async def check(c: httpx.AsyncClient) -> None:
        headers = {"Accept": accept} if accept else {}
        r = await c.get("/simple/local-tool/", headers=headers)
        assert r.status_code == 200
        assert r.headers["content-type"].split(";")[0] == ctype
        assert r.headers["vary"] == "Accept"
        assert r.headers["cache-control"].startswith("max-age=")
        wanted = {n: sha(d) for n, d in folder["wheels"].items() if n.startswith("local_tool-")}
        if ctype == JSON:
            doc = r.json()
            assert doc["name"] == "local-tool"
            assert {f["filename"]: f["hashes"]["sha256"] for f in doc["files"]} == wanted
            assert all(f["url"] == f"../../files/{f['filename']}" for f in doc["files"])
        else:
            hrefs = [attrs["href"] for attrs, _text in parse_anchors(r.text).anchors]
            assert hrefs == [f"../../files/{n}#sha256={s}" for n, s in sorted(wanted.items())]

    call(check)


@pytest.mark.parametrize("accept", ["application/xml", "text/html;q=0, application/json",
                                    f"{JSON};q=0"])
def test_unacceptable_types_get_406_with_a_plain_body(call, accept):
    async def check(c: httpx.AsyncClient) -> None:
        r = await c.get("/simple/local-tool/", headers={"Accept": accept})
        assert r.status_code == 406
        assert r.text == NOT_ACCEPTABLE
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"

    call(check)


@pytest.mark.parametrize("raw", ["Local.Tool/", "local_tool/", "LOCAL--TOOL/", "local-tool"])
def test_other_spellings_redirect_to_the_normalized_name(call, raw):
    async def check(c: httpx.AsyncClient) -> None:
        r = await c.get(f"/simple/{raw}", headers={"Accept": JSON})
        assert r.status_code == 301
        assert r.headers["location"] == "/simple/local-tool/"

    call(check)


@pytest.mark.parametrize(("path", "body"), [
    ("/simple/no-such-project/", "no project named 'no-such-project'\n"),
    ("/simple/-bad-/", "not a valid project name\n"),
    ("/files/no_such-1.0-py3-none-any.whl", "no such file in this index\n"),
    ("/files/no_such-1.0-py3-none-any.whl.metadata", "no metadata for that file in this index\n"),
    ("/pypi/no-such-project/json", "no project named 'no-such-project'\n"),
])
def test_not_found_answers_say_what_and_are_not_cached(call, path, body):
    async def check(c: httpx.AsyncClient) -> None:
        r = await c.get(path, headers={"Accept": JSON})
        assert (r.status_code, r.text) == (404, body)
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"

    call(check)


def test_unknown_paths_are_404(call):
    async def check(c: httpx.AsyncClient) -> None:
        assert (await c.get("/nowhere/at/all")).status_code == 404
        r = await c.post("/files/local_tool-1.0-py3-none-any.whl")
        assert r.status_code == 405

    call(check)


def test_page_etag_and_304(call):
    async def check(c: httpx.AsyncClient) -> None:
        r = await c.get("/simple/local-tool/", headers={"Accept": JSON})
        etag = r.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')
        for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            again = await c.get("/simple/local-tool/", headers={"Accept": JSON, "If-None-Match": tag})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag and again.headers["vary"] == "Accept"
        other = await c.get("/simple/local-tool/", headers={"Accept": JSON, "If-None-Match": '"x"'})
        assert other.status_code == 200 and other.content == r.content
        html = await c.get("/simple/local-tool/", headers={"Accept": "text/html"})
        assert html.headers["etag"] != etag  # one ETag per representation

    call(check)


def test_files_whole_head_range_and_304(call, folder):
    name = "local_tool-1.1-py3-none-any.whl"
    data = folder["wheels"][name]

    async def check(c: httpx.AsyncClient) -> None:
        r = await c.get(f"/files/{name}")
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-type"] == "application/zip"
        assert r.headers["etag"] == f'"{sha(data)}"'
        assert r.headers["accept-ranges"] == "bytes"
        head = await c.head(f"/files/{name}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(data))
        part = await c.get(f"/files/{name}", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        tail = await c.get(f"/files/{name}", headers={"Range": "bytes=-5"})
        assert tail.status_code == 206 and tail.content == data[-5:]
        over = await c.get(f"/files/{name}", headers={"Range": f"bytes={len(data)}-"})
        assert over.status_code == 416 and over.headers["content-range"] == f"bytes */{len(data)}"
        stale = await c.get(f"/files/{name}", headers={"Range": "bytes=0-0", "If-Range": '"x"'})
        assert stale.status_code == 200 and stale.content == data
        cached = await c.get(f"/files/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert cached.status_code == 304 and cached.content == b""

    call(check)


def test_wheel_metadata_is_served_beside_the_wheel(call, folder):
    name = "other_pkg-0.1-py3-none-any.whl"

    async def check(c: httpx.AsyncClient) -> None:
        page = (await c.get("/simple/other-pkg/", headers={"Accept": JSON})).json()
        (f,) = page["files"]
        r = await c.get(f"/files/{name}.metadata")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert b"Name: other_pkg\nVersion: 0.1\n" in r.content
        assert r.headers["etag"] == f'"{sha(r.content)}"'
        assert f["core-metadata"] is True  # not read yet: its hash is not known
        again = (await c.get("/simple/other-pkg/", headers={"Accept": JSON})).json()
        assert again["files"][0]["core-metadata"] == {"sha256": sha(r.content)}

    call(check)


def test_pypi_json_api(call, folder):
    async def check(c: httpx.AsyncClient) -> None:
        for path in ("/pypi/local-tool/json", "/simple/pypi/local-tool/json", "/local-tool/json"):
            r = await c.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"] == "application/json"
            assert "vary" not in r.headers  # one representation: nothing to vary on
            doc = r.json()
            assert doc["info"]["name"] == "local_tool"  # as the wheels spell it
            assert doc["info"]["version"] == "1.1"
            assert set(doc["releases"]) == {"1.0", "1.1"}
            assert all(u["url"].startswith("http://test/files/") for u in doc["urls"])

    call(check)


def test_lifespan_shutdown_closes_the_server(folder, tmp_path, monkeypatch):
    """The app's lifespan is what closes the server's clients (uvicorn enters it; so does
    asgi_client), once, at shutdown."""
    server, app = folder_app(folder, tmp_path)
    closed: list[Path] = []
    real = server.aclose

    async def aclose() -> None:
        closed.append(tmp_path)
        await real()

    monkeypatch.setattr(server, "aclose", aclose)

    async def main() -> None:
        async with asgi_client(app) as c:
            assert (await c.get("/health")).status_code == 200
            assert closed == []

    asyncio.run(main())
    assert closed == [tmp_path]
