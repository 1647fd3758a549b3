"""Real clients through `spacy-index serve` with the REAL PyPI as upstream.

One `spacy-index serve` subprocess for the whole module (default upstream
https://pypi.org/simple/, pipelines from a local fake GitHub holding a real `spacy package`
wheel of en_core_web_sm 3.8.0, GITHUB_TOKEN required by the fake). Its cache is shared by
every test, so the order of the file matters: a first install fills it, the lockers find
the metadata there, the second install must come from it entirely.

Every client runs sealed off (tests/workflow_support.py ``tool_env``): its own HOME and
caches, no PIP_*/UV_* variables, no pip.conf, and a dead proxy for any non-loopback host,
so the one serve URL is the only place anything can come from.

Per client run, serve's stderr is read back (tests/realpypi.py): the access log gives the
whole files sent (``GET /files/<file>`` answered 200: not a 206 range, not ``.metadata``),
the 5xx answers and the cache hit/miss of each file; the entries that appear in serve's cache
directory give what serve fetched upstream (``files/``: whole files, ``metadata/``: core
metadata); ``/proc/<pid>/io`` ``wchar`` the bytes serve wrote (the access log counts 0 B for
the files it sends zero-copy). The results are printed as a table at the end of the session.

Secrets: serve gets GITHUB_TOKEN (the fake GitHub rejects any other token) and a config with
a private source whose username/password come from the environment; neither may appear in a
lock file, in a client's output or in serve's log.
"""

from __future__ import annotations

import ensurepip
import importlib.metadata
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import httpx
from packaging.utils import canonicalize_name

from tests.clients import make_venv, run, uv_bin
from tests.realpypi import Window
from tests.workflow_support import Tools, base_python, ensure_tools, tool_env
from tests.worlds import World, WorldSpec

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.e2e]

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
MODEL_VERSION = "3.8.0"
SPACY_SPEC = "spacy>=3.8,<3.9"
INSTALL = [SPACY_SPEC, "en_core_web_sm"]
LOCK_REQS = [SPACY_SPEC, f"en_core_web_sm=={MODEL_VERSION}"]
TOKEN = "fake-ghp-REALPYPItokenREALPYPI0123456789"  # planted: must never leak
PRIVATE_USER = "realpypi-private-USER-7f3a9c"
PRIVATE_PASSWORD = "realpypi-private-PASSWORD-b81e0d"
SECRETS = (TOKEN, PRIVATE_USER, PRIVATE_PASSWORD)
LOAD = ("import importlib.metadata as m, spacy, en_core_web_sm; nlp = en_core_web_sm.load(); "
        "assert len(list(nlp('One. Two.').sents)) == 2; "
        "print(m.version('en_core_web_sm'), m.version('spacy'))")
SERVE_CONFIG = """\
# a private source with credentials from the environment: they must never leak to clients
[[source]]
name = "private"
kind = "simple"
url = "https://private-index.invalid/simple/"
username = "${REALPYPI_PRIVATE_USER}"
password = "${REALPYPI_PRIVATE_PASSWORD}"
projects = ["acme-*"]
"""


