"""Client workflows end to end: pip, pip-tools, uv (pip interface and project), poetry and pdm
against both kinds of spaCy pipeline index, with a fake PyPI behind them:

* **static**: `spacy-index build` output (from a fake GitHub holding a real pipeline) on a
  static HTTP server, with the fake PyPI as the default index;
* **serve**: `spacy-index serve` (build_server/create_app under uvicorn) with `--upstream`
  = the fake PyPI, one URL for everything.

The fake PyPI (tests/workflow_support.py) holds spaCy's whole dependency closure and PyPI's
dependency-confusion placeholders `en-core-web-sm 999.9.9` / `en-core-web-trf 999.9.9`.
Every client runs sealed off: its own HOME and caches, and a dead proxy for any host that
isn't loopback, so nothing can quietly come from pypi.org.

Each matrix test records a row (works? lock has the pipeline's hash? GitHub bytes of the
first install, of a second install in the same environment, of an install into a fresh
environment with the warm client cache); the rows are printed at the end of the session and
written to the path in SPACY_INDEX_WORKFLOW_MATRIX (e.g. bench/results/workflows-matrix.json)
when it is set; a default run writes no tracked file.

The project examples in examples/ are the files under test: the URLs in them are replaced
with the test servers', PyPI with the fake PyPI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from spacy_index.cli import main
from spacy_index.server.wiring import create_app
from tests.clients import SPACY_VERSION, make_venv, run, uv_bin
from tests.fakegithub import FakeGitHub
from tests.servers import run_app
from tests.workflow_support import (
    PLACEHOLDER_VERSION,
    REPO,
    Matrix,
    Tools,
    base_python,
    ensure_tools,
    licensed_host,
    read_dotenv,
    stub_wheel,
    tool_env,
    upstream_bytes,
    write_fake_pypi,
)
from tests.worlds import World, WorldSpec, static_index


def e2e(test):
    """Real clients against local servers: markers e2e + slow."""
    return pytest.mark.e2e(pytest.mark.slow(test))


TOKEN = "fake-ghp-WORKFLOWStoken0123456789abcdefABCDEF"
EXAMPLES = REPO / "examples"
EXAMPLE_INDEX = "https://spacy-index.example.org/simple/"
MODEL_VERSION = "3.8.50"
SPEC = "en_core_web_sm>=3.8,<3.9"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
LOAD = ("import spacy; nlp = spacy.load('en_core_web_sm'); "
        "assert len(list(nlp('One. Two.').sents)) == 2")
#: where the matrix is written: only when asked (SPACY_INDEX_WORKFLOW_MATRIX=PATH, e.g.
#: bench/results/workflows-matrix.json); a default test run writes no tracked file
MATRIX_PATH = (Path(os.environ["SPACY_INDEX_WORKFLOW_MATRIX"])
               if os.environ.get("SPACY_INDEX_WORKFLOW_MATRIX") else None)


# ----------------------------------------------------------------------------- fixtures
@dataclass
class Index:
    kind: str  #: "static" | "serve"
    simple: str  #: the pipeline index, ending in /simple/
    default: str  #: the default index for everything else, ending in /simple/
    gh: FakeGitHub


#: a fake GitHub with the pipeline, the fake PyPI (``world.fake_pypi``, served as
#: ``world.pypi``), and `spacy-index build` of that GitHub on a static server
WORLD = WorldSpec(
    "workflows", pipelines={"sm": {"version": MODEL_VERSION, "sdist": True}}, token=TOKEN,
    upstream="pypi",
    parts={"fake_pypi": lambda w: write_fake_pypi(w.root / "pypi", w.pypi.url, w.fixture("spacy_wheelhouse")),
           "static": static_index})


@pytest.fixture(params=["static", "serve"])
def index(request, world, tmp_path):
    """The pipeline index under test. `serve` is a fresh server with an empty cache per test,
    so its first install really comes from GitHub."""
    if request.param == "static":
        yield Index("static", world.static.url + "/simple/", world.fake_pypi.simple, world.gh)
        return
    server = world.server(cache_dir=tmp_path / "serve-cache")
    with run_app(create_app(server)) as url:
        yield Index("serve", url + "/simple/", url + "/simple/", world.gh)


class _MatrixSummary:
    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not (self.matrix.rows or self.matrix.findings):
            return
        terminalreporter.section("client workflow matrix")
        for line in self.matrix.table().splitlines():
            terminalreporter.write_line(line)
        for key, value in sorted(self.matrix.findings.items()):
            terminalreporter.write_line(f"{key}: {json.dumps(value)}")
        if MATRIX_PATH is not None:
            terminalreporter.write_line(f"written to {MATRIX_PATH} (rows this session did not "
                                        "run are kept from the file)")


@pytest.fixture(scope="module")
def matrix(request):
    m = Matrix()
    m.versions = {"python": sys.version.split()[0], "spacy": SPACY_VERSION,
                  "pip": _version("pip"), "pip-tools": _version("pip-tools"),
                  "uv": run([uv_bin(), "--version"]).stdout.split()[1]}
    if not request.config.pluginmanager.has_plugin("workflow-matrix"):
        request.config.pluginmanager.register(_MatrixSummary(m), "workflow-matrix")
    yield m
    if (m.rows or m.findings) and MATRIX_PATH is not None:
        m.write(MATRIX_PATH)


@pytest.fixture(scope="session")
def tools() -> Tools:
    """poetry + pdm in their own venv (requirements/tools.txt; PyPI on first use)."""
    return ensure_tools()


@pytest.fixture
def env(tmp_path):
    """A sealed client environment with a per-test (warm across the test's steps) cache."""
    return tool_env(tmp_path / "home", cache=tmp_path / "client-cache")


# ----------------------------------------------------------------------------- helpers
def _version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


def piptools(*args, env, cwd=None):
    return run([sys.executable, "-m", "piptools", *args], env=env, cwd=cwd)


def check_lock(text: str, world: World, *, hashed: bool = True) -> bool:
    """The pipeline is pinned to the real release (never the placeholder), no credential
    is in the lock; returns whether the pipeline's wheel hash is in it."""
    assert PLACEHOLDER_VERSION not in text
    assert TOKEN not in text and "ghp_" not in text
    assert not re.search(r"https?://[^/\s\"']*@", text), "credentials in a URL"
    assert MODEL_VERSION in text
    has = world.sm.sha256 in text
    if hashed:
        assert has, "the pipeline's sha256 is not in the lock"
    return has


def fresh_project(example: str, dest: Path, index: Index) -> Path:
    """Copy examples/<example>/pyproject.toml to dest with the test index in it."""
    dest.mkdir(parents=True)
    text = (EXAMPLES / example / "pyproject.toml").read_text()
    assert EXAMPLE_INDEX in text
    text = text.replace(EXAMPLE_INDEX, index.simple)
    text = re.sub(r'(?m)^requires-python = ".*"$', f'requires-python = "=={PY}.*"', text)
    text = re.sub(r'(?m)^python = ".*"$', f'python = "~{PY}"', text)
    (dest / "pyproject.toml").write_text(text)
    tomllib.loads(text)
    return dest


def new_venv(path: Path) -> Path:
    """An empty venv (no pip) for tools that install everything themselves."""
    shutil.rmtree(path, ignore_errors=True)
    run([base_python(), "-m", "venv", "--without-pip", path])
    return path / "bin" / "python"


def load_check(python: Path, env) -> None:
    run([python, "-c", LOAD], env=env)


class Meter:
    """GitHub download bytes between two points."""

    def __init__(self, gh: FakeGitHub) -> None:
        self.gh = gh
        self.mark = upstream_bytes(gh)

    def take(self) -> int:
        now = upstream_bytes(self.gh)
        moved, self.mark = now - self.mark, now
        return moved


# ----------------------------------------------------------------------------- the fake PyPI
@e2e
def test_fake_pypi_looks_like_pypi(world):
    pypi = world.fake_pypi
    assert {"spacy", "numpy", "thinc", "en-core-web-sm", "en-core-web-trf"} <= set(pypi.projects)
    assert pypi.projects["en-core-web-sm"] == [f"en_core_web_sm-{PLACEHOLDER_VERSION}.tar.gz"]
    assert "colorama" in pypi.stubs  # marker-only dependency (Windows) for universal lockers
    page = (pypi.root / "simple" / "spacy" / "index.html").read_text()
    assert "#sha256=" in page and "data-core-metadata=" in page
    doc = json.loads((pypi.root / "spacy" / "json").read_text())
    assert doc["releases"][SPACY_VERSION][0]["digests"]["sha256"]


# ----------------------------------------------------------------------------- pip
@e2e
def test_pip(world, index, tmp_path, env, matrix):
    gh = Meter(index.gh)
    with matrix.row("pip", index.kind) as row:
        a = make_venv(tmp_path / "a", env=env)  # spaCy's closure already installed
        lock = tmp_path / ("pylock.toml" if index.kind == "serve" else "requirements.txt")
        if index.kind == "serve":
            row.lock = "pylock.toml (pip lock --index-url <serve>)"
            with row.step("lock"):
                a.pip("lock", "--index-url", index.simple, SPEC, "-o", lock)
            install = ["install", "-r", lock]
        else:
            # The static index has only pipelines: spaCy is installed first (from PyPI), the
            # pipeline then with --index-url alone, pinned by its hash.
            row.lock = "requirements.txt, one --hash line (from pip --report)"
            report = tmp_path / "report.json"
            a.pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--report", report,
                  "--index-url", index.simple, SPEC)
            (item,) = json.loads(report.read_text())["install"]
            sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
            lock.write_text(f"en-core-web-sm=={item['metadata']['version']} --hash=sha256:{sha}\n")
            install = ["install", "--require-hashes", "--index-url", index.simple, "-r", lock]
        row.lock_bytes = gh.take()
        row.lock_has_hashes = check_lock(lock.read_text(), world)
        with row.step("install"):
            a.pip(*install)
        row.first_install_bytes = gh.take()
        with row.step("load"):
            load_check(a.python, env)
        with row.step("install again"):
            a.pip(*install)
        row.second_install_bytes = gh.take()
        b = make_venv(tmp_path / "b", env=env)
        with row.step("install, new env"):
            b.pip(*install)
        row.fresh_env_bytes = gh.take()
        assert b.installed()["en-core-web-sm"] == MODEL_VERSION
        if index.kind == "static":
            row.notes.append("pip caches nothing over plain http: a new env downloads again")
        row.works = True
    assert row.second_install_bytes == 0
    if index.kind == "serve":
        assert row.fresh_env_bytes == 0


