"""End to end: real spaCy pipeline wheels on a fake GitHub → `spacy-index build` → real pip,
uv and pip-tools install from the static index, and `spacy.load` opens the pipeline."""

from __future__ import annotations

import sys

import pytest

from spacy_index.cli import main
from tests.clients import build_wheelhouse, make_venv, run, serve_directory
from tests.fakegithub import FakeGitHub
from tests.wheels import meta_archive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VERSIONS = ("3.7.50", "3.8.50")  # both load with the installed spaCy 3.8


@pytest.fixture(scope="module")
def index(tmp_path_factory, model_wheels):
    """Build the index from a fake GitHub holding two real pipeline releases; serve it."""
    packages = [model_wheels(version=v, sdist=True) for v in VERSIONS]
    root = tmp_path_factory.mktemp("e2e")
    with FakeGitHub(load_fixture=False, archive=meta_archive(packages)) as gh:
        for p in packages:
            gh.add_release(f"en_core_web_sm-{p.version}",
                           {p.wheel.name: p.wheel.read_bytes(), p.sdist.name: p.sdist.read_bytes()})
        out = root / "public"
        env = {"GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(root / "cache")}
        assert main(["build", "--out", str(out), "-q"], env=env) == 0
        with serve_directory(out) as static:
            yield {"gh": gh, "out": out, "static": static, "packages": dict(zip(VERSIONS, packages, strict=True))}


def load_check(venv):
    venv.run("-c", "import spacy; nlp = spacy.load('en_core_web_sm'); "
             "print(len(list(nlp('One. Two.').sents)))")


def test_every_link_is_hashed_by_the_meta_checksums(index):
    page = (index["out"] / "simple/en-core-web-sm/index.html").read_text()
    for p in index["packages"].values():
        assert f"{p.wheel.name}#sha256={p.sha256}" in page
        assert f"{p.sdist.name}#sha256={p.sdist_sha256}" in page


def test_pip_installs_in_range_from_simple_and_loads(index, tmp_path, client_env):
    venv = make_venv(tmp_path / "v", env=client_env)
    venv.pip("install", "--index-url", index["static"].url + "/simple/", "en_core_web_sm>=3.7,<3.8")
    assert venv.installed()["en-core-web-sm"] == "3.7.50"
    load_check(venv)


@pytest.mark.parametrize("source", ["simple", "find-links"])
def test_pip_require_hashes(index, tmp_path, client_env, source):
    p = index["packages"]["3.7.50"]
    req = tmp_path / "req.txt"
    req.write_text(f"en_core_web_sm==3.7.50 --hash=sha256:{p.sha256} --hash=sha256:{p.sdist_sha256}\n")
    url = index["static"].url
    args = (["--index-url", url + "/simple/"] if source == "simple"
            else ["--no-index", "--find-links", url + "/find-links.html"])
    venv = make_venv(tmp_path / "v", env=client_env)
    venv.pip("install", "--require-hashes", "-r", str(req), *args)
    load_check(venv)
    bad = tmp_path / "bad.txt"
    bad.write_text("en_core_web_sm==3.7.50 --hash=sha256:" + "0" * 64 + "\n")
    result = venv.pip("install", "--force-reinstall", "--no-deps", "--require-hashes", "-r", str(bad), *args, check=False)
    assert result.returncode != 0 and "DO NOT MATCH THE HASHES" in result.stdout + result.stderr


def test_pip_from_file_url(index, tmp_path, client_env):
    venv = make_venv(tmp_path / "v", env=client_env)
    venv.pip("install", "--index-url", index["out"].as_uri() + "/simple/", "en_core_web_sm")
    assert venv.installed()["en-core-web-sm"] == "3.8.50"


def test_uv_installs_and_loads(index, tmp_path, client_env):
    venv = make_venv(tmp_path / "v", env=client_env)
    venv.uv_pip("install", "--index-url", index["static"].url + "/simple/", "en_core_web_sm>=3.7,<3.8")
    assert venv.installed()["en-core-web-sm"] == "3.7.50"
    load_check(venv)


def test_pip_compile_takes_hashes_from_the_json_document(index, tmp_path, client_env):
    gh, p = index["gh"], index["packages"]["3.8.50"]
    wheelhouse = build_wheelhouse(tmp_path / "wh")
    (tmp_path / "requirements.in").write_text("en_core_web_sm\n")
    before = len(gh.requests)
    n_static = len(index["static"].requests)
    for index_url in (index["static"].url + "/simple/", index["static"].url + "/simple"):
        out = tmp_path / "requirements.txt"
        out.unlink(missing_ok=True)
        run([sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--strip-extras", "--index-url", index_url,
             "--find-links", str(wheelhouse), "-o", str(out), str(tmp_path / "requirements.in")],
            env=client_env, cwd=tmp_path)
        text = out.read_text()
        assert "en-core-web-sm==3.8.50" in text
        assert f"--hash=sha256:{p.sha256}" in text and f"--hash=sha256:{p.sdist_sha256}" in text
    served = index["static"].requests[n_static:]
    assert any("/json" in line for line in served), served
    # Static links point at GitHub: resolving needs the wheel's metadata, i.e. one download
    # per compile; hashing adds none (the hashes came from the JSON document).
    gets = [r for r in gh.requests[before:] if r.origin == "web" and r.path.endswith(".whl")]
    assert len(gets) == 2, [r.path for r in gets]