# ----------------------------------------------------------------------------- results
@dataclass
class Row:
    client: str
    command: str = ""
    version: str = ""
    works: bool = False
    pins: int | None = None
    hashes_on_every_pin: bool | None = None
    whole_files: int | None = None
    ranges: int | None = None
    upstream_files: int | None = None  #: whole files serve fetched upstream meanwhile
    server_errors: int | None = None
    seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Report:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.started = time.monotonic()

    def row(self, client: str) -> Row:
        self.rows[client] = Row(client)
        return self.rows[client]

    def table(self) -> list[str]:
        def fmt(v: Any) -> str:
            return "-" if v is None else ("yes" if v is True else "no" if v is False else str(v))

        lines = ["| client | version | works | pins | sha256 on every pin | whole files | "
                 "206 ranges | serve<-upstream files | 5xx | s | command |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows.values():
            lines.append("| " + " | ".join(fmt(v) for v in (
                r.client, r.version, r.works, r.pins, r.hashes_on_every_pin, r.whole_files,
                r.ranges, r.upstream_files, r.server_errors, round(r.seconds),
                f"`{r.command}`")) + " |")
        for r in self.rows.values():
            if r.stats or r.notes:
                lines.append(f"{r.client}: {json.dumps(r.stats)}")
                lines.extend(f"  - {n}" for n in r.notes)
        lines.append(f"module wall time: {time.monotonic() - self.started:.0f} s")
        return lines


class _Summary:
    def __init__(self, report: Report) -> None:
        self.report = report

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.report.rows:
            terminalreporter.section("real PyPI through spacy-index serve")
            for line in self.report.table():
                terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def report(request) -> Report:
    r = Report()
    request.config.pluginmanager.register(_Summary(r), f"real-pypi-report-{id(r)}")
    return r


# ----------------------------------------------------------------------------- the world
def _config(world: World) -> str:
    assert world.sm.sdist is not None
    return SERVE_CONFIG


#: one `spacy-index serve` subprocess (upstream: the real PyPI) on a fake GitHub holding
#: the pipeline; ``world.state`` carries the first install's results to the later tests
WORLD = WorldSpec(
    "real-pypi", pipelines={"sm": {"version": MODEL_VERSION, "sdist": True}}, token=TOKEN,
    upstream="real", config=_config, serve="cli",
    env={"REALPYPI_PRIVATE_USER": PRIVATE_USER, "REALPYPI_PRIVATE_PASSWORD": PRIVATE_PASSWORD})


def gh_downloads(world: World) -> int:
    """Requests the fake GitHub got on its download origins (web redirects + blobs)."""
    return sum(r.origin in ("web", "objects") for r in list(world.gh.requests))


@pytest.fixture(scope="session")
def tools() -> Tools:
    """poetry + pdm in their own venv (requirements/tools.txt; PyPI on first use)."""
    return ensure_tools()


def client_env(world: World, name: str, **extra: str | None) -> dict[str, str]:
    """A sealed client environment with its own (cold) HOME and caches."""
    base = world.root / "clients" / name
    shutil.rmtree(base, ignore_errors=True)
    return tool_env(base / "home", cache=base / "cache", **extra)


# ----------------------------------------------------------------------------- checks
def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, "a credential leaked"
        assert not re.search(r"https?://[^/\s\"'@]*@", text), "credentials in a URL"


def assert_only_serve_urls(text: str, world: World) -> None:
    """A lock made through serve names no other host (PyPI, GitHub, the fake's origins)."""
    urls = re.findall(r"https?://[^\s\"'\\,]+", text)
    others = sorted({u for u in urls if not u.startswith(world.serve.url + "/")})
    assert not others, others


def _hashes_of(entries: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in entries:
        if "hash" in e:
            out.append(e["hash"])
        elif "hashes" in e:
            out.extend(f"{k}:{v}" for k, v in e["hashes"].items())
    return out


def requirements_pins(text: str) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, [hash, ...])`` of a pip-compile/uv requirements file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip().rstrip("\\").strip()
        if not line or line.startswith("#"):
            continue
        if raw[:1].isspace():
            if current is not None and line.startswith("--hash="):
                pins[current][1].append(line.removeprefix("--hash="))
            continue
        if line.startswith("-"):  # --index-url ...
            current = None
            continue
        req = line.split(";")[0].strip()
        name, sep, version = req.partition("==")
        assert sep, f"not pinned: {raw!r}"
        current = canonicalize_name(name.split("[")[0])
        pins[current] = (version.strip(), [])
    return pins


def lock_pins(client: str, path: Path) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, [sha256:..., ...])`` of every pinned package in a lock file."""
    text = path.read_text()
    if path.suffix == ".txt":
        return requirements_pins(text)
    doc = tomllib.loads(text)
    pins: dict[str, tuple[str, list[str]]] = {}
    if client == "uv lock":
        for p in doc["package"]:
            if "virtual" in p["source"] or "editable" in p["source"]:
                continue  # the project itself
            files = list(p.get("wheels", [])) + ([p["sdist"]] if "sdist" in p else [])
            pins[p["name"]] = (p["version"], _hashes_of(files))
    elif client in ("poetry lock", "pdm lock"):
        for p in doc["package"]:
            pins[canonicalize_name(p["name"])] = (p["version"], _hashes_of(p.get("files", [])))
    elif client == "pip lock":
        for p in doc["packages"]:
            files = list(p.get("wheels", [])) + ([p["sdist"]] if "sdist" in p else [])
            pins[canonicalize_name(p["name"])] = (p["version"], _hashes_of(files))
    else:  # pragma: no cover
        raise ValueError(client)
    return pins


def record_window(row: Row, w: Window, sizes: dict[str, int] | None = None) -> None:
    row.stats = w.summary()
    row.whole_files = len(w.whole_files)
    row.ranges = len(w.ranges)
    row.upstream_files = len(w.new_cached_files)
    row.server_errors = len(w.server_errors)
    if w.whole_files:
        row.notes.append("whole files: " + ", ".join(a.filename for a in w.whole_files))
        if sizes:
            known = sum(sizes.get(a.filename, 0) for a in w.whole_files)
            logged = sum(a.nbytes for a in w.whole_files)
            row.notes.append(f"whole files are {known / 1e6:.1f} MB (sizes from the cold "
                             f"install); the access log says {logged / 1e6:.1f} MB; serve "
                             f"wrote {(w.wchar or 0) / 1e6:.1f} MB (/proc/pid/io wchar)")
    if w.ranges:
        row.notes.append("206 ranges: " + ", ".join(sorted({a.filename for a in w.ranges})))
    if w.other:
        row.notes.append("other serve output: " + " | ".join(w.other[:5]))


def describe_5xx(w: Window, world: World) -> str:
    """The 5xx lines and what serve answers to them now (body included)."""
    out = []
    for a in w.server_errors[:5]:
        body = httpx.request(a.method, world.serve.url + a.path, timeout=60).text[:500]
        out.append(f"{a} -> now: {body!r}")
    return "\n".join(out + w.other[:10])


def tool_version(argv: list[str | Path], env: dict[str, str]) -> str:
    out = run(argv, env=env)
    return (out.stdout or out.stderr).strip().splitlines()[0]


# ----------------------------------------------------------------------------- pip installs
def pip_install(world: World, name: str, report: Report, *, label: str) -> tuple[Row, Window, Any]:
    """``pip install --index-url <serve> spacy>=3.8,<3.9 en_core_web_sm`` into a fresh venv
    (the test venv's pip, cloned; nothing else in it) with a cold pip cache."""
    env = client_env(world, name)
    venv = make_venv(world.root / "venvs" / name, with_spacy=False, env=env)
    row = report.row(label)
    report_json = world.root / "venvs" / f"{name}.report.json"
    argv = ["install", "--index-url", world.serve.simple, "--report", str(report_json), *INSTALL]
    row.command = "pip " + " ".join(a if a != str(report_json) else "report.json" for a in argv)
    row.version = tool_version([venv.python, "-m", "pip", "--version"], env).split()[1]
    t0 = time.monotonic()
    with world.serve.window() as w:
        out = venv.pip(*argv, timeout=900)
    row.seconds = time.monotonic() - t0
    record_window(row, w, world.state.get("sizes"))
    assert not w.server_errors, describe_5xx(w, world)
    assert_no_secret(out.stdout, out.stderr)
    items = json.loads(report_json.read_text())["install"]
    urls = {canonicalize_name(i["metadata"]["name"]): i["download_info"]["url"] for i in items}
    assert all(u.startswith(world.serve.url + "/files/") for u in urls.values()), urls
    versions = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    assert versions["en-core-web-sm"] == MODEL_VERSION
    assert versions["spacy"].startswith("3.8.")
    loaded = venv.run("-c", LOAD).stdout.split()
    assert loaded == [MODEL_VERSION, versions["spacy"]]
    # one download per installed distribution, and nothing else
    assert sorted(a.filename for a in w.whole_files) == sorted(
        u.rsplit("/", 1)[-1] for u in urls.values())
    row.works = True
    row.notes.append(f"installed {len(items)} distributions: spacy {versions['spacy']}, "
                     f"en-core-web-sm {versions['en-core-web-sm']}")
    return row, w, versions


def first_install(world: World, report: Report) -> dict[str, str]:
    """Test 1, once per module (test 3 needs it done)."""
    if "first" not in world.state:
        before = gh_downloads(world)
        row, w, versions = pip_install(world, "pip-first", report, label="pip install (cold)")
        world.state["first"] = versions
        world.state["sizes"] = {a.filename: a.nbytes for a in w.whole_files if a.cache == "miss"}
        # every file came through serve once: downloaded upstream and stored
        assert len(w.new_cached_files) == len(w.whole_files)
        world.state["first_gh_downloads"] = gh_downloads(world) - before
        row.notes.append(f"file cache misses: {sum(a.cache == 'miss' for a in w.whole_files)}"
                         f" of {len(w.whole_files)}; fake GitHub download requests: "
                         f"{world.state['first_gh_downloads']}")
    return world.state["first"]


def test_pip_install_spacy_and_pipeline_through_one_url(world, report):
    """1. spaCy and its tree from PyPI, the pipeline from the fake GitHub, one index URL."""
    versions = first_install(world, report)
    assert versions["en-core-web-sm"] == MODEL_VERSION
    # the pipeline came from the fake GitHub (serve cached it), not from PyPI's placeholder
    sm = world.sm.wheel.name
    assert any(r.origin == "objects" for r in world.gh.requests), "the fake GitHub served nothing"
    page = httpx.get(world.serve.simple + "en-core-web-sm/").text
    assert sm in page and "999.9.9" not in page
    assert world.sm.sha256 in page


# ----------------------------------------------------------------------------- lockers
LOCKERS = ["pip-compile", "uv pip compile", "uv lock", "poetry lock", "pdm lock", "pip lock"]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_locker(client: str, world: World, tools: Tools | None) -> tuple[str, Path, list, dict]:
    """Returns (command, lock file, argv, env) of ``client``, with its project written."""
    simple = world.serve.simple
    name = re.sub(r"\W+", "-", client)
    proj = world.root / "projects" / name
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True)
    env = client_env(world, name)
    deps = ", ".join(f'"{r}"' for r in LOCK_REQS)
    if client == "pip-compile":
        _write(proj / "requirements.in", "\n".join(LOCK_REQS) + "\n")
        argv = [sys.executable, "-m", "piptools", "compile", "--generate-hashes",
                "--allow-unsafe", "--strip-extras", "--index-url", simple,
                "-o", "requirements.txt", "requirements.in"]
        cmd = f"pip-compile --generate-hashes --allow-unsafe --strip-extras --index-url {simple} " \
              "-o requirements.txt requirements.in"
        return cmd, proj / "requirements.txt", argv, env
    if client == "uv pip compile":
        _write(proj / "requirements.in", "\n".join(LOCK_REQS) + "\n")
        argv = [uv_bin(), "pip", "compile", "--generate-hashes", "--python-version", PY,
                "--index-url", simple, "requirements.in", "-o", "requirements.txt"]
        cmd = f"uv pip compile --generate-hashes --python-version {PY} --index-url {simple} " \
              "requirements.in -o requirements.txt"
        return cmd, proj / "requirements.txt", argv, env
    if client == "uv lock":
        _write(proj / "pyproject.toml", f"""\
[project]
name = "app"
version = "0.1.0"
requires-python = "=={PY}.*"
dependencies = [{deps}]

[[tool.uv.index]]
name = "serve"
url = "{simple}"
default = true
""")
        env.pop("UV_NO_CONFIG")  # [tool.uv.index] is the point
        env["UV_PYTHON"] = base_python()
        return "uv lock  # pyproject: one [[tool.uv.index]] (default = true)", \
            proj / "uv.lock", [uv_bin(), "lock"], env
    if client == "poetry lock":
        assert tools is not None
        _write(proj / "pyproject.toml", f"""\
[project]
name = "app"
version = "0.1.0"
requires-python = "~={PY}.0"
dependencies = [{deps}]

[tool.poetry]
package-mode = false

[[tool.poetry.source]]
name = "serve"
url = "{simple}"
priority = "primary"
""")
        run([base_python(), "-m", "venv", "--without-pip", proj / ".venv"])
        return "poetry lock  # pyproject: one [[tool.poetry.source]] (primary)", \
            proj / "poetry.lock", [tools.poetry, "--no-ansi", "lock"], env
    if client == "pdm lock":
        assert tools is not None
        _write(proj / "pyproject.toml", f"""\
[project]
name = "app"
version = "0.1.0"
requires-python = "=={PY}.*"
dependencies = [{deps}]

[tool.pdm]
distribution = false

[[tool.pdm.source]]
name = "pypi"
url = "{simple}"
""")
        run([base_python(), "-m", "venv", "--without-pip", proj / ".venv"])
        env["PDM_PYTHON"] = str(proj / ".venv" / "bin" / "python")
        return "pdm lock  # pyproject: [[tool.pdm.source]] named pypi (replaces PyPI)", \
            proj / "pdm.lock", [tools.pdm, "lock"], env
    if client == "pip lock":
        _write(proj / "requirements.in", "\n".join(LOCK_REQS) + "\n")
        venv = make_venv(proj / ".venv", with_spacy=False, env=env)
        argv = [venv.python, "-m", "pip", "lock", "--index-url", simple, "-r", "requirements.in",
                "-o", "pylock.toml"]
        return f"pip lock --index-url {simple} -r requirements.in -o pylock.toml", \
            proj / "pylock.toml", argv, env
    raise ValueError(client)  # pragma: no cover