@e2e
def test_pip_extra_index_and_find_links_pick_the_placeholder(world, tmp_path, env, matrix):
    """The unsafe path: PyPI next to the pipeline index. pip takes the highest version over
    all indexes and find-links, which is PyPI's 999.9.9 placeholder; its setup.py fails."""
    venv = make_venv(tmp_path / "v", env=env)
    static, pypi = world.static.url, world.fake_pypi.simple
    found = {}
    for label, args in {
        "pip --extra-index-url": ["--index-url", static + "/simple/", "--extra-index-url", pypi],
        "pip -f find-links.html": ["--index-url", pypi, "-f", static + "/find-links.html"],
    }.items():
        r = venv.pip("install", *args, "en_core_web_sm", check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert PLACEHOLDER_VERSION in out, out
        found[label] = f"fails: picks {PLACEHOLDER_VERSION}"
        assert "en-core-web-sm" not in venv.installed()
    # An upper bound keeps the placeholder out (it is not a candidate), but only by luck of
    # the spelling: one unbounded line in a requirements file and it's back.
    r = venv.pip("install", "--dry-run", "--no-deps", "--index-url", static + "/simple/",
                 "--extra-index-url", pypi, SPEC)
    assert f"en_core_web_sm-{MODEL_VERSION}" in r.stdout or MODEL_VERSION in r.stdout
    found["pip --extra-index-url, bounded spec"] = f"picks {MODEL_VERSION}"
    # uv: the first index that has the name wins (extra indexes are searched first)
    for label, args, safe in (
        ("uv --extra-index-url <pypi>", ["--index-url", static + "/simple/",
                                         "--extra-index-url", pypi], False),
        ("uv --extra-index-url <spacy-index>", ["--index-url", pypi,
                                                "--extra-index-url", static + "/simple/"], True),
        ("uv -f find-links.html", ["--index-url", pypi, "-f", static + "/find-links.html"], False),
    ):
        r = venv.uv_pip("install", "--dry-run", *args, "en_core_web_sm", check=False)
        out = r.stdout + r.stderr
        if safe:
            assert r.returncode == 0 and MODEL_VERSION in out, out
            found[label] = f"picks {MODEL_VERSION} (first-index strategy)"
        else:
            assert r.returncode != 0 and PLACEHOLDER_VERSION in out, out
            found[label] = f"fails: picks {PLACEHOLDER_VERSION}"
    matrix.findings["unsafe mixing"] = found


@e2e
def test_hashes_from_find_links_pages(world, spacy_wheelhouse, tmp_path, env, matrix):
    """Measured: do lockers keep the #sha256 of a remote find-links page? (The simple index
    always gives the hash.)"""
    (tmp_path / "req.in").write_text("en_core_web_sm\n")
    static = world.static.url
    got = {}
    for label, args in {"find-links": ["--no-index", "-f", static + "/find-links.html"],
                        "simple": ["--index-url", static + "/simple/"]}.items():
        out = tmp_path / f"uv-{label}.txt"
        run([uv_bin(), "pip", "compile", "--quiet", "--generate-hashes", "--no-deps",
             "--python-version", PY, *args, "req.in", "-o", out], env=env, cwd=tmp_path)
        text = out.read_text()
        assert f"en-core-web-sm=={MODEL_VERSION}" in text
        got[f"uv pip compile ({label})"] = world.sm.sha256 in text
    for label, args in {"find-links": ["--no-index", "-f", static + "/find-links.html"],
                        "simple": ["--index-url", static + "/simple/"]}.items():
        out = tmp_path / f"pip-tools-{label}.txt"
        piptools("compile", "--quiet", "--generate-hashes", "--strip-extras", "--allow-unsafe",
                 *args, "-f", spacy_wheelhouse, "req.in", "-o", out, env=env, cwd=tmp_path)
        got[f"pip-compile ({label})"] = world.sm.sha256 in out.read_text()
    assert got["uv pip compile (simple)"] and got["pip-compile (simple)"]
    matrix.findings["lock has the pipeline hash"] = got


# ----------------------------------------------------------------------------- pip-tools
@e2e
def test_pip_tools(world, index, tmp_path, env, matrix):
    gh = Meter(index.gh)
    with matrix.row("pip-tools", index.kind) as row:
        (tmp_path / "requirements.in").write_text(f"{SPEC}\n")
        if index.kind == "serve":
            args = ["--index-url", index.simple]
        else:
            # pip-tools has no per-package index: the pipeline index is an extra index, which
            # is safe only because the spec is bounded (999.9.9 is not a candidate).
            args = ["--index-url", index.default, "--extra-index-url", index.simple]
            row.notes.append("static needs --extra-index-url and a bounded spec")
        row.lock = "requirements.txt (pip-compile --generate-hashes)"
        with row.step("lock"):
            piptools("compile", "--quiet", "--generate-hashes", "--strip-extras",
                     "--allow-unsafe", *args, "-o", "requirements.txt", "requirements.in",
                     env=env, cwd=tmp_path)
        row.lock_bytes = gh.take()
        text = (tmp_path / "requirements.txt").read_text()
        row.lock_has_hashes = check_lock(text, world)
        assert f"spacy=={SPACY_VERSION}" in text  # the whole closure is locked
        a = make_venv(tmp_path / "a", env=env)
        sync = ["sync", "--python-executable", a.python, "requirements.txt"]
        with row.step("install"):
            piptools(*sync, env=env, cwd=tmp_path)
        row.first_install_bytes = gh.take()
        with row.step("load"):
            load_check(a.python, env)
        with row.step("install again"):
            again = piptools(*sync, env=env, cwd=tmp_path)
        assert "Everything up-to-date" in again.stdout + again.stderr
        row.second_install_bytes = gh.take()
        b = make_venv(tmp_path / "b", env=env)
        with row.step("install, new env"):
            piptools("sync", "--python-executable", b.python, "requirements.txt", env=env,
                     cwd=tmp_path)
        row.fresh_env_bytes = gh.take()
        assert b.installed()["en-core-web-sm"] == MODEL_VERSION
        row.works = True
    assert row.second_install_bytes == 0
    if index.kind == "serve":
        assert row.fresh_env_bytes == 0


# ----------------------------------------------------------------------------- uv
@e2e
def test_uv_pip(world, index, tmp_path, env, matrix):
    gh = Meter(index.gh)
    with matrix.row("uv pip", index.kind) as row:
        (tmp_path / "requirements.in").write_text(f"{SPEC}\n")
        if index.kind == "serve":
            args = ["--index-url", index.simple]
        else:
            # uv searches extra indexes first and stops at the first index that has a name
            # (index strategy first-index): the pipeline index as *extra* index is safe.
            args = ["--index-url", index.default, "--extra-index-url", index.simple]
            row.notes.append("static: pipeline index as --extra-index-url (uv: first index wins)")
        row.lock = "requirements.txt (uv pip compile --generate-hashes)"
        with row.step("lock"):
            run([uv_bin(), "pip", "compile", "--quiet", "--generate-hashes", "--python-version",
                 PY, *args, "requirements.in", "-o", "requirements.txt"], env=env, cwd=tmp_path)
        row.lock_bytes = gh.take()
        row.lock_has_hashes = check_lock((tmp_path / "requirements.txt").read_text(), world)
        a = make_venv(tmp_path / "a", env=env)
        lock = tmp_path / "requirements.txt"
        with row.step("install"):
            a.uv_pip("sync", *args, lock)
        row.first_install_bytes = gh.take()
        with row.step("load"):
            load_check(a.python, env)
        with row.step("install again"):
            out = a.uv_pip("sync", *args, lock)
        assert "Installed" not in out.stderr
        row.second_install_bytes = gh.take()
        b = make_venv(tmp_path / "b", env=env)
        with row.step("install, new env"):
            b.uv_pip("sync", *args, lock)
        row.fresh_env_bytes = gh.take()
        assert b.installed()["en-core-web-sm"] == MODEL_VERSION
        row.works = True
    assert row.second_install_bytes == 0 and row.fresh_env_bytes == 0


@e2e
def test_uv_project(world, index, tmp_path, env, matrix):
    """examples/uv-project: explicit "spacy" index + [tool.uv.sources]; PyPI = the fake PyPI
    (UV_DEFAULT_INDEX); with serve, the explicit index is the server too."""
    gh = Meter(index.gh)
    env = dict(env, UV_DEFAULT_INDEX=index.default, UV_PYTHON=base_python())
    env.pop("UV_NO_CONFIG")  # the project's [tool.uv] settings are the point
    with matrix.row("uv project", index.kind) as row:
        proj = fresh_project("uv-project", tmp_path / "proj", index)
        row.lock = "uv.lock (uv lock)"
        with row.step("lock"):
            run([uv_bin(), "lock"], env=env, cwd=proj)
        row.lock_bytes = gh.take()
        lock = tomllib.loads((proj / "uv.lock").read_text())
        (pkg,) = [p for p in lock["package"] if p["name"] == "en-core-web-sm"]
        assert pkg["version"] == MODEL_VERSION and pkg["source"] == {"registry": index.simple}
        row.lock_has_hashes = check_lock((proj / "uv.lock").read_text(), world)
        assert pkg["wheels"][0]["hash"] == f"sha256:{world.sm.sha256}"
        with row.step("install"):
            run([uv_bin(), "sync", "--locked"], env=env, cwd=proj)
        row.first_install_bytes = gh.take()
        with row.step("load"):
            load_check(proj / ".venv" / "bin" / "python", env)
        with row.step("install again"):
            run([uv_bin(), "sync", "--locked"], env=env, cwd=proj)
        row.second_install_bytes = gh.take()
        shutil.rmtree(proj / ".venv")
        with row.step("install, new env"):
            run([uv_bin(), "sync", "--locked"], env=env, cwd=proj)
        row.fresh_env_bytes = gh.take()
        row.works = True
    assert row.second_install_bytes == 0 and row.fresh_env_bytes == 0


# ----------------------------------------------------------------------------- poetry
def seeded_venv(path: Path, env) -> None:
    """The "new environment" of the poetry/pdm rows: spaCy's closure already in it (cloned,
    0.5 s), so the second install measures the pipeline, not 45 wheels unpacked again."""
    shutil.rmtree(path, ignore_errors=True)
    make_venv(path, with_pip=False, env=env)


@e2e
@pytest.mark.network
def test_poetry(world, index, tmp_path, env, tools, matrix):
    """examples/poetry-project: explicit "spacy" source; PyPI replaced by a primary source
    (the fake PyPI, or the server)."""
    gh = Meter(index.gh)
    matrix.versions.update(tools.versions())
    with matrix.row("poetry", index.kind) as row:
        proj = fresh_project("poetry-project", tmp_path / "proj", index)
        with open(proj / "pyproject.toml", "a") as fh:
            fh.write(f'\n[[tool.poetry.source]]\nname = "pypi-mirror"\nurl = "{index.default}"\n'
                     'priority = "primary"\n')
        tomllib.loads((proj / "pyproject.toml").read_text())
        new_venv(proj / ".venv")  # POETRY_VIRTUALENVS_IN_PROJECT: poetry uses it
        poetry = [tools.poetry, "--no-ansi"]
        row.lock = "poetry.lock (poetry lock)"
        with row.step("lock"):
            run([*poetry, "lock"], env=env, cwd=proj)
        row.lock_bytes = gh.take()
        text = (proj / "poetry.lock").read_text()
        row.lock_has_hashes = check_lock(text, world)
        assert f'name = "en-core-web-sm"\nversion = "{MODEL_VERSION}"' in text
        with row.step("install"):
            out = run([*poetry, "install"], env=env, cwd=proj)
        assert "Installing spacy" in out.stdout  # the whole closure, from the default source
        row.first_install_bytes = gh.take()
        with row.step("load"):
            load_check(proj / ".venv" / "bin" / "python", env)
        with row.step("install again"):
            again = run([*poetry, "install"], env=env, cwd=proj)
        assert "No dependencies to install or update" in again.stdout
        row.second_install_bytes = gh.take()
        seeded_venv(proj / ".venv", env)
        with row.step("install, new env"):
            out = run([*poetry, "install"], env=env, cwd=proj)
        assert "Installing en-core-web-sm" in out.stdout
        row.fresh_env_bytes = gh.take()
        row.works = True
    assert row.second_install_bytes == 0 and row.fresh_env_bytes == 0


# ----------------------------------------------------------------------------- pdm
@e2e
@pytest.mark.network
def test_pdm(world, index, tmp_path, env, tools, matrix):
    """examples/pdm-project: a "spacy" source with include_packages; PyPI = PDM_PYPI_URL."""
    gh = Meter(index.gh)
    matrix.versions.update(tools.versions())
    proj = tmp_path / "proj"
    env = dict(env, PDM_PYPI_URL=index.default, PDM_PYTHON=str(proj / ".venv" / "bin" / "python"))
    install = [tools.pdm, "install", "--frozen-lockfile"]
    with matrix.row("pdm", index.kind) as row:
        fresh_project("pdm-project", proj, index)
        new_venv(proj / ".venv")
        row.lock = "pdm.lock (pdm lock)"
        with row.step("lock"):
            run([tools.pdm, "lock"], env=env, cwd=proj)
        row.lock_bytes = gh.take()
        text = (proj / "pdm.lock").read_text()
        row.lock_has_hashes = check_lock(text, world)
        assert f'name = "en-core-web-sm"\nversion = "{MODEL_VERSION}"' in text
        with row.step("install"):
            out = run(install, env=env, cwd=proj)
        assert "Install spacy" in out.stdout + out.stderr  # the whole closure
        row.first_install_bytes = gh.take()
        with row.step("load"):
            load_check(proj / ".venv" / "bin" / "python", env)
        with row.step("install again"):
            again = run(install, env=env, cwd=proj)
        assert "synced" in again.stdout + again.stderr
        row.second_install_bytes = gh.take()
        seeded_venv(proj / ".venv", env)
        with row.step("install, new env"):
            out = run(install, env=env, cwd=proj)
        assert "Install en-core-web-sm" in out.stdout + out.stderr
        row.fresh_env_bytes = gh.take()
        if index.kind == "static" and row.fresh_env_bytes:
            row.notes.append("pdm keeps no downloaded wheel: a new env downloads again")
        row.works = True
    assert row.second_install_bytes == 0
    if index.kind == "serve":
        assert row.fresh_env_bytes == 0


# ----------------------------------------------------------------------------- recipes
@e2e
def test_makefile_lock_and_sync(world, tmp_path, env, matrix):
    """examples/makefile against `spacy-index serve`: make lock, make sync, make check; a
    second `make sync` moves nothing."""
    server = world.server(cache_dir=tmp_path / "serve-cache")
    proj = tmp_path / "app"
    proj.mkdir()
    for name in ("Makefile", "requirements.in"):
        shutil.copy(EXAMPLES / "makefile" / name, proj / name)
    # make exports command-line variables to recipes, and pip reads every PIP_* variable
    assert not re.search(r"(?m)^PIP_\w+\s*[?:]?=", (proj / "Makefile").read_text())
    venv = make_venv(proj / ".venv", env=env)
    tool = f"{shlex.quote(sys.executable)} -m piptools"
    with run_app(create_app(server)) as url:
        gh = Meter(world.gh)
        make = ["make", "--no-print-directory", f"INDEX_URL={url}/simple/",
                f"COMPILE={tool} compile", f"SYNC={tool} sync"]
        run([*make, "lock", "sync", "check"], env=env, cwd=proj)
        text = (proj / "requirements.txt").read_text()
        check_lock(text, world)
        assert venv.installed()["en-core-web-sm"] == MODEL_VERSION
        first = gh.take()
        out = run([*make, "lock", "sync"], env=env, cwd=proj)
        assert "Everything up-to-date" in out.stdout + out.stderr
        assert "piptools compile" not in out.stdout  # the lock is up to date: not recompiled
        assert gh.take() == 0 and first > 0
        assert not (proj / "build").exists()
    matrix.findings["makefile"] = {"make lock sync check": "ok", "second make sync bytes": 0}


def test_makefile_lock_on_a_fresh_checkout_makes_the_venv_first(tmp_path):
    """`make lock` with no .venv yet: the venv (with pip-tools) is made before pip-compile."""
    for name in ("Makefile", "requirements.in"):
        shutil.copy(EXAMPLES / "makefile" / name, tmp_path / name)
    for target in ("lock", "upgrade"):
        plan = subprocess.run(["make", "-n", target, "INDEX_URL=http://i.example/simple/"],
                              cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        assert "-m venv .venv" in plan and "pip-compile" in plan
        assert plan.index("-m venv .venv") < plan.index("pip-compile")


def test_dockerfile_uses_a_cache_mount_and_one_index():
    text = (EXAMPLES / "docker" / "Dockerfile").read_text()
    assert text.startswith("# syntax=docker/dockerfile:1")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    logical = re.sub(r"\\\n\s*", " ", code)  # join continuation lines
    runs = [line for line in logical.splitlines() if line.startswith("RUN ")]
    (pip_run,) = [r for r in runs if "pip install" in r]
    assert "--mount=type=cache,target=/root/.cache/pip" in pip_run
    assert '--index-url "${INDEX_URL}"' in pip_run and "--require-hashes" in pip_run
    assert "--extra-index-url" not in logical and "--find-links" not in logical
    assert " -f " not in pip_run
    assert "--no-cache-dir" not in pip_run  # would defeat the cache mount
    assert re.search(r"(?m)^ARG INDEX_URL=http://[^@\s]+/simple/$", text)
    copy_at = logical.index("COPY requirements.txt")
    assert copy_at < logical.index("pip install")  # the install layer depends on the lock only
    for secret in ("ghp_", "GITHUB_TOKEN", "PIP_FIND_LINKS", "PRODIGY", "password"):
        assert secret.lower() not in logical.lower()
    assert not re.search(r"https?://[^/\s\"']*@", logical)
    for line in logical.splitlines():
        assert not re.match(r"(ARG|ENV)\s+\S*(KEY|TOKEN|SECRET|PASSWORD)", line, re.I), line


@pytest.mark.slow
def test_github_actions_workflow(tmp_path):
    import yaml  # PyYAML: add to the [test] extra

    path = EXAMPLES / "github-actions" / "publish-index.yml"
    doc = yaml.safe_load(path.read_text())
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    (cron,) = on["schedule"]
    assert len(cron["cron"].split()) == 5
    assert "workflow_dispatch" in on
    assert doc["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    build, deploy = doc["jobs"]["build"], doc["jobs"]["deploy"]
    uses = [s.get("uses", "").split("@")[0] for s in build["steps"]]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"]
    assert "actions/upload-pages-artifact" in uses
    runs = [s["run"] for s in build["steps"] if "run" in s]
    # installed from the checkout, never by a bare name on PyPI (not published: squattable)
    (install,) = [r for r in runs if "pip install" in r]
    assert install.strip() == "python -m pip install ."
    assert not any(re.search(r"pip install\s+(--\S+\s+)*['\"]?spacy-index\b", r) for r in runs)
    probe = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                            "--no-build-isolation", "--quiet", "."], cwd=EXAMPLES.parent,
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    (cmd,) = [r for r in runs if "spacy-index build" in r]
    (upload,) = [s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages")]
    argv = shlex.split(cmd)
    out = argv[argv.index("--out") + 1]
    assert upload["with"]["path"] == out == "public"
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    for step in build["steps"]:
        for value in (step.get("env") or {}).values():
            assert str(value).startswith("${{"), "a literal secret in the workflow"
    # the build command itself, offline, here
    assert argv[:2] == ["spacy-index", "build"]
    argv[argv.index("--out") + 1] = str(tmp_path / out)
    env = {"SPACY_INDEX_CACHE_DIR": str(tmp_path / "c")}
    assert main([*argv[1:], "--offline", "-q"], env=env) == 0
    assert (tmp_path / out / "simple" / "en-core-web-sm" / "index.html").is_file()
    assert (tmp_path / out / "find-links.html").is_file()


PRODIGY_KEY = "AB12-CD34-EF56-GH78"


@e2e
def test_prodigy_key_stays_in_dotenv(world, tmp_path, env, matrix):
    """examples/prodigy: PIP_FIND_LINKS with the key in a git-ignored .env, `make lock` runs
    pip-compile --no-emit-find-links: the lock has the hash and not the key; `make sync`
    installs with the key from .env; without the key the install fails."""
    prodigy_whl, prodigy_data = stub_wheel("prodigy", "1.15.0", requires=["spacy>=3.7,<4"])
    assert ".env" in (EXAMPLES / "prodigy" / ".gitignore").read_text().split()
    proj = tmp_path / "app"
    proj.mkdir()
    for name in ("Makefile", "requirements.in"):
        shutil.copy(EXAMPLES / "prodigy" / name, proj / name)
    with licensed_host(PRODIGY_KEY, {prodigy_whl: prodigy_data}) as host:
        example = (EXAMPLES / "prodigy" / "env.example").read_text()
        assert "PIP_FIND_LINKS=https://XXXX-XXXX-XXXX-XXXX@download.prodi.gy" in example
        (proj / ".env").write_text(example.replace(
            "https://XXXX-XXXX-XXXX-XXXX@download.prodi.gy", host.url_with_key(PRODIGY_KEY)))
        assert read_dotenv(proj / ".env")["PIP_FIND_LINKS"] == host.url_with_key(PRODIGY_KEY)
        venv = make_venv(proj / ".venv", env=env)
        tool = f"{shlex.quote(sys.executable)} -m piptools"
        make = ["make", "--no-print-directory", f"INDEX_URL={world.fake_pypi.simple}",
                f"COMPILE={tool} compile", f"SYNC={tool} sync"]
        out = run([*make, "lock", "sync"], env=env, cwd=proj)
        lock = (proj / "requirements.txt").read_text()
        sha = hashlib.sha256(prodigy_data).hexdigest()
        assert "prodigy==1.15.0" in lock and f"--hash=sha256:{sha}" in lock
        assert venv.installed()["prodigy"] == "1.15.0"
        basic = base64.b64encode(f"{PRODIGY_KEY}:".encode()).decode()
        leaked = [PRODIGY_KEY, basic]
        for secret in leaked:
            assert secret not in lock
            assert secret not in out.stdout + out.stderr
        # no URL of the licensed host (its port's digits may well occur inside a sha256)
        assert "--find-links" not in lock and f"127.0.0.1:{host.port}" not in lock
        assert ("/", f"Basic {basic}") in host.seen  # the key went as the basic-auth username
        # the lock alone, without the .env, cannot fetch Prodigy
        other = make_venv(tmp_path / "other", env=env)
        r = other.pip("install", "--require-hashes", "-r", proj / "requirements.txt", check=False)
        assert r.returncode != 0 and "prodigy" in (r.stdout + r.stderr).lower()
    matrix.findings["prodigy"] = {"lock has hash": True, "key in lock": False,
                                  "install without .env": "fails"}
