"""Mirror mode: a self-contained index (files + PEP 658 sidecars + relative links) that any
static server can host, installable with no other network."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from spacy_index.cli import main
from spacy_index.publish.folder import list_tree
from tests.clients import build_wheelhouse, make_venv, run, serve_directory
from tests.fakegithub import FakeGitHub
from tests.htmlparse import parse_anchors
from tests.wheels import meta_archive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, model_wheels):
    root = tmp_path_factory.mktemp("mirror")
    sm = model_wheels(version="3.8.50")
    md = model_wheels(name="core_web_md", version="3.8.50", pad_bytes=20 << 20)
    out = root / "public"
    with serve_directory(root) as static:
        with FakeGitHub(load_fixture=False, archive=meta_archive([sm, md])) as gh:
            for p in (sm, md):
                gh.add_release(f"{p.project}-{p.version}", {p.wheel.name: p.wheel.read_bytes()})
            env = {"GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(root / "cache")}
            assert main(["build", "--mirror", "--out", str(out), "-q"], env=env) == 0
            first = sum(r.bytes_sent for r in gh.requests if r.origin == "objects")
            # a second build finds everything in the cache and changes nothing
            n = len(gh.requests)
            assert main(["build", "--mirror", "--out", str(out), "-q"], env=env) == 0
            again = [r for r in gh.requests[n:] if r.origin in ("web", "objects")]
            # and one with absolute links, for clients that match URLs literally (pip-tools)
            assert main(["build", "--mirror", "--base-url", f"{static.url}/abs/",
                         "--out", str(root / "abs"), "-q"], env=env) == 0
        # from here on the fake GitHub is gone: the mirror must need nothing outside itself
        yield {"out": out, "sm": sm, "md": md, "first_bytes": first, "again": again, "root": root,
               "static": static}


def test_layout_sidecars_and_relative_links(mirror):
    out, sm, md = mirror["out"], mirror["sm"], mirror["md"]
    assert mirror["first_bytes"] == sm.wheel.stat().st_size + md.wheel.stat().st_size
    assert mirror["again"] == []  # fetched only once, ever
    for p in (sm, md):
        assert (out / "files" / p.wheel.name).read_bytes() == p.wheel.read_bytes()
        assert (out / "files" / f"{p.wheel.name}.metadata").read_bytes() == p.metadata
    (attrs, _), = parse_anchors((out / "simple/en-core-web-sm/index.html").read_text()).anchors
    assert attrs["href"] == f"../../files/{sm.wheel.name}#sha256={sm.sha256}"
    assert attrs["data-core-metadata"] == "sha256=" + hashlib.sha256(sm.metadata).hexdigest()
    doc = json.loads((out / "simple/en-core-web-md/index.json").read_text())
    assert doc["meta"]["api-version"] == "1.1" and doc["files"][0]["size"] == md.wheel.stat().st_size
    flat = parse_anchors((out / "find-links.html").read_text()).anchors
    assert {a["href"].split("#")[0] for a, _ in flat} == {f"files/{sm.wheel.name}", f"files/{md.wheel.name}"}
    assert all(not a["href"].startswith("http") for a, _ in flat)
    assert "files/" + sm.wheel.name in list_tree(out)


def test_pip_and_uv_install_from_http_server_with_no_other_network(mirror, tmp_path, client_env):
    static = mirror["static"]
    index = static.url + "/public/simple/"
    venv = make_venv(tmp_path / "v", env=client_env)
    venv.pip("install", "--index-url", index, "en_core_web_sm")
    venv.run("-c", "import spacy; spacy.load('en_core_web_sm')")
    report = tmp_path / "r.json"
    n = len(static.requests)
    venv.pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report),
             "--index-url", index, "en_core_web_md")
    served = static.requests[n:]
    assert any(".whl.metadata" in line for line in served)
    assert not any(line.split()[1].endswith(".whl") for line in served), served  # 0 wheel bytes
    uvenv = make_venv(tmp_path / "u", env=client_env)
    uvenv.uv_pip("install", "--index-url", index, "en_core_web_sm")
    uvenv.run("-c", "import spacy; spacy.load('en_core_web_sm')")


def test_pip_compile_against_mirror_with_base_url_reads_no_wheel(mirror, tmp_path, client_env):
    static = mirror["static"]
    wheelhouse = build_wheelhouse(tmp_path / "wh")
    (tmp_path / "requirements.in").write_text("en_core_web_md\n")
    n = len(static.requests)
    run([sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--strip-extras",
         "--index-url", static.url + "/abs/simple/", "--find-links", str(wheelhouse),
         "-o", "requirements.txt", "requirements.in"], env=client_env, cwd=tmp_path)
    assert f"--hash=sha256:{mirror['md'].sha256}" in (tmp_path / "requirements.txt").read_text()
    served = static.requests[n:]
    assert any("/json" in line for line in served)
    assert not any(line.split()[1].endswith(".whl") for line in served), served