def client_version(client: str, tools: Tools | None, env: dict[str, str]) -> str:
    if client == "pip-compile":
        return importlib.metadata.version("pip-tools")
    if client.startswith("uv"):
        return tool_version([uv_bin(), "--version"], env).split()[1]
    if client == "pip lock":
        return tool_version([sys.executable, "-m", "pip", "--version"], env).split()[1]
    assert tools is not None
    return tools.versions()["poetry" if client.startswith("poetry") else "pdm"]


@pytest.mark.parametrize("client", LOCKERS)
def test_lock_through_serve(client, world, report, request):
    """2. Lock spacy>=3.8,<3.9 + en_core_web_sm==3.8.0 through serve: works, a sha256 on
    every pin, no credential, no 5xx, and no whole file fetched to compute a hash."""
    first_install(world, report)  # the serve cache state the lockers meet (warm metadata)
    tools = request.getfixturevalue("tools") if client in ("poetry lock", "pdm lock") else None
    cmd, lock, argv, env = run_locker(client, world, tools)
    row = report.row(client)
    row.command = cmd
    row.version = client_version(client, tools, env)
    t0 = time.monotonic()
    with world.serve.window() as w:
        out = run(argv, env=env, cwd=lock.parent, timeout=900)
    row.seconds = time.monotonic() - t0
    record_window(row, w)
    assert not w.server_errors, describe_5xx(w, world)
    text = lock.read_text()
    assert_no_secret(text, out.stdout, out.stderr)
    assert_only_serve_urls(text, world)
    pins = lock_pins(client, lock)
    row.pins = len(pins)
    unhashed = sorted(n for n, (_, hashes) in pins.items() if not hashes)
    bad = sorted(n for n, (_, hashes) in pins.items()
                 if any(not h.startswith("sha256:") for h in hashes))
    row.hashes_on_every_pin = not unhashed and not bad
    assert row.hashes_on_every_pin, {"no hash": unhashed, "not sha256": bad}
    version, hashes = pins["en-core-web-sm"]
    assert version == MODEL_VERSION
    assert f"sha256:{world.sm.sha256}" in hashes
    assert pins["spacy"][0].startswith("3.8.")
    assert {"thinc", "numpy", "pydantic"} <= set(pins)
    row.works = True
    # the goal: no whole file fetched to compute a hash (or to read metadata), by the client
    # from serve, nor by serve from upstream
    assert not w.whole_files, [str(a) for a in w.whole_files]
    assert not w.new_cached_files, w.new_cached_files


