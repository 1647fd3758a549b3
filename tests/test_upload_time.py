"""PEP 700 ``upload-time`` on every file of every output.

- Offline builds date each file by its release: the bundled snapshot records the tag date of
  every release of the recorded inventory (``tools/snapshot_from_fixture.py``).
- Live builds, live snapshots and ``serve`` use each asset's own ``created_at``.
- uv's ``--exclude-newer`` (JSON or HTML) and pip's ``--uploaded-prior-to`` (JSON) then pick the
  newest en_core_web_sm published before a date, against a static host of an offline build
  and against ``spacy-index serve``.

Dates used (real, from the tags of explosion/spacy-models):
en_core_web_sm 3.7.0 2023-07-26T12:18:29Z, 3.7.1 2023-11-06T14:28:34Z, 3.8.0 2024-09-25T07:14:09Z.
Cut-offs: 2024-01-01 (between 3.7.1 and 3.8.0) -> 3.7.1; 2023-10-01 (between 3.7.0 and
3.7.1) -> 3.7.0; none -> 3.8.0.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import importlib.util
import io
import json
import re
import socketserver
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from spacy_index.api import fetch_catalog
from spacy_index.cli import main
from spacy_index.errors import SnapshotError
from spacy_index.model import parse_timestamp
from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from spacy_index.sources import snapshot as snapshots
from tests.clients import clean_env, make_venv, run, serve_directory, uv_bin
from tests.fakegithub import FakeGitHub
from tests.htmlparse import parse_anchors
from tests.servers import run_app, serve_http
from tests.wheels import meta_archive

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "src" / "spacy_index" / "data" / "spacy-models.snapshot.json.gz"
FIXTURE = ROOT / "tests" / "data" / "spacy-models"  # the in-repo copy of the recorded inventory

#: the tag dates of these en_core_web_sm releases (real), as PEP 700 writes them
SM_DATES = {
    "3.7.0": "2023-07-26T12:18:29.000000Z",
    "3.7.1": "2023-11-06T14:28:34.000000Z",
    "3.8.0": "2024-09-25T07:14:09.000000Z",
}
#: cut-off -> the version a client must pick (None: no cut-off)
CUTOFFS = [
    ("2024-01-01T00:00:00Z", "3.7.1"),
    ("2023-10-01T00:00:00Z", "3.7.0"),
    (None, "3.8.0"),
]
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_JSON_ACCEPT = re.compile(r"application/vnd\.pypi\.simple\.(v1|latest)\+json")


def _json(path: Path):
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- helpers
class _NegotiatingHandler(http.server.SimpleHTTPRequestHandler):
    """docs/static-hosting.md's nginx ``map``, in Python: a directory URL gets ``index.json``
    (as ``application/vnd.pypi.simple.v1+json``) when the client lists the JSON form, else
    ``index.html``; always ``Vary: Accept``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        wants_json = bool(_JSON_ACCEPT.search(self.headers.get("Accept", "")))
        self.server.served.append((self.path, "json" if wants_json else "html"))  # type: ignore[attr-defined]
        index_json = Path(path) / "index.json"
        if self.path.split("?")[0].endswith("/") and wants_json and index_json.is_file():
            body = index_json.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", JSON_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)
        return super().send_head()

    def end_headers(self):
        self.send_header("Vary", "Accept")
        super().end_headers()


@contextlib.contextmanager
def negotiating_server(root: Path) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    handler = lambda *a, **kw: _NegotiatingHandler(*a, directory=str(root), **kw)  # noqa: E731
    with serve_http(handler) as httpd:
        httpd.served = []  # type: ignore[attr-defined]
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.served  # type: ignore[attr-defined]


class _RefusingProxy(socketserver.StreamRequestHandler):
    """An HTTPS proxy that refuses every CONNECT (403) and records what was asked."""

    def handle(self):
        line = self.rfile.readline().decode("latin-1").strip()
        self.server.asked.append(line)  # type: ignore[attr-defined]
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@contextlib.contextmanager
def refusing_proxy() -> Iterator[tuple[str, list[str]]]:
    with serve_http(_RefusingProxy, name="refusing-proxy") as server:
        server.asked = []  # type: ignore[attr-defined]
        yield f"http://127.0.0.1:{server.server_address[1]}", server.asked  # type: ignore[attr-defined]


