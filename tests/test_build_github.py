"""`spacy-index build` against a fake GitHub on loopback that holds all 1,099 releases."""

from __future__ import annotations

import json
import socket

import pytest

from spacy_index.cli import main
from spacy_index.publish.folder import read_tree

from .fakegithub import FakeGitHub, Fault
from .htmlparse import parse_anchors

TOKEN = "fake-ghp-FAKEtokenFAKEtokenFAKEtoken0123456789"  # planted: must never leak


@pytest.fixture
def gh():
    with FakeGitHub(token=TOKEN) as fake:
        yield fake


def run(fake, out, *extra, cache=None, token=TOKEN, capsys=None):
    env = {"GITHUB_API_URL": fake.api_url, "SPACY_INDEX_CACHE_DIR": str(cache or out.parent / "cache")}
    if token:
        env["GITHUB_TOKEN"] = token
    return main(["build", "--out", str(out), *extra], env=env)


def files_of(out):
    return parse_anchors((out / "find-links.html").read_text()).anchors


@pytest.mark.slow
def test_cold_build_is_complete_past_the_1000_cap(gh, tmp_path, capsys):
    out = tmp_path / "public"
    assert run(gh, out) == 0
    captured = capsys.readouterr()
    anchors = files_of(out)
    assert len(anchors) == 1921
    assert sum("#sha256=" in a["href"] for a, _ in anchors) == 1783
    # the 99 oldest releases are beyond the list cap; they must be there
    names = {t for _, t in anchors}
    assert "en_vectors_glove_md-1.0.0.tar.gz" in names
    assert all(a["href"].startswith(gh.web_url) for a, _ in anchors)
    api = gh.api_requests()
    by_tag = [r for r in api if "/releases/tags/" in r.path]
    pages = [r for r in api if r.path.endswith("/releases")]
    assert len(by_tag) == 99
    assert len(pages) == 10  # the 11th (422) is never requested
    assert not any(r.status == 422 for r in api)
    assert "1,921" in captured.out and "1,783 (92.8%)" in captured.out
    assert f"API requests  {len(api):,} (0 answered 304" in captured.out
    # the token goes to the API origin only, never to codeload/web/objects
    for r in gh.requests:
        auth = r.headers.get("authorization", "")
        assert (TOKEN in auth) == (r.origin == "api"), r
    # and appears nowhere in what we wrote or printed
    assert TOKEN not in captured.out + captured.err
    for path, data in read_tree(out).items():
        assert TOKEN.encode() not in data, path
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes()


@pytest.mark.slow
def test_warm_rebuild_spends_no_rate_limit_and_rewrites_nothing(gh, tmp_path, capsys):
    out = tmp_path / "public"
    assert run(gh, out) == 0
    before = read_tree(out)
    mtimes = {p: (out / p).stat().st_mtime_ns for p in before}
    remaining = gh.rate_remaining
    n = len(gh.requests)
    capsys.readouterr()
    assert run(gh, out) == 0
    text = capsys.readouterr().out
    assert gh.rate_remaining == remaining
    warm = gh.requests[n:]
    assert warm and all(r.status == 304 for r in warm)
    assert not any("tarball" in r.path for r in warm)
    assert read_tree(out) == before
    assert {p: (out / p).stat().st_mtime_ns for p in before} == mtimes
    assert "unchanged, nothing rewritten" in text
    assert "0 rate-limit units spent" in text


@pytest.mark.slow
def test_new_release_upstream_is_picked_up_warm(gh, tmp_path, wheel_bytes):
    out = tmp_path / "public"
    assert run(gh, out) == 0
    gh.add_release("en_core_web_sm-3.8.1", {"en_core_web_sm-3.8.1-py3-none-any.whl": wheel_bytes}, digest=True)
    assert run(gh, out) == 0
    names = {t for _, t in files_of(out)}
    assert "en_core_web_sm-3.8.1-py3-none-any.whl" in names
    assert len(names) == 1922