# ----------------------------------------------------------------------------- warm install
def test_second_install_moves_nothing_upstream(world, report):
    """3. The same install into another fresh venv (cold pip cache): every file is a serve
    cache hit, serve fetches no file upstream and the fake GitHub sees no download."""
    first = first_install(world, report)
    gh_before = gh_downloads(world)
    row, w, versions = pip_install(world, "pip-second", report, label="pip install (warm serve)")
    assert versions == first
    misses = [str(a) for a in w.file_requests if a.cache != "hit"]
    assert not misses, misses
    assert w.whole_files  # pip downloaded them all again (no HTTP cache over plain http)...
    # ...from serve's cache: nothing new stored, no file fetched upstream, GitHub untouched
    assert not w.new_cached_files and not w.new_metadata, w.new_cached_files
    assert not w.upstream_whole_files, [u.url for u in w.upstream_whole_files]
    assert gh_downloads(world) == gh_before
    files = [u.url for u in w.upstream if "/simple/" not in u.url
             and not u.url.startswith(world.gh.api_url)]
    assert not files, files
    row.notes.append(f"file requests: {len(w.file_requests)}, all cache hits; nothing new in "
                     "serve's cache; fake GitHub download requests: 0")


# ----------------------------------------------------------------------------- pip versions
def old_pip_venv(world: World, name: str) -> tuple[Path, dict[str, str]]:
    """A venv made by ``python3 -m venv`` (the pip ensurepip bundles, not upgraded)."""
    env = client_env(world, name)
    path = world.root / "venvs" / name
    shutil.rmtree(path, ignore_errors=True)
    run([base_python(), "-m", "venv", path], env=env)
    return path / "bin" / "python", env


