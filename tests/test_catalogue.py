"""The catalogue page: what it shows, that it agrees with `install`, escaping, determinism,
relative links, and serve's routes, cache columns and hit/miss counters. (The same pages in a
real browser: tests/test_catalogue_browser.py.)"""

from __future__ import annotations

import hashlib
import io
import random
import re
import zipfile
from datetime import datetime, timezone
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version

from spacy_index.catalog import Catalog
from spacy_index.errors import NoCompatibleVersion, SpacyIndexError
from spacy_index.install import (
    Environment,
    choose,
    resolve_spacy,
    split_model,
)
from spacy_index.model import Distribution, ModelMeta
from spacy_index.render import catalogue, html, pep691
from spacy_index.render.tree import index_files
from spacy_index.server.stats import CacheStats
from spacy_index.server.wiring import create_app
from spacy_index.sources.spacy_models import meta_from_json

from .browser import static_server
from .catalogue_support import catalogue_server, offline_catalog
from .servers import run_app

NO_ENV = Environment("", None, {}, False)


class Page(HTMLParser):
    """Tags, attributes and text of a page (stdlib parser, independent of the renderer)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: list[dict[str, str | None]] = []
        self._in_tbody = False

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        self.tags.append((tag, d))
        if tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.rows.append(d)

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_tbody = False

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)

    def links(self) -> list[str]:
        return [a[k] for t, a in self.tags for k in ("href", "src") if a.get(k) is not None
                and t in ("a", "link", "script")]


def parse(body: bytes | str) -> Page:
    p = Page()
    p.feed(body.decode() if isinstance(body, bytes) else body)
    p.close()
    return p


@pytest.fixture(scope="module")
def offline():
    catalog = offline_catalog()
    return catalog, index_files(catalog)


# --------------------------------------------------------------------------- static build
def test_root_index_lists_every_pipeline_and_leaves_simple_untouched(offline):
    catalog, files = offline
    page = parse(files["index.html"])
    assert len(page.rows) == len(catalog.projects) == 104
    for row, project in zip(page.rows, catalog.projects.values(), strict=True):
        assert row["data-lang"] == project.display_name.split("_")[0]
    targets = [h for h in page.links() if h.startswith("catalogue/")]
    assert len(targets) == 104 and all(t in files for t in targets)
    assert {"index.html", "catalogue.js", "catalogue.css"} <= set(files)
    # the PEP 503 tree is what it was: same bytes as the renderers give
    assert files["simple/index.html"] == html.root_page(pep691.root_dict(catalog)).encode()
    assert not any(p.startswith("simple/") and "catalogue" in p for p in files)
    assert "104 pipelines" in page.all_text and "1,921 files" in page.all_text


def test_en_core_web_sm_row_and_page(offline):
    catalog, files = offline
    text = files["index.html"].decode()
    row = next(line for line in text.splitlines() if 'catalogue/en-core-web-sm.html"' in line)
    cells = parse(row)
    assert cells.rows == [] and "en_core_web_sm" in cells.all_text
    assert "3.8.0" in cells.all_text and "≈12 MB" in cells.all_text
    assert "3.0\u20133.8" in cells.all_text  # the minors install finds a wheel for
    assert "English pipeline optimized for CPU" in cells.all_text
    assert 'data-lang="en"' in row and 'data-spacy="3.0 3.1 3.2 3.3 3.4 3.5 3.6 3.7 3.8"' in row

    page = parse(files["catalogue/en-core-web-sm.html"])
    body = page.all_text
    sm = catalog.projects["en-core-web-sm"]
    for d in sm.files:  # every file: its name, sha256, date
        assert d.filename in body
        if d.sha256:
            assert d.sha256 in body
    wheel = next(d for d in sm.files if d.filename == "en_core_web_sm-3.8.0-py3-none-any.whl")
    sdist = next(d for d in sm.files if d.filename == "en_core_web_sm-3.8.0.tar.gz")
    url = catalogue.URL_PLACEHOLDER  # catalogue.js writes the real one
    for line in (
        f"pip install --index-url {url} en_core_web_sm==3.8.0",
        f"uv add --index spacy-models={url} en_core_web_sm==3.8.0",
        'priority = "explicit"',
        "explicit = true",
        'include_packages = ["en-core-web-sm"]',
        f"spacy-index install --index {url} en_core_web_sm==3.8.0",
        f"en-core-web-sm==3.8.0 --hash=sha256:{wheel.sha256} --hash=sha256:{sdist.sha256}",
        f"en-core-web-sm==3.8.0 --hash=sha256:{wheel.sha256}",
        "<3.9.0,>=3.8.0 (3.8)",
        wheel.upload_time.strftime("%Y-%m-%d"),
    ):
        assert line in body, line
    # one copy button per snippet, each naming an element that exists
    ids = {a.get("id") for _, a in page.tags}
    buttons = [a for t, a in page.tags if t == "button"]
    assert len(buttons) >= 7 and all(b["data-copy"] in ids for b in buttons)
    assert all("hidden" in b for b in buttons)  # shown by catalogue.js only


def test_compatibility_is_installs_rule(offline):
    """Every (pipeline, spaCy X.Y) the catalogue offers is what `install --spacy X.Y` picks,
    and a spaCy series it does not offer is one `install` refuses."""
    catalog, _ = offline
    cat = catalogue.build_catalogue(catalog)
    checked = 0
    for p in cat.pipelines:
        for minor, version in p.picks.items():
            got = choose(catalog, p.display_name, resolve_spacy(str(minor), NO_ENV))
            assert got.dist.version == version, (p.name, minor)
            checked += 1
    assert checked > 600
    rng = random.Random(17)
    sample = rng.sample([p for p in cat.pipelines if p.minors], 12)
    for p in sample:
        missing = [m for m in cat.minors if m not in p.picks]
        if missing:
            with pytest.raises(NoCompatibleVersion):
                choose(catalog, p.display_name, resolve_spacy(str(missing[-1]), NO_ENV))
    assert Version("3.9") not in cat.minors  # no pipeline for a spaCy that has none
    assert cat.minors[-1] == Version("3.8")


def test_output_is_deterministic(offline):
    catalog, files = offline
    shuffled = list(catalog.files)
    random.Random(3).shuffle(shuffled)
    again = Catalog.from_distributions(shuffled, source=catalog.source,
                                       snapshot_date=catalog.snapshot_date)
    assert catalogue.catalogue_files(again) == {k: files[k] for k in catalogue.catalogue_files(catalog)}


def test_every_link_is_relative_and_resolves_inside_the_tree(offline):
    _, files = offline
    pages = [p for p in files if p == "index.html" or p.startswith("catalogue/")]
    assert len(pages) == 105
    base = "http://h/some/prefix/"
    for page in pages:
        for link in parse(files[page]).links():
            if link.startswith("https://github.com/"):
                continue  # a file's download URL (the default static index links upstream)
            assert not urlsplit(link).scheme or link.startswith("data:"), (page, link)
            if link.startswith("data:"):
                continue
            assert not link.startswith("/"), (page, link)
            target = urljoin(base + page, link)
            assert target.startswith(base), (page, link)
            path = target[len(base):].split("#")[0]
            if path.endswith("/"):
                path += "index.html"
            assert path in files, (page, link)


def test_mirror_links_point_at_the_mirrored_files():
    from spacy_index.render.tree import mirror_links

    d = _dist("3.8.0", size=12_345_678)
    files = index_files(Catalog.from_distributions([d]), mirror_links())
    page = parse(files["catalogue/en-core-web-sm.html"])
    assert "../files/en_core_web_sm-3.8.0-py3-none-any.whl" in page.links()
    assert 'title="12,345,678 bytes">12.3 MB' in files["index.html"].decode()


def test_meta_reaches_the_catalogue():
    catalog = offline_catalog()
    wheel = next(d for d in catalog.files if d.filename == "en_core_web_sm-3.8.0-py3-none-any.whl")
    assert wheel.meta is not None and wheel.meta.description.startswith("English pipeline")
    assert wheel.meta.size_text == "12 MB"
    # the bundled snapshot records each meta file's licence
    assert wheel.meta.license == "MIT"
    assert "<td>MIT</td>" in catalogue.catalogue_files(catalog)["index.html"].decode()
    meta = meta_from_json("en_core_web_sm-3.8.0", {"lang": "en", "name": "core_web_sm",
                                                   "version": "3.8.0", "license": "MIT"})
    assert meta is not None and meta.license == "MIT"
    cat = Catalog.from_distributions([_dist("3.8.0", meta=meta)])
    assert "<td>MIT</td>" in catalogue.catalogue_files(cat)["index.html"].decode()


# --------------------------------------------------------------------------- escaping
def _dist(version: str, *, meta: ModelMeta | None = None, url: str | None = None,
          size: int | None = None, sha: str | None = "ab" * 32) -> Distribution:
    fn = f"en_core_web_sm-{version}-py3-none-any.whl"
    return Distribution(
        project="en-core-web-sm", filename=fn, url=url or f"https://example.test/{fn}",
        version=Version(version), kind="wheel", sha256=sha, size=size,
        upload_time=datetime(2024, 1, 2, tzinfo=timezone.utc),
        requires_dist=("spacy>=3.8.0,<3.9.0",), meta=meta,
    )


def _structure(body: bytes) -> list[tuple[str, tuple[str, ...]]]:
    return [(t, tuple(sorted(a))) for t, a in parse(body).tags]


nasty = st.text(alphabet=st.sampled_from([*"<>\"&'/%\r\n =#?`", "\u202e", "é", "a"]),
                min_size=1, max_size=24)


@settings(max_examples=60, deadline=None)
@given(description=nasty, license=nasty, size_text=nasty, url_tail=nasty, source=nasty)
def test_nothing_from_upstream_reaches_a_page_unescaped(description, license, size_text,
                                                        url_tail, source):
    def pages(desc, lic, size, tail, src):
        meta = ModelMeta(tag="en_core_web_sm-3.8.0", project="en_core_web_sm", version="3.8.0",
                         spacy_version=">=3.8.0,<3.9.0", description=desc, license=lic,
                         size_text=size)
        cat = Catalog.from_distributions(
            [_dist("3.8.0", meta=meta, url="https://example.test/" + tail)], source=src)
        return catalogue.catalogue_files(cat)

    evil = pages(description, license, size_text, url_tail, source)
    plain = pages("a", "a", "a", "a", "a")
    for path in ("index.html", "catalogue/en-core-web-sm.html"):
        # any unescaped < > " ' in a value would add or change tags or attributes
        assert _structure(evil[path]) == _structure(plain[path]), path
        text = parse(evil[path]).all_text
        assert description.replace("\r\n", "\n").replace("\r", "\n") in text.replace("\r\n", "\n").replace("\r", "\n")


def test_a_non_http_url_is_not_a_link():
    cat = Catalog.from_distributions([_dist("3.8.0", url="javascript:alert(1)")])
    page = catalogue.catalogue_files(cat)["catalogue/en-core-web-sm.html"].decode()
    assert "javascript:" not in page.replace("en_core_web_sm", "")


# --------------------------------------------------------------------------- install NAME==VER
def test_install_accepts_a_pinned_version(offline):
    catalog, _ = offline
    target = resolve_spacy("3.7", NO_ENV)
    assert split_model("en_core_web_sm") == ("en_core_web_sm", None)
    assert str(split_model("en_core_web_sm==3.7.0")[1]) == "==3.7.0"
    assert choose(catalog, "en_core_web_sm==3.7.0", target).dist.version == Version("3.7.0")
    assert choose(catalog, "en_core_web_sm", target).dist.version == Version("3.7.1")
    with pytest.raises(NoCompatibleVersion, match=re.escape("en_core_web_sm==3.8.0")):
        choose(catalog, "en_core_web_sm==3.8.0", target)
    with pytest.raises(SpacyIndexError, match=re.escape("no hashed wheel of en_core_web_sm matches ==9.9")):
        choose(catalog, "en_core_web_sm==9.9", target)


# --------------------------------------------------------------------------- serve
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = catalogue_server(tmp_path_factory.mktemp("catalogue-serve") / "cache")
    with run_app(create_app(server)) as url:
        yield url, server


@pytest.mark.slow
def test_serve_routes_headers_and_redirects(served):
    url, _ = served
    for path in ("/", "/index.html", "/catalogue/en-core-web-sm.html"):
        r = httpx.get(url + path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in r.text and "<style" not in r.text and " style=" not in r.text
    root = httpx.get(url + "/").text
    assert len(parse(root).rows) == 104
    assert f"{url}/simple/" in root  # the server knows its own URL
    r = httpx.get(url + "/catalogue/En_Core_Web_SM.html")
    assert (r.status_code, r.headers["location"]) == (301, "en-core-web-sm.html")
    assert httpx.get(url + "/catalogue/requests.html").status_code == 404
    for name, ctype in (("catalogue.js", "text/javascript"), ("catalogue.css", "text/css")):
        r = httpx.get(f"{url}/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        assert r.content == catalogue.asset(name)
        again = httpx.get(f"{url}/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
    # every link of the pages resolves on the server (files aside: they would download)
    for page in ("/", "/catalogue/en-core-web-sm.html"):
        for link in parse(httpx.get(url + page).text).links():
            target = urljoin(url + page, link)
            if link.startswith("data:") or "/files/" in target:
                continue
            assert httpx.get(target, headers={"Accept": "text/html"}).status_code == 200, link


def _wheel(name: str, version: str) -> bytes:
    buf = io.BytesIO()
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                   "Requires-Dist: spacy<3.9.0,>=3.8.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return buf.getvalue()


def test_serve_shows_cached_files_and_the_hit_rate(tmp_path):
    files = tmp_path / "upstream"
    files.mkdir()
    names = {"en_core_web_sm-3.8.0-py3-none-any.whl": _wheel("en_core_web_sm", "3.8.0"),
             "en_core_web_sm-3.7.1-py3-none-any.whl": _wheel("en_core_web_sm", "3.7.1")}
    for name, data in names.items():
        (files / name).write_bytes(data)
    with static_server(files) as host:
        dists = [Distribution(
            project="en-core-web-sm", filename=name, url=f"{host}/{name}",
            version=Version(name.split("-")[1]), kind="wheel",
            sha256=hashlib.sha256(data).hexdigest(), size=len(data),
            requires_dist=(f"spacy>={name.split('-')[1][:3]}.0,<3.{int(name.split('-')[1][2]) + 1}.0",),
        ) for name, data in names.items()]
        server = catalogue_server(tmp_path / "cache", load=lambda: Catalog.from_distributions(dists))
        with run_app(create_app(server)) as url:
            page = httpx.get(url + "/").text
            assert "Cached: 0 of 2 files" in page and "files: 0 hits, 0 misses;" in page
            new = "en_core_web_sm-3.8.0-py3-none-any.whl"
            for _ in range(3):
                assert httpx.get(f"{url}/files/{new}").content == names[new]
            for _ in range(2):
                assert httpx.get(f"{url}/files/{new}.metadata").status_code == 200
            stats: CacheStats = server.cache_stats
            assert (stats.hits(), stats.misses()) == (2, 1)
            assert (stats.hits("metadata"), stats.misses("metadata")) == (1, 1)
            assert stats.hit_rate() == pytest.approx(2 / 3)
            page = httpx.get(url + "/").text
            assert "Cached: 1 of 2 files with a sha256" in page
            assert "files: 2 hits, 1 misses (67% hit rate)" in page
            assert "PEP 658 metadata: 1 hits, 1 misses (50% hit rate)" in page
            assert '<td class="num">1 of 2</td>' in page
            detail = httpx.get(url + "/catalogue/en-core-web-sm.html").text
            rows = [line for line in detail.splitlines() if line.startswith("<tr><td>")]
            assert len(rows) == 2
            assert "<td>yes</td>" in rows[0] and new in rows[0]  # newest first
            assert "<td>no</td>" in rows[1]
            assert f'href="../files/{new}"' in rows[0]
    samples = {(n, tuple(sorted(labels.items()))): v for n, labels, v in stats.samples()}
    assert samples[("spacy_index_cache_requests_total",
                    (("kind", "file"), ("outcome", "hit")))] == 2
    assert samples[("spacy_index_cache_requests_total",
                    (("kind", "metadata"), ("outcome", "miss")))] == 1


def test_cache_stats_counts_and_samples():
    clock = iter([100.0, 160.0]).__next__
    stats = CacheStats(clock=clock)
    assert stats.hit_rate() is None
    for outcome in ("hit", "hit", "miss", "hit-unverified", "local"):
        stats.record("file", outcome)
    assert (stats.hits(), stats.misses(), stats.count("file", "local")) == (3, 1, 1)
    assert stats.hit_rate() == 0.75 and stats.uptime() == 60.0
    names = [n for n, _, _ in stats.samples()]
    assert names.count("spacy_index_cache_requests_total") == 4
    assert ("spacy_index_start_time_seconds", {}, 100.0) in stats.samples()


def test_serve_says_the_public_url_when_one_is_set(tmp_path):
    from dataclasses import replace

    server = catalogue_server(tmp_path / "cache")
    server.config = replace(server.config, public_url="https://index.example/spacy")
    with run_app(create_app(server)) as url:
        page = httpx.get(url + "/catalogue/en-core-web-sm.html").text
    # kept by catalogue.js as it is (behind a proxy the page's own location may differ)
    assert '<span class="index-url" data-fixed>https://index.example/spacy/simple/</span>' in page
    assert url not in page