def uv_pick(index_url: str, cutoff: str | None) -> str:
    """``uv pip compile --no-deps`` of en_core_web_sm: the version uv chooses (no spaCy
    needed, no file downloaded)."""
    args = [uv_bin(), "pip", "compile", "--no-deps", "--no-header", "--no-annotate",
            "--python", sys.executable, "--index-url", index_url, "-"]
    if cutoff:
        args[3:3] = ["--exclude-newer", cutoff]
    out = run(args, env=clean_env(), input="en_core_web_sm\n").stdout
    (line,) = [x for x in out.splitlines() if x.startswith("en-core-web-sm==")]
    return line.removeprefix("en-core-web-sm==")


def pip_index_pick(venv, index_url: str, cutoff: str | None) -> str:
    """``pip index versions``: the finder's choice, with no download at all."""
    args = ["index", "versions", "--index-url", index_url, "en_core_web_sm"]
    if cutoff:
        args += ["--uploaded-prior-to", cutoff]
    out = venv.pip(*args).stdout
    match = re.search(r"^en_core_web_sm \(([^)]+)\)", out, re.M)
    assert match, out
    return match.group(1)


@pytest.fixture(scope="module")
def pip_venv(tmp_path_factory):
    venv = make_venv(tmp_path_factory.mktemp("pip-venv") / "v", with_spacy=False)
    if "--uploaded-prior-to" not in venv.pip("install", "--help").stdout:
        pytest.skip("this pip has no --uploaded-prior-to (pip >= 26 does)")
    return venv


