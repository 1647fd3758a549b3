"""The test-support code works: genuine model wheels, isolated client envs,
fresh venvs with spaCy, and real pip/uv/pip-tools against a static index."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.clients import (
    SPACY_VERSION,
    CommandFailed,
    build_wheelhouse,
    clean_env,
    make_venv,
    run,
    serve_directory,
    uv_bin,
)
from tests.wheels import (
    PADDING_FILE,
    ModelCache,
    ModelPackage,
    build_model_package,
    sdist_pkg_info,
    session_model_cache,
    sha256_file,
    write_static_index,
)

LOAD = (
    "import spacy\n"
    "nlp = spacy.load('en_core_web_sm')\n"
    "assert nlp.meta['name'] == 'core_web_sm', nlp.meta\n"
    "print(nlp.meta['version'], [s.text for s in nlp('Hi there. Bye now.').sents])\n"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return session_model_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def sm(models: ModelCache) -> ModelPackage:
    return models(sdist=True)


@pytest.fixture(scope="module")
def static_index(tmp_path_factory: pytest.TempPathFactory, sm: ModelPackage) -> Path:
    """Root of a static PEP 503 index holding en_core_web_sm (with PEP 658 metadata)."""
    root = tmp_path_factory.mktemp("static-index")
    write_static_index(root, [sm], metadata=True)
    return root


# --------------------------------------------------------------------------
# wheels


def test_wheel_is_a_genuine_spacy_package(sm: ModelPackage) -> None:
    assert sm.project == "en_core_web_sm"
    assert sm.version == "3.8.0"
    assert sm.wheel.name == "en_core_web_sm-3.8.0-py3-none-any.whl"
    assert sm.sha256 == sha256_file(sm.wheel)
    with zipfile.ZipFile(sm.wheel) as zf:
        names = zf.namelist()
        assert zf.read("en_core_web_sm-3.8.0.dist-info/METADATA") == sm.metadata
        entry_points = zf.read("en_core_web_sm-3.8.0.dist-info/entry_points.txt").decode()
    assert "[spacy_models]" in entry_points
    assert "en_core_web_sm/__init__.py" in names
    assert "en_core_web_sm/en_core_web_sm-3.8.0/config.cfg" in names
    assert "en_core_web_sm/en_core_web_sm-3.8.0/meta.json" in names

    headers = sm.metadata.decode().split("\n\n", 1)[0].splitlines()
    assert "Version: 3.8.0" in headers
    requires = [Requirement(h.split(":", 1)[1]) for h in headers if h.startswith("Requires-Dist:")]
    assert [r.name for r in requires] == ["spacy"]
    assert requires[0].specifier.contains(SPACY_VERSION)
    assert sm.spacy_version == str(requires[0].specifier) or requires[0].specifier.contains(
        SPACY_VERSION
    )


def test_sdist_is_built_too(sm: ModelPackage) -> None:
    assert sm.sdist is not None and sm.sdist.name == "en_core_web_sm-3.8.0.tar.gz"
    assert sm.sdist_sha256 == sha256_file(sm.sdist)
    # setuptools < 68 keeps requirements out of an sdist's PKG-INFO (they are
    # in *.egg-info/requires.txt), like the released spaCy model sdists.
    assert b"\nVersion: 3.8.0\n" in sdist_pkg_info(sm.sdist)


def test_cache_memoizes(models: ModelCache, sm: ModelPackage) -> None:
    assert models(sdist=True) is sm
    assert models(sdist=True, version="3.8.0") is sm


def test_builds_are_reproducible(tmp_path: Path, sm: ModelPackage) -> None:
    again = build_model_package(tmp_path, sdist=False)
    assert again.sha256 == sm.sha256
    assert again.metadata == sm.metadata


@pytest.mark.slow
def test_padded_wheel_is_big_and_still_loads(tmp_path: Path, models: ModelCache) -> None:
    import spacy

    pad = 3 << 20
    pkg = models(name="core_web_md", version="3.8.1", pad_bytes=pad)
    assert pkg.wheel.name == "en_core_web_md-3.8.1-py3-none-any.whl"
    assert pad < pkg.wheel.stat().st_size < pad + 200_000  # incompressible
    data = "en_core_web_md/en_core_web_md-3.8.1"
    with zipfile.ZipFile(pkg.wheel) as zf:
        assert zf.getinfo(f"{data}/{PADDING_FILE}").file_size == pad
        zf.extractall(tmp_path)
    nlp = spacy.load(tmp_path / data)
    assert nlp.meta["name"] == "core_web_md"
    assert [s.text for s in nlp("One. Two.").sents] == ["One.", "Two."]


def test_static_index_layout(static_index: Path, sm: ModelPackage) -> None:
    page = (static_index / "simple" / "en-core-web-sm" / "index.html").read_text()
    assert f'href="../../files/{sm.wheel.name}#sha256={sm.sha256}"' in page
    assert (static_index / "files" / sm.wheel.name).read_bytes() == sm.wheel.read_bytes()
    assert (static_index / "files" / f"{sm.wheel.name}.metadata").read_bytes() == sm.metadata
    assert 'href="en-core-web-sm/"' in (static_index / "simple" / "index.html").read_text()


# --------------------------------------------------------------------------
# isolated client environment


def test_clean_env_drops_machine_pip_and_uv_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://example.invalid/simple")
    monkeypatch.setenv("UV_INDEX_URL", "http://example.invalid/simple")
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    env = clean_env(FOO="1")
    assert env["FOO"] == "1"
    assert "PYTHONPATH" not in env
    assert env["PIP_CONFIG_FILE"] == os.devnull
    assert env["UV_NO_CONFIG"] == "1"
    assert env["PIP_NO_CACHE_DIR"] == "1" and env["UV_NO_CACHE"] == "1"
    pip_vars = {k for k in env if k.startswith(("PIP_", "UV_"))}
    assert pip_vars == {
        "PIP_CONFIG_FILE",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "PIP_NO_INPUT",
        "PIP_NO_CACHE_DIR",
        "UV_NO_CONFIG",
        "UV_PYTHON_DOWNLOADS",
        "UV_NO_PROGRESS",
        "UV_NO_CACHE",
    }
    assert env["PATH"] == os.environ["PATH"]
    cached = clean_env(cache_dir="/c", PIP_CACHE_DIR=None)
    assert "PIP_CACHE_DIR" not in cached and cached["UV_CACHE_DIR"] == "/c/uv"
    assert "PIP_NO_CACHE_DIR" not in cached


def test_pip_sees_no_config_in_clean_env() -> None:
    out = run([sys.executable, "-m", "pip", "config", "list"], env=clean_env()).stdout
    # only the variables clean_env sets, no file-based setting
    assert [line for line in out.splitlines() if not line.startswith(":env:.")] == []
    debug = run([sys.executable, "-m", "pip", "config", "debug"], env=clean_env()).stdout
    assert "find-links" not in debug and "extra-index-url" not in debug


# --------------------------------------------------------------------------
# venvs


@pytest.mark.slow
def test_venv_with_spacy_is_seen_by_pip_and_uv(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv", cache_dir=tmp_path / "cache")
    out = venv.run("-c", "import spacy, sys; print(spacy.__version__); print(spacy.__file__)")
    version, location = out.stdout.split()
    assert version == SPACY_VERSION
    assert Path(location).is_relative_to(venv.site_packages)
    assert venv.has_module("pip") and not venv.has_module("pytest")
    assert venv.installed()["spacy"] == SPACY_VERSION
    assert "spacy" in venv.pip("list", "--format=freeze").stdout.lower()
    assert f"spacy=={SPACY_VERSION}" in venv.uv_pip("freeze").stdout
    venv.pip("check")
    venv.uv_pip("check")
    # console scripts point at the venv's interpreter
    assert venv.bin("pip").read_text().startswith(f"#!{venv.python}\n")


def test_venv_without_spacy(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv", with_spacy=False, with_pip=False)
    assert not venv.has_module("spacy")
    assert not venv.has_module("pip")
    with pytest.raises(FileExistsError):
        make_venv(tmp_path / "venv")


def test_venv_with_pip_tools_console_scripts(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv", with_spacy=False, extra=["pip-tools"])
    assert not venv.has_module("spacy")
    out = run([venv.bin("pip-compile"), "--version"], env=venv.env).stdout
    assert "pip-compile" in out and "version" in out


# --------------------------------------------------------------------------
# real clients against a static index


@pytest.mark.e2e
@pytest.mark.parametrize("client", ["pip-http", "pip-file", "uv-http", "uv-file"])
@pytest.mark.slow
def test_install_from_static_index_then_spacy_load(
    client: str, tmp_path: Path, static_index: Path, sm: ModelPackage
) -> None:
    tool, transport = client.split("-")
    venv = make_venv(tmp_path / "venv", with_pip=tool == "pip", cache_dir=tmp_path / "cache")
    with serve_directory(static_index) as server:
        if transport == "http":
            index = f"{server.url}/simple/"
        else:
            index = (static_index / "simple").as_uri() + "/"
        if tool == "pip":
            venv.pip("install", "--index-url", index, "en_core_web_sm")
        else:
            venv.uv_pip("install", "--index-url", index, "en_core_web_sm")
        requests = list(server.requests)
    assert venv.run("-c", LOAD).stdout.startswith("3.8.0 ['Hi there.', 'Bye now.']")
    if transport == "http":
        assert "GET /simple/en-core-web-sm/ 200" in requests
        assert f"GET /files/{sm.wheel.name} 200" in requests
        if tool == "pip":  # PEP 658: pip reads the metadata file first
            assert f"GET /files/{sm.wheel.name}.metadata 200" in requests
    else:
        assert requests == []


@pytest.mark.e2e
@pytest.mark.slow
def test_pip_require_hashes(tmp_path: Path, static_index: Path, sm: ModelPackage) -> None:
    good = tmp_path / "good.txt"
    good.write_text(f"en_core_web_sm==3.8.0 --hash=sha256:{sm.sha256}\n")
    bad = tmp_path / "bad.txt"
    bad.write_text(f"en_core_web_sm==3.8.0 --hash=sha256:{'0' * 64}\n")
    venv = make_venv(tmp_path / "venv")
    with serve_directory(static_index) as server:
        index = f"{server.url}/simple/"
        with pytest.raises(CommandFailed) as failed:
            venv.pip("install", "--index-url", index, "--require-hashes", "-r", bad)
        assert "DO NOT MATCH THE HASHES" in failed.value.stderr
        assert not venv.has_module("en_core_web_sm")
        venv.pip("install", "--index-url", index, "--require-hashes", "-r", good)
    venv.run("-c", LOAD)


@pytest.mark.e2e
@pytest.mark.slow
def test_uv_require_hashes_needs_hashes_for_dependencies(
    tmp_path: Path, static_index: Path, sm: ModelPackage
) -> None:
    """Unlike pip, uv wants a hash for every requirement, installed spaCy
    included: a one-line hashed requirement only works with --no-deps."""
    req = tmp_path / "req.txt"
    req.write_text(f"en_core_web_sm==3.8.0 --hash=sha256:{sm.sha256}\n")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    with serve_directory(static_index) as server:
        index = f"{server.url}/simple/"
        with pytest.raises(CommandFailed) as failed:
            venv.uv_pip("install", "--index-url", index, "--require-hashes", "-r", req)
        assert "no trusted hash was provided for: `spacy`" in failed.value.stderr
        venv.uv_pip("install", "--index-url", index, "--require-hashes", "--no-deps", "-r", req)
    venv.run("-c", LOAD)


@pytest.mark.e2e
@pytest.mark.slow
def test_lock_and_sync_with_offline_wheelhouse(
    tmp_path: Path, static_index: Path, sm: ModelPackage
) -> None:
    """Resolvers need spaCy *available*: a model-only index is not enough,
    the re-packed wheelhouse is (no network)."""
    wheelhouse = build_wheelhouse(tmp_path / "wheelhouse")
    req_in = tmp_path / "requirements.in"
    req_in.write_text("en_core_web_sm\n")
    env = clean_env(cache_dir=tmp_path / "cache")
    lock = tmp_path / "requirements.txt"
    uv_lock = tmp_path / "uv-requirements.txt"
    with serve_directory(static_index) as server:
        index = f"{server.url}/simple/"
        failed = run(
            [
                sys.executable,
                "-m",
                "piptools",
                "compile",
                "--index-url",
                index,
                "-o",
                tmp_path / "nope.txt",
                req_in,
            ],
            env=env,
            check=False,
            cwd=tmp_path,
        )
        assert failed.returncode != 0
        assert "No matching distribution found for spacy" in failed.stderr
        run(
            [
                sys.executable,
                "-m",
                "piptools",
                "compile",
                "--index-url",
                index,
                "--find-links",
                wheelhouse,
                "--generate-hashes",
                "--allow-unsafe",
                "-o",
                lock,
                req_in,
            ],
            env=env,
            cwd=tmp_path,
        )
        run(
            [
                uv_bin(),
                "pip",
                "compile",
                "--index-url",
                index,
                "--find-links",
                wheelhouse,
                "--generate-hashes",
                "-o",
                uv_lock,
                req_in,
            ],
            env=env,
            cwd=tmp_path,
        )
        for text in (lock.read_text(), uv_lock.read_text()):
            assert "\nen-core-web-sm==3.8.0 \\\n" in text
            # both artifacts offered by the index are hashed
            assert f"--hash=sha256:{sm.sha256}" in text
            assert f"--hash=sha256:{sm.sdist_sha256}" in text
            assert f"\nspacy=={SPACY_VERSION} \\\n" in text

        # pip-sync from the test runner's pip-tools, targeting the venv: the
        # lock holds spaCy's closure, so nothing is uninstalled.
        venv = make_venv(tmp_path / "venv", env=env)
        run(
            [
                sys.executable,
                "-m",
                "piptools",
                "sync",
                "--python-executable",
                venv.python,
                "--index-url",
                index,
                "--find-links",
                wheelhouse,
                lock,
            ],
            env=env,
        )
        assert venv.installed()["spacy"] == SPACY_VERSION
        venv.run("-c", LOAD)

        # uv into an empty venv: spaCy comes from the wheelhouse, offline
        empty = make_venv(tmp_path / "empty", with_spacy=False, with_pip=False, env=env)
        empty.uv_pip("sync", "--index-url", index, "--find-links", wheelhouse, uv_lock)
        empty.run("-c", LOAD)