@pytest.mark.parametrize("pip", ["venv", "ensurepip"])
def test_pip_versions_dry_run_and_install(pip, world, report):
    """4. ``pip install --dry-run`` with the current pip and with the pip that ``python3 -m
    venv`` ships (ensurepip's, not upgraded), then a real install with the old one.

    Both resolve from PEP 658 ``.metadata`` files. pip 23.2.1 then downloads every resolved
    wheel anyway, in ``--dry-run`` too: its resolver ends with
    ``preparer.prepare_linked_requirements_more(reqs)`` (resolvelib/resolver.py), which
    fetches the files of metadata-only candidates, before ``install`` looks at
    ``--dry-run`` (pypa/pip#12603). pypa/pip#13482 moved that call after the ``--dry-run``
    return of ``pip install``; the venv's pip has it. So the old pip's count is recorded and
    checked to be "one per resolved wheel, all from serve's cache", not 0."""
    first_install(world, report)
    name = f"pip-{pip}"
    if pip == "venv":
        env = client_env(world, name)
        python = make_venv(world.root / "venvs" / name, with_spacy=False, env=env).python
    else:
        python, env = old_pip_venv(world, name)
    version = tool_version([python, "-m", "pip", "--version"], env).split()[1]
    if pip == "ensurepip":
        assert version == ensurepip.version()
    argv = ["install", "--dry-run", "--index-url", world.serve.simple, *INSTALL]
    row = report.row(f"pip {version} --dry-run")
    row.command = "pip " + " ".join(argv)
    row.version = version
    t0 = time.monotonic()
    with world.serve.window() as w:
        out = run([python, "-m", "pip", *argv], env=env, timeout=900)
    row.seconds = time.monotonic() - t0
    sizes = world.state.get("sizes")
    record_window(row, w, sizes)
    assert not w.server_errors, describe_5xx(w, world)
    assert_no_secret(out.stdout, out.stderr)
    (would,) = [line for line in out.stdout.splitlines() if line.startswith("Would install ")]
    would_install = would.removeprefix("Would install ").split()
    assert f"en_core_web_sm-{MODEL_VERSION}" in would_install or \
        f"en-core-web-sm-{MODEL_VERSION}" in would_install, would
    row.works = True
    assert len(w.metadata) >= len(would_install)  # PEP 658 metadata used (both pips)
    if pip == "venv":
        assert not w.whole_files, [str(a) for a in w.whole_files]
    else:
        # pypa/pip#12603: one whole wheel per "Would install" item, after the resolution
        assert len(w.whole_files) == len(would_install), [str(a) for a in w.whole_files]
        assert not w.upstream_whole_files and not w.new_cached_files  # from serve's cache
        if sizes and w.wchar is not None:  # the bodies really went out (0B in the access log)
            assert w.wchar >= 0.9 * sum(sizes.get(a.filename, 0) for a in w.whole_files)
        row.notes.append(f"pip {version} --dry-run: {len(w.whole_files)} whole wheels after "
                         "resolving from .metadata (pypa/pip#12603; fixed by pypa/pip#13482)")
    if pip != "ensurepip":
        return
    row = report.row(f"pip {version} install")
    argv = ["install", "--index-url", world.serve.simple, *INSTALL]
    row.command = "pip " + " ".join(argv)
    row.version = version
    t0 = time.monotonic()
    with world.serve.window() as w:
        out = run([python, "-m", "pip", *argv], env=env, timeout=900)
    row.seconds = time.monotonic() - t0
    record_window(row, w, sizes)
    assert not w.server_errors, describe_5xx(w, world)
    assert_no_secret(out.stdout, out.stderr)
    loaded = run([python, "-c", LOAD], env=env).stdout.split()
    assert loaded[0] == MODEL_VERSION
    row.works = True
    assert all(a.cache == "hit" for a in w.file_requests), [str(a) for a in w.file_requests]
    assert not w.new_cached_files, w.new_cached_files


# ----------------------------------------------------------------------------- serve itself
def test_serve_log_has_no_secret_and_no_5xx(world):
    """Last: over the whole module, serve answered no 5xx and logged no credential."""
    world.serve.sync()
    text = world.serve.text()
    for secret in SECRETS:
        assert secret not in text, "serve logged a credential"
    errors = [line for line in text.splitlines() if re.search(r" 5\d\d \d+B ", line)]
    assert not errors, errors
