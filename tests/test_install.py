"""`spacy-index install` and `list`: the compatible pipeline, downloaded once, hash pinned."""

from __future__ import annotations

import json

import pytest

from spacy_index.cli import main
from tests.clients import make_venv
from tests.fakegithub import FakeGitHub
from tests.wheels import meta_archive

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*W095:UserWarning")]


@pytest.fixture(scope="module")
def gh(model_wheels):
    new = model_wheels(version="3.8.50")
    old = model_wheels(version="3.7.50", spacy_version=">=3.7.2,<3.8.0")  # not for spaCy 3.8
    with FakeGitHub(load_fixture=False, archive=meta_archive([new, old])) as fake:
        for p in (new, old):
            fake.add_release(f"{p.project}-{p.version}", {p.wheel.name: p.wheel.read_bytes()})
        fake.packages = {"new": new, "old": old}
        yield fake


def env_for(gh, cache):
    return {"GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(cache)}


def upstream_bytes(gh):
    return sum(r.bytes_sent for r in gh.requests if r.origin in ("web", "objects"))


def test_install_once_then_from_cache_then_nothing(gh, tmp_path, client_env, capsys):
    cache = tmp_path / "cache"
    first = make_venv(tmp_path / "a", env=client_env)
    assert main(["install", "en_core_web_sm", "--python", str(first.python)], env=env_for(gh, cache)) == 0
    assert first.installed()["en-core-web-sm"] == "3.8.50"  # the newest one for spaCy 3.8
    first.run("-c", "import spacy; spacy.load('en_core_web_sm')")
    assert "downloaded and verified" in capsys.readouterr().err

    before = upstream_bytes(gh)
    second = make_venv(tmp_path / "b", env=client_env)
    assert main(["install", "en_core_web_sm", "--python", str(second.python)], env=env_for(gh, cache)) == 0
    assert second.installed()["en-core-web-sm"] == "3.8.50"
    assert upstream_bytes(gh) == before  # 0 bytes: from the cache
    assert "from the cache" in capsys.readouterr().err

    n = len(gh.requests)
    assert main(["install", "en_core_web_sm", "--python", str(second.python)], env=env_for(gh, cache)) == 0
    assert "already installed" in capsys.readouterr().err
    assert len(gh.requests) == n  # no network at all


def test_dry_run_prints_the_pinned_line(gh, tmp_path, capsys):
    new = gh.packages["new"]
    assert main(["install", "en_core_web_sm", "--dry-run"], env=env_for(gh, tmp_path / "c")) == 0
    assert capsys.readouterr().out.strip() == f"en-core-web-sm==3.8.50 --hash=sha256:{new.sha256}"
    assert main(["install", "en_core_web_sm", "--dry-run", "--spacy", "3.7"], env=env_for(gh, tmp_path / "c")) == 0
    assert "en-core-web-sm==3.7.50" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["install", "en_core_web_sn", "--dry-run"], "did you mean en_core_web_sm"),
        (["install", "en_core_web_sm", "--dry-run", "--spacy", "2.3"], "spaCy versions that have one: 3.7, 3.8"),
        (["install", "en_core_web_sm", "--spacy", "three"], "--spacy needs auto or a version"),
    ],
)
def test_bad_input_one_line(gh, tmp_path, capsys, argv, message):
    assert main(argv, env=env_for(gh, tmp_path / "c")) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_spacy_not_installed(gh, tmp_path, capsys, client_env):
    bare = make_venv(tmp_path / "bare", with_spacy=False, env=client_env)
    assert main(["install", "en_core_web_sm", "--python", str(bare.python)], env=env_for(gh, tmp_path / "c")) != 0
    assert "spaCy is not installed" in capsys.readouterr().err


def test_no_network_and_nothing_cached(tmp_path, capsys, client_env):
    # default GitHub (unreachable here): the bundled snapshot chooses, the download can't happen
    venv = make_venv(tmp_path / "v", env=client_env)
    code = main(["install", "en_core_web_sm", "--python", str(venv.python)],
                env={"SPACY_INDEX_CACHE_DIR": str(tmp_path / "c")})
    err = capsys.readouterr().err
    assert code != 0
    assert "cannot reach the download of en_core_web_sm-3.8.0-py3-none-any.whl" in err
    assert "nothing is cached" in err and "Traceback" not in err


def test_list_json(gh, tmp_path, capsys):
    assert main(["list", "--json", "--spacy", "3.7"], env=env_for(gh, tmp_path / "c")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{
        "name": "en_core_web_sm", "version": "3.7.50", "versions": ["3.7.50"],
        "size": gh.packages["old"].wheel.stat().st_size, "spacy": "<3.8.0,>=3.7.2",
        "sha256": gh.packages["old"].sha256,
    }]


def test_install_from_an_index_url_and_a_mirror_folder(gh, tmp_path, capsys, client_env):
    """--index: files and hashes come from the index (here a mirror folder and its server)."""
    from tests.clients import serve_directory

    new = gh.packages["new"]
    env = env_for(gh, tmp_path / "c")
    out = tmp_path / "mirror"
    assert main(["build", "--mirror", "--out", str(out), "-q"], env=env) == 0
    capsys.readouterr()
    assert main(["install", "en_core_web_sm", "--dry-run", "--index", str(out)], env=env) == 0
    assert capsys.readouterr().out.strip() == f"en-core-web-sm==3.8.50 --hash=sha256:{new.sha256}"
    venv = make_venv(tmp_path / "v", env=client_env)
    assert main(["install", "en_core_web_sm", "--index", str(out), "--python", str(venv.python)], env=env) == 0
    assert venv.installed()["en-core-web-sm"] == "3.8.50"
    with serve_directory(out) as static:
        assert main(["install", "en_core_web_sm", "--dry-run", "--index", static.url + "/simple/"], env=env) == 0
        assert capsys.readouterr().out.strip() == f"en-core-web-sm==3.8.50 --hash=sha256:{new.sha256}"
