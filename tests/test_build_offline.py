"""`spacy-index build --offline`: the bundled snapshot gives the complete index, no network."""

from __future__ import annotations

import json

import pytest
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from spacy_index.cli import main
from spacy_index.publish.folder import read_tree

from .htmlparse import parse_anchors


@pytest.fixture(scope="module")
def offline_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("offline") / "public"
    env = {"SPACY_INDEX_CACHE_DIR": str(out.parent / "cache")}
    assert main(["build", "--offline", "--out", str(out), "-q"], env=env) == 0
    return out


def test_offline_index_is_complete_and_hashed(offline_index):
    marker = json.loads((offline_index / ".spacy-index.json").read_text())
    assert marker["files"] == 1921
    assert marker["files_with_sha256"] == 1783
    assert marker["snapshot_date"] == "2025-05-27"
    flat = parse_anchors((offline_index / "find-links.html").read_text()).anchors
    assert len(flat) == 1921
    assert sum("#sha256=" in a["href"] for a, _ in flat) == 1783
    # every stable v3 wheel has a hash except one (pl_core_news_lg-3.1.0 has no meta file)
    unhashed_v3 = []
    for a, t in flat:
        if t.endswith(".whl") and "#sha256=" not in a["href"]:
            version = Version(parse_wheel_filename(t)[1].public)
            if version.major == 3 and not version.is_prerelease:
                unhashed_v3.append(t)
    assert unhashed_v3 == ["pl_core_news_lg-3.1.0-py3-none-any.whl"]


def test_project_page_and_json_agree(offline_index):
    page = parse_anchors((offline_index / "simple/en-core-web-sm/index.html").read_text())
    doc = json.loads((offline_index / "simple/en-core-web-sm/index.json").read_text())
    assert [t for _, t in page.anchors] == [f["filename"] for f in doc["files"]]
    assert "3.7.1" in doc["versions"] and "2.0.0a0" in doc["versions"]
    # sizes in the recorded inventory are approximate, so they are left out, and api 1.0 says so
    assert doc["meta"]["api-version"] == "1.0"
    assert all("size" not in f for f in doc["files"])
    pypi = json.loads((offline_index / "pypi/en-core-web-sm/json").read_text())
    assert pypi["info"]["requires_dist"] == ["spacy>=3.8.0,<3.9.0"]
    assert (offline_index / "simple/pypi/en-core-web-sm/json").read_bytes() == (
        offline_index / "en-core-web-sm/json"
    ).read_bytes()


def test_rebuild_is_byte_identical_and_rewrites_nothing(offline_index, capsys):
    before = read_tree(offline_index)
    env = {"SPACY_INDEX_CACHE_DIR": str(offline_index.parent / "cache")}
    assert main(["build", "--offline", "--out", str(offline_index)], env=env) == 0
    assert "unchanged, nothing rewritten" in capsys.readouterr().out
    assert read_tree(offline_index) == before


def test_filters(tmp_path):
    out = tmp_path / "f"
    assert main(["build", "--offline", "--out", str(out), "-q", "--only", "en_core_web_*",
                 "--spacy", "3.7.5", "--wheels-only"], env={}) == 0
    names = [t for _, t in parse_anchors((out / "simple/index.html").read_text()).anchors]
    names = [n.replace("_", "-") for n in names]
    assert names == ["en-core-web-lg", "en-core-web-md", "en-core-web-sm", "en-core-web-trf"]
    doc = json.loads((out / "simple/en-core-web-sm/index.json").read_text())
    assert [f["filename"] for f in doc["files"]] == [
        "en_core_web_sm-3.7.0-py3-none-any.whl", "en_core_web_sm-3.7.1-py3-none-any.whl"
    ]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["build", "--offline", "--repo", "someone/else"], {}, "not someone/else"),
        (["build", "--offline"], {"GITHUB_API_URL": "https://ghe.example/api/v3"}, "cannot be used for another host"),
        (["build", "--offline", "--spacy", "three"], {}, "--spacy needs a version"),
        (["build", "--offline", "--no-snapshot"], {}, "cannot be combined"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys, argv, env, message):
    code = main([*argv, "--out", str(tmp_path / "o")], env=env)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