# ----------------------------------------------------------------------------- snapshot
def _load_tool():
    spec = importlib.util.spec_from_file_location("snapshot_from_fixture",
                                                  ROOT / "tools" / "snapshot_from_fixture.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_snapshot_is_the_tools_output_with_each_release_dated():
    tool = _load_tool()
    assert snapshots.dumps(tool.build(FIXTURE)) == BUNDLED.read_bytes()
    doc = json.loads(gzip.decompress(BUNDLED.read_bytes()))
    assert doc["format"] == 1
    raw = {r["tag_name"]: r for r in tool.read_releases(FIXTURE)}
    assert len(doc["releases"]) == len(raw) == 1099
    for r in doc["releases"]:
        assert parse_timestamp(r["date"]) == parse_timestamp(raw[r["tag"]]["published_at"])
        # no sizes (approximate in the inventory), no per-asset dates (copies of the tag date)
        assert all(a["size"] is None and a["upload_time"] is None for a in r["assets"])
    by_tag = {r["tag"]: r for r in doc["releases"]}
    for version, date in SM_DATES.items():
        assert by_tag[f"en_core_web_sm-{version}"]["date"] == date
    # load -> dump is byte-identical (deterministic, and the per-asset nulls stay null)
    assert snapshots.dumps(snapshots.load()) == BUNDLED.read_bytes()


def test_snapshot_without_dates_still_loads_and_dates_apply_per_release(tmp_path):
    doc = json.loads(gzip.decompress(BUNDLED.read_bytes()))
    for r in doc["releases"]:
        del r["date"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    snap = snapshots.load(old)
    assert all(a.upload_time is None for r in snap.releases for a in r.assets)
    result = fetch_catalog(offline=True, snapshot=old)
    assert result.catalog.counts()[1] == 1921
    assert all(d.upload_time is None for d in result.catalog.files)
    # a date on two releases (wheel + sdist each), and one asset with a time of its own
    first, second = [i for i, r in enumerate(doc["releases"]) if len(r["assets"]) == 2][:2]
    doc["releases"][first]["date"] = "2020-01-02T03:04:05.000000Z"
    doc["releases"][second]["date"] = "2021-01-01T00:00:00Z"
    doc["releases"][second]["assets"][0]["upload_time"] = "2021-06-01T00:00:00.000000Z"
    snap = snapshots.from_json(doc)
    one, two = snap.releases[first], snap.releases[second]
    assert [a.upload_time for a in one.assets] == [parse_timestamp("2020-01-02T03:04:05Z")] * 2
    assert [a.upload_time for a in two.assets] == [
        parse_timestamp("2021-06-01T00:00:00Z"), parse_timestamp("2021-01-01T00:00:00Z")
    ]
    again = snapshots.to_json(snap)["releases"]
    assert again[first]["date"] == "2020-01-02T03:04:05.000000Z"
    assert again[second]["date"] == "2021-01-01T00:00:00.000000Z"
    assert [a["upload_time"] for a in again[second]["assets"]] == [
        "2021-06-01T00:00:00.000000Z", None
    ]
    assert [r["date"] for r in again].count(None) == len(again) - 2
    with pytest.raises(SnapshotError):
        snapshots.from_json({**doc, "releases": [{**doc["releases"][0], "date": 5}]})


# ----------------------------------------------------------------------------- offline build
@pytest.fixture(scope="module")
def offline_full(tmp_path_factory):
    out = tmp_path_factory.mktemp("offline-all") / "public"
    env = {"SPACY_INDEX_CACHE_DIR": str(out.parent / "cache")}
    assert main(["build", "--offline", "--out", str(out), "-q"], env=env) == 0
    return out


@pytest.fixture(scope="module")
def offline_sm(tmp_path_factory):
    out = tmp_path_factory.mktemp("offline-sm") / "public"
    env = {"SPACY_INDEX_CACHE_DIR": str(out.parent / "cache")}
    assert main(["build", "--offline", "--only", "en_core_web_sm", "--out", str(out), "-q"],
                env=env) == 0
    return out


def test_offline_build_dates_every_file_in_every_output(offline_full):
    pages = sorted((offline_full / "simple").glob("*/index.json"))
    assert len(pages) > 50
    total = 0
    for page in pages:
        doc = _json(page)
        # sizes stay unknown, so api-version stays 1.0 (1.1 makes size mandatory); upload-time
        # is an additional key there, which PEP 691 clients must ignore if they don't read it
        assert doc["meta"]["api-version"] == "1.0"
        html = parse_anchors((page.parent / "index.html").read_text()).anchors
        assert [t for _, t in html] == [f["filename"] for f in doc["files"]]
        for f, (attrs, _text) in zip(doc["files"], html, strict=True):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", f["upload-time"]), f
            assert "size" not in f
            assert attrs["data-upload-time"] == f["upload-time"]
            total += 1
        pypi = _json(offline_full / "pypi" / page.parent.name / "json")
        times = {f["filename"]: f["upload-time"] for f in doc["files"]}
        for f in [f for fs in pypi["releases"].values() for f in fs]:  # the hashed files
            assert f["upload_time_iso_8601"] == times[f["filename"]]
    assert total == 1921
    flat = parse_anchors((offline_full / "find-links.html").read_text()).anchors
    assert len(flat) == 1921 and all("data-upload-time" in a for a, _ in flat)


def test_offline_upload_time_is_the_release_date(offline_sm):
    doc = _json(offline_sm / "simple" / "en-core-web-sm" / "index.json")
    for version, date in SM_DATES.items():
        mine = [f for f in doc["files"] if f["filename"].startswith(f"en_core_web_sm-{version}")]
        assert len(mine) == 2  # wheel and sdist share the release's date
        assert {f["upload-time"] for f in mine} == {date}


# ----------------------------------------------------------------------------- clients, static
@pytest.mark.e2e
@pytest.mark.parametrize("form", ["json", "html"])
def test_uv_exclude_newer_on_a_static_offline_build(offline_sm, form):
    """uv reads ``upload-time`` from the JSON form and ``data-upload-time`` from the HTML one
    (a host without content negotiation, e.g. GitHub Pages)."""
    server = negotiating_server if form == "json" else serve_directory
    with server(offline_sm) as srv:
        url = srv[0] if form == "json" else srv.url
        for cutoff, expected in CUTOFFS:
            assert uv_pick(f"{url}/simple/", cutoff) == expected, cutoff
        if form == "json":
            assert ("/simple/en-core-web-sm/", "json") in srv[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_pip_uploaded_prior_to_on_a_static_offline_build(offline_sm, pip_venv):
    """pip reads ``upload-time`` from the JSON form only (an HTML-only host gives it none).

    Offline builds link the files to github.com, and ``pip install --dry-run`` prepares the
    chosen file (it needs its metadata; offline builds have no PEP 658 sidecars). So the
    install is run through an HTTPS proxy that refuses every CONNECT: pip chooses, tries to
    fetch the chosen wheel, and stops there, naming it. No byte of a wheel is downloaded and
    nothing leaves the machine. ``pip index versions`` shows the same choice with no download.
    """
    with negotiating_server(offline_sm) as (url, served), refusing_proxy() as (proxy, asked):
        index = f"{url}/simple/"
        for cutoff, expected in CUTOFFS:
            assert pip_index_pick(pip_venv, index, cutoff) == expected, cutoff
        env = clean_env(HTTPS_PROXY=proxy, https_proxy=proxy, HTTP_PROXY=None, http_proxy=None,
                        ALL_PROXY=None, all_proxy=None, NO_PROXY="127.0.0.1,localhost",
                        no_proxy="127.0.0.1,localhost")
        for cutoff, expected in CUTOFFS:
            args = ["install", "--dry-run", "--no-deps", "--retries", "0", "--index-url", index,
                    "en_core_web_sm"]
            if cutoff:
                args += ["--uploaded-prior-to", cutoff]
            proc = pip_venv.pip(*args, env=env, check=False)
            output = proc.stdout + proc.stderr
            assert proc.returncode != 0, output
            named = set(re.findall(r"en_core_web_sm-([0-9][^/\s]*?)-py3-none-any\.whl", output))
            assert named == {expected}, output
        assert asked and all(line.startswith("CONNECT github.com:443 ") for line in asked), asked
        assert ("/simple/en-core-web-sm/", "json") in served


# ----------------------------------------------------------------------------- live: build, snapshot
def _dated_releases(files: dict[str, dict[str, str]], published: str) -> list[dict]:
    """Releases whose assets have their own ``created_at``; every release is published at
    ``published`` (later), so only the assets' dates can give the expected choices."""
    return [
        {"tag_name": tag, "created_at": published, "published_at": published,
         "assets": [{"name": name, "created_at": when} for name, when in assets.items()]}
        for tag, assets in files.items()
    ]


PUBLISHED = "2025-01-15T10:00:00Z"


def test_live_build_and_live_snapshot_use_each_assets_created_at(tmp_path, wheel_bytes):
    def later(when: str) -> str:  # the sdist was uploaded an hour after the wheel
        moved = parse_timestamp(when) + timedelta(hours=1)  # type: ignore[operator]
        return moved.strftime("%Y-%m-%dT%H:%M:%SZ")

    assets = {
        f"en_core_web_sm-{v}": {
            f"en_core_web_sm-{v}-py3-none-any.whl": d.replace(".000000", ""),
            f"en_core_web_sm-{v}.tar.gz": later(d),
        }
        for v, d in SM_DATES.items()
    }
    with FakeGitHub(releases=_dated_releases(assets, PUBLISHED), archive=meta_archive(())) as gh:
        for tag, names in assets.items():
            for name in names:
                gh.set_asset_content(tag, name, wheel_bytes)
        env = {"GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "cache")}
        snap = tmp_path / "snap.json.gz"
        assert main(["snapshot", "--out", str(snap)], env=env) == 0
        live = tmp_path / "live"
        assert main(["build", "--no-snapshot", "--out", str(live), "-q"], env=env) == 0
    offline = tmp_path / "offline"
    assert main(["build", "--offline", "--snapshot", str(snap), "--out", str(offline), "-q"],
                env=env) == 0
    expected = {name: parse_timestamp(when) for names in assets.values() for name, when in names.items()}
    doc = _json(live / "simple" / "en-core-web-sm" / "index.json")
    assert {f["filename"]: parse_timestamp(f["upload-time"]) for f in doc["files"]} == expected
    # the offline build from the live snapshot shows exactly what the live build shows
    assert (offline / "simple" / "en-core-web-sm" / "index.json").read_bytes() == (
        live / "simple" / "en-core-web-sm" / "index.json").read_bytes()
    written = json.loads(gzip.decompress(snap.read_bytes()))
    for r in written["releases"]:
        # the release's date: the earliest upload of its assets (the wheel's); the sdist keeps
        # its own time
        names = assets[r["tag"]]
        assert parse_timestamp(r["date"]) == min(parse_timestamp(t) for t in names.values())
        own = {a["name"]: a["upload_time"] for a in r["assets"]}
        assert own[f"{r['tag']}-py3-none-any.whl"] is None
        assert parse_timestamp(own[f"{r['tag']}.tar.gz"]) == expected[f"{r['tag']}.tar.gz"]


# ----------------------------------------------------------------------------- clients, serve
@pytest.fixture(scope="module")
def served(tmp_path_factory, model_wheels):
    """``spacy-index serve`` in-process, in front of a fake GitHub holding three real
    en_core_web_sm wheels whose assets were created at the real tag dates (the releases
    themselves say they were published later)."""
    root = tmp_path_factory.mktemp("serve-upload-time")
    pkgs = {v: model_wheels(version=v) for v in SM_DATES}
    assets = {f"en_core_web_sm-{v}": {p.wheel.name: SM_DATES[v].replace(".000000", "")}
              for v, p in pkgs.items()}
    (root / "pypi" / "simple").mkdir(parents=True)  # nothing else is ever asked for
    with FakeGitHub(releases=_dated_releases(assets, PUBLISHED),
                    archive=meta_archive(pkgs.values())) as gh, \
            serve_directory(root / "pypi") as upstream:
        for v, p in pkgs.items():
            gh.set_asset_content(f"en_core_web_sm-{v}", p.wheel.name, p.wheel.read_bytes())
        # no prefetch: the test shows that the clients' own requests never reach the upstream
        # (the pipeline's metadata would prefetch spacy's page from it)
        config = replace(load_config(None, {}, upstream=upstream.url + "/simple/"), prefetch=0)
        server = build_server(config, cache_dir=root / "cache", api_url=gh.api_url, token=None,
                              offline_snapshot=False)
        with run_app(create_app(server)) as url:
            yield {"url": url, "pkgs": pkgs, "upstream": upstream}


@pytest.mark.e2e
@pytest.mark.slow
def test_serve_pages_carry_the_assets_created_at(served):
    import httpx

    with httpx.Client(base_url=served["url"]) as c:
        doc = c.get("/simple/en-core-web-sm/", headers={"Accept": JSON_TYPE}).json()
        page = parse_anchors(c.get("/simple/en-core-web-sm/", headers={"Accept": "text/html"}).text)
    times = {f["filename"]: f["upload-time"] for f in doc["files"]}
    assert times == {p.wheel.name: SM_DATES[v] for v, p in served["pkgs"].items()}
    assert {t: a["data-upload-time"] for a, t in page.anchors} == times


@pytest.mark.e2e
@pytest.mark.slow
def test_uv_and_pip_pick_by_upload_time_through_serve(served, pip_venv, tmp_path):
    index = served["url"] + "/simple/"
    for cutoff, expected in CUTOFFS:
        assert uv_pick(index, cutoff) == expected, cutoff
        assert pip_index_pick(pip_venv, index, cutoff) == expected, cutoff
        # through serve, pip resolves for real: PEP 658 metadata, files on loopback
        report = tmp_path / f"report-{expected}.json"
        args = ["install", "--dry-run", "--no-deps", "--quiet", "--report", str(report),
                "--index-url", index, "en_core_web_sm"]
        if cutoff:
            args += ["--uploaded-prior-to", cutoff]
        pip_venv.pip(*args)
        (item,) = _json(report)["install"]
        assert item["metadata"]["version"] == expected
        assert item["download_info"]["url"].startswith(served["url"] + "/files/")
    assert not [r for r in served["upstream"].requests if "/simple/" in r]