@pytest.mark.slow
def test_digest_disagreeing_with_meta_checksum_is_left_out(tmp_path, capsys):
    with FakeGitHub(keep_digests=True) as fake:
        rel = fake.release("en_core_web_sm-3.7.1")
        wheel = next(a for a in rel["assets"] if a["name"].endswith(".whl"))
        fake.set_asset_content("en_core_web_sm-3.7.1", wheel["name"], b"tampered", digest=True)
        out = tmp_path / "public"
        assert run(fake, out, token=None) == 0
    err = capsys.readouterr().err
    assert "en_core_web_sm-3.7.1-py3-none-any.whl" in err and "disagrees" in err
    names = {t for _, t in files_of(out)}
    assert "en_core_web_sm-3.7.1-py3-none-any.whl" not in names
    assert len(names) == 1920


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(502, query_contains="page=3"),
        Fault.status(502, query_contains="page=3", times=6),  # persistent: halved pages
        Fault.truncated_json(query_contains="page=2"),
        Fault.empty_page(page=4),
        Fault.no_link_header(page=2),
        Fault.retry_after(1, status=429),
        Fault.retry_after(1, status=403),
        Fault.rate_limited(reset_in=1),
        Fault.status(503, path_contains="/releases/tags/", times=2),
    ],
    ids=["502-once", "502-persistent", "truncated", "empty-page", "no-link", "429", "403-retry-after",
         "primary-limit", "503-by-tag"],
)
@pytest.mark.slow
def test_faults_still_give_the_complete_index(gh, tmp_path, fault):
    gh.inject(fault)
    out = tmp_path / "public"
    assert run(gh, out, "--max-wait", "10") == 0
    anchors = files_of(out)
    assert len(anchors) == 1921
    assert sum("#sha256=" in a["href"] for a, _ in anchors) == 1783


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.rate_limited(reset_in=3600), "rate limit reached; it resets at"),
        (Fault.secondary_limit(times=99), "rate limit"),
        (Fault.status(500, times=99), "releases page"),
        (Fault.truncated_json(times=99), "invalid JSON"),
    ],
    ids=["reset-far-away", "secondary", "500-forever", "truncated-forever"],
)
@pytest.mark.slow
def test_unrecoverable_faults_fail_in_one_line_and_keep_previous_output(gh, tmp_path, capsys, fault, message):
    out = tmp_path / "public"
    assert run(gh, out) == 0
    before = read_tree(out)
    gh.inject(fault)
    capsys.readouterr()
    # a fresh ETag store, so every request is a real one
    code = run(gh, out, "--max-wait", "2", cache=tmp_path / "cold")
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert read_tree(out) == before


def test_unreachable_github_suggests_offline(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"GITHUB_API_URL": f"http://127.0.0.1:{port}", "SPACY_INDEX_CACHE_DIR": str(tmp_path / "c")}
    code = main(["build", "--out", str(tmp_path / "o"), "--max-wait", "0"], env=env)
    err = capsys.readouterr().err
    assert code != 0
    assert "cannot reach GitHub" in err and "--offline" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bad_asset_names_are_skipped_with_one_warning_each(gh, tmp_path, capsys):
    gh.add_asset("en_core_web_sm-3.7.1", '"><script>alert(1)</script>-1.0.tar.gz', b"x")
    gh.add_asset("en_core_web_sm-3.7.1", "en_core_web_sm-3.7.1.whl.sig", b"x")
    gh.add_asset("en_core_web_sm-3.7.1", "de_core_news_sm-9.9.9-py3-none-any.whl", b"x")
    out = tmp_path / "public"
    assert run(gh, out) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    assert any("en_core_web_sm-3.7.1.whl.sig" in w for w in warnings)
    assert any("does not belong" in w for w in warnings)
    for path, data in read_tree(out).items():
        assert b"<script>" not in data, path
    assert len(files_of(out)) == 1921


@pytest.mark.slow
def test_snapshot_plus_delta_costs_two_requests(gh, tmp_path, capsys, wheel_bytes):
    snap = tmp_path / "snap.json.gz"
    env = {"GITHUB_API_URL": gh.api_url, "GITHUB_TOKEN": TOKEN, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "c1")}
    assert main(["snapshot", "--out", str(snap)], env=env) == 0
    out = tmp_path / "public"
    # nothing new upstream: releases page 1 + tag refs
    n = len(gh.api_requests())
    assert run(gh, out, "--snapshot", str(snap), cache=tmp_path / "c2") == 0
    assert [r.path.rsplit("/", 2)[-2:] for r in gh.api_requests()[n:]] == [
        ["spacy-models", "releases"], ["matching-refs", "tags"]
    ]
    assert len(files_of(out)) == 1921
    # one new release: + the repository archive for its meta (spaCy range, checksums)
    gh.add_release("en_core_web_md-3.8.1", {"en_core_web_md-3.8.1-py3-none-any.whl": wheel_bytes}, digest=True)
    n = len(gh.api_requests())
    assert run(gh, out, "--snapshot", str(snap), cache=tmp_path / "c3") == 0
    spent = gh.api_requests()[n:]
    assert len(spent) == 3, [r.path for r in spent]
    names = {t for _, t in files_of(out)}
    assert len(names) == 1922 and "en_core_web_md-3.8.1-py3-none-any.whl" in names
    marker = json.loads((out / ".spacy-index.json").read_text())
    assert marker["files_with_sha256"] == 1784
    # sizes came from the live API this time, so PEP 700 fields and api-version 1.1 appear
    doc = json.loads((out / "simple/en-core-web-md/index.json").read_text())
    assert doc["meta"]["api-version"] == "1.1"
    assert all("size" in f and "upload-time" in f for f in doc["files"])


@pytest.mark.slow
def test_snapshot_is_never_applied_to_another_repository(gh, tmp_path, capsys):
    snap = tmp_path / "snap.json.gz"
    env = {"GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "c1")}
    assert main(["snapshot", "--out", str(snap)], env=env) == 0
    code = main(["build", "--offline", "--snapshot", str(snap), "--out", str(tmp_path / "o")],
                env={"SPACY_INDEX_CACHE_DIR": str(tmp_path / "c1")})
    assert code != 0
    assert "cannot be used for another host" in capsys.readouterr().err
