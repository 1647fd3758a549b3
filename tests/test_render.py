"""Renderers: one PEP 691 dict, serialised as JSON and PEP 503 HTML, checked by an independent parser."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version

from spacy_index.catalog import Catalog
from spacy_index.model import Distribution
from spacy_index.render import html, pep691
from spacy_index.render.json_api import dumps, pypi_project_document
from spacy_index.render.tree import index_files, pypi_json_paths

from .htmlparse import parse_anchors

SHA = "ab" * 32


def dist(version="3.7.1", *, kind="wheel", sha=SHA, size=123, rp=None, url=None, **kw):
    fn = f"en_core_web_sm-{version}-py3-none-any.whl" if kind == "wheel" else f"en_core_web_sm-{version}.tar.gz"
    return Distribution(
        project="en-core-web-sm", filename=fn, url=url or f"https://example.test/d/{fn}",
        version=Version(version), kind=kind, sha256=sha, size=size, requires_python=rp,
        upload_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), **kw,
    )


def test_project_dict_is_pep691_v1_1_with_pep700_fields():
    cat = Catalog.from_distributions([dist("3.7.1"), dist("3.7.0", kind="sdist")])
    doc = pep691.project_dict(cat.projects["en-core-web-sm"])
    assert doc["meta"] == {"api-version": "1.1"}
    assert doc["name"] == "en-core-web-sm"
    assert doc["versions"] == ["3.7.0", "3.7.1"]
    first = doc["files"][0]
    assert first["filename"] == "en_core_web_sm-3.7.0.tar.gz"
    assert first["hashes"] == {"sha256": SHA}
    assert first["size"] == 123
    assert first["upload-time"] == "2024-01-02T03:04:05.000000Z"


def test_unknown_size_downgrades_to_api_1_0_instead_of_inventing_one():
    cat = Catalog.from_distributions([dist(size=None)])
    doc = pep691.project_dict(cat.projects["en-core-web-sm"])
    assert doc["meta"]["api-version"] == "1.0"
    assert "size" not in doc["files"][0]


def test_json_uses_only_core_metadata_key_and_html_both():
    d = dist(core_metadata_sha256="cd" * 32)
    cat = Catalog.from_distributions([d])
    doc = pep691.project_dict(cat.projects["en-core-web-sm"])
    f = doc["files"][0]
    assert f["core-metadata"] == {"sha256": "cd" * 32}
    assert "dist-info-metadata" not in f
    (attrs, _), = parse_anchors(html.project_page(doc)).anchors
    assert attrs["data-core-metadata"] == "sha256=" + "cd" * 32
    assert attrs["data-dist-info-metadata"] == "sha256=" + "cd" * 32


def test_html_page_has_hash_fragment_requires_python_escaped_and_version_meta():
    cat = Catalog.from_distributions([dist(rp=">=3.8,<4"), dist("3.7.0", sha=None)])
    doc = pep691.project_dict(cat.projects["en-core-web-sm"])
    page = html.project_page(doc, "en_core_web_sm")
    assert 'data-requires-python="&gt;=3.8,&lt;4"' in page
    parsed = parse_anchors(page)
    assert parsed.meta["pypi:repository-version"] == "1.1"
    hrefs = [a["href"] for a, _ in parsed.anchors]
    assert hrefs[0] == "https://example.test/d/en_core_web_sm-3.7.0-py3-none-any.whl"
    assert hrefs[1].endswith("#sha256=" + SHA)
    assert [a.get("data-requires-python") for a, _ in parsed.anchors] == [None, ">=3.8,<4"]


def test_root_page_links_normalized_names():
    cat = Catalog.from_distributions([dist()])
    page = html.root_page(pep691.root_dict(cat))
    assert [(a["href"], t) for a, t in parse_anchors(page).anchors] == [("en-core-web-sm/", "en_core_web_sm")]


def test_pypi_json_lists_hashed_files_under_both_url_spellings():
    cat = Catalog.from_distributions([dist("3.7.1"), dist("3.7.0", sha=None)])
    doc = pypi_project_document(cat.projects["en-core-web-sm"])
    assert doc["info"]["version"] == "3.7.1"
    assert doc["releases"]["3.7.0"] == []
    urls = [f["url"] for f in doc["releases"]["3.7.1"]]
    plain = "https://example.test/d/en_core_web_sm-3.7.1-py3-none-any.whl"
    assert urls == [plain, plain + "#sha256=" + SHA]
    assert all(f["digests"]["sha256"] == SHA and f["packagetype"] == "bdist_wheel" for f in doc["releases"]["3.7.1"])


def test_pypi_json_paths_cover_both_index_url_spellings():
    from urllib.parse import urljoin

    paths = pypi_json_paths("En_Core_Web_SM")
    for index in ("https://h/simple", "https://h/simple/"):
        old_style = urljoin(index, "pypi") + "/en-core-web-sm/json"
        assert old_style.removeprefix("https://h/") in paths
    assert "en-core-web-sm/json" in paths


def test_index_files_deterministic():
    cat = Catalog.from_distributions([dist("3.7.1"), dist("3.7.0", kind="sdist")], source="s")
    assert index_files(cat) == index_files(cat)
    files = index_files(cat)
    assert set(files) >= {
        "simple/index.html", "simple/index.json", "simple/en-core-web-sm/index.html",
        "simple/en-core-web-sm/index.json", "find-links.html", "pypi/en-core-web-sm/json",
        ".spacy-index.json",
    }
    assert json.loads(files["simple/en-core-web-sm/index.json"])["name"] == "en-core-web-sm"


nasty = st.text(
    alphabet=st.sampled_from(list('<>"&\'/%\r\n \u00e9\u202e\x00=#?') + list("abc")), max_size=20
)


@given(url_tail=nasty, rp=nasty)
def test_rendering_never_emits_unescaped_input(url_tail, rp):
    d = dist(url="https://example.test/" + url_tail, rp=rp or None)
    doc = pep691.project_dict(Catalog.from_distributions([d]).projects["en-core-web-sm"])
    page = html.project_page(doc)
    (attrs, text), = parse_anchors(page).anchors
    assert attrs["href"] == d.url.split("#")[0] + "#sha256=" + SHA
    assert attrs.get("data-requires-python") == (rp or None)
    assert text == d.filename
    # same structure with harmless values: any unescaped < > " in the input would add to these
    plain = dist(url="https://example.test/x", rp="x" if rp else None)
    baseline = html.project_page(
        pep691.project_dict(Catalog.from_distributions([plain]).projects["en-core-web-sm"])
    )
    for ch in '<>"':
        assert page.count(ch) == baseline.count(ch)
    assert json.loads(dumps(doc)) == doc


@given(st.integers(0, 1300), st.integers(0, 1300))
def test_dumps_in_chunks_is_byte_identical_to_one_json_dumps(files, releases):
    """Big members are encoded a few hundred at a time (the GIL is let go between), with
    exactly the bytes of one json.dumps call."""
    doc = {"name": "x", "files": [{"url": f"u{i}", "hashes": {"sha256": "é" * (i % 3)}}
                                  for i in range(files)],
           "releases": {f"1.{i}": [{"n": i}] for i in range(releases)}, "meta": {}}
    one_call = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
    assert dumps(doc) == one_call
