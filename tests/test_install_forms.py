"""`spacy-index install` / `download`, exactly as asked: every way to name a pipeline, every
kind of --index, uv and pip, --no-deps, --force, a no-op that costs nothing, and Ctrl-C / a
lost network that keeps (and later resumes) what was downloaded.

Each install asserts what got installed (name, version, the installer, the hash of the file
it came from) and what did not (no spaCy with --no-deps).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from spacy_index.cli import main
from spacy_index.install import Environment, SpacyTarget, resolve_spacy
from spacy_index.model import Distribution
from spacy_index.model_spacy import spacy_compatible, spacy_series
from tests.clients import clean_env, make_venv, serve_directory
from tests.fakegithub import FakeGitHub, Fault
from tests.servers import StoppableHTTPServer, serve_http
from tests.wheels import meta_archive

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*W095:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*W094:UserWarning")]

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gh(model_wheels):
    """Four en_core_web_sm releases: 3.8.50 and 3.8.40 for spaCy 3.8, 3.7.50 for 3.7, and
    2.0.50 with a v2-style open requirement (spacy>=2.0.0, technically admitting 3.8)."""
    pkgs = {
        "new": model_wheels(version="3.8.50"),
        "older": model_wheels(version="3.8.40"),
        "old": model_wheels(version="3.7.50", spacy_version=">=3.7.2,<3.8.0"),
        "v2": model_wheels(version="2.0.50", spacy_version=">=2.0.0"),
    }
    with FakeGitHub(load_fixture=False, archive=meta_archive(pkgs.values())) as fake:
        for p in pkgs.values():
            fake.add_release(f"{p.project}-{p.version}", {p.wheel.name: p.wheel.read_bytes()})
        fake.packages = pkgs
        yield fake


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """The installers main() starts see no machine-wide pip/uv settings (PIP_FIND_LINKS...)
    and use a per-test uv cache."""
    clean = clean_env(cache_dir=tmp_path / "clients")
    for key in list(os.environ):
        if key not in clean:
            monkeypatch.delenv(key)
    for key, value in clean.items():
        monkeypatch.setenv(key, value)
    return clean


def env_for(gh, cache):
    return {"GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(cache)}


def line(pkg):
    return f"en-core-web-sm=={pkg.version} --hash=sha256:{pkg.sha256}"


def installed_from(venv, name="en_core_web_sm"):
    """(version, installer, sha256 of the file it was installed from) of ``name``."""
    site = venv.site_packages
    (info,) = [p for p in site.iterdir() if p.name.startswith(name + "-") and p.name.endswith(".dist-info")]
    version = info.name[len(name) + 1 : -len(".dist-info")]
    installer = (info / "INSTALLER").read_text().strip()
    direct = json.loads((info / "direct_url.json").read_text())
    source = Path(unquote(urlsplit(direct["url"]).path))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    recorded = direct.get("archive_info", {}).get("hashes", {}).get("sha256")
    if recorded is not None:  # pip records the hash it checked
        assert recorded == sha
    return version, installer, sha


def has(venv, name):
    return any(p.name.lower().startswith(name + "-") for p in venv.site_packages.iterdir())


# ----------------------------------------------------------------------------- the rule
def test_one_compatibility_rule():
    """spaCy's meaning: the requirement admits it AND it is for that X.Y series."""
    v2 = SpecifierSet(">=2.0.0")
    assert spacy_series(v2) == (2, 0) and spacy_series(SpecifierSet(">=3.7.2,<3.8.0")) == (3, 7)
    assert v2.contains("3.8.0")  # what made build --spacy 3.8 keep v2 pipelines
    assert not spacy_compatible(v2, Version("3.8")) and not spacy_compatible(v2, Version("3.8.2"))
    assert spacy_compatible(v2, Version("2.0")) and not spacy_compatible(v2, Version("2.1"))
    spec = SpecifierSet(">=3.7.2,<3.8.0")
    assert spacy_compatible(spec, Version("3.7"))  # the series: some 3.7.x fits
    assert not spacy_compatible(spec, Version("3.7.0")) and spacy_compatible(spec, Version("3.7.5"))
    assert not spacy_compatible(spec, Version("3.8")) and not spacy_compatible(None, Version("3.7"))
    assert spacy_compatible(SpecifierSet(">=3.0.0a41,<3.1.0"), Version("3.0"))
    # install's SpacyTarget (which the catalogue page calls) delegates to the same rule
    target = resolve_spacy("3.8", Environment("", None, {}, False))
    assert isinstance(target, SpacyTarget) and str(target) == "3.8.x" and target.version == Version("3.8")
    old_api = SpacyTarget("3.8.x", (Version("3.8.0"), Version("3.8.1")))  # positional, as callers build it
    for spec in ("<3.9.0,>=3.8.0", ">=2.0.0", "<3.8.0,>=3.7.2"):
        dist = Distribution(project="en-core-web-sm", filename="en_core_web_sm-1.0-py3-none-any.whl",
                            url="https://x/", version=Version("1.0"), kind="wheel",
                            requires_dist=(f"spacy{spec}",))
        assert target.admits(dist) == old_api.admits(dist) == spacy_compatible(SpecifierSet(spec), Version("3.8"))


def test_v2_pipelines_never_count_for_spacy_3(gh, tmp_path, capsys):
    env = env_for(gh, tmp_path / "c")
    assert main(["list", "--json", "--spacy", "3.8"], env=env) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["versions"] == ["3.8.40", "3.8.50"]
    assert main(["install", "en_core_web_sm==2.0.50", "--spacy", "3.8", "--dry-run"], env=env) == 1
    err = capsys.readouterr().err
    assert "no version of en_core_web_sm==2.0.50 works with spaCy 3.8.x" in err
    assert "spaCy versions that have one: 2.0" in err and "--force" in err
    out = tmp_path / "mirror"
    assert main(["build", "--mirror", "--spacy", "3.8", "--out", str(out), "-q"], env=env) == 0
    files = sorted(p.name for p in (out / "files").glob("*.whl"))
    assert files == [gh.packages["older"].wheel.name, gh.packages["new"].wheel.name]
    capsys.readouterr()
    assert main(["build", "--spacy", "2.0", "--out", str(tmp_path / "v2"), "-q"], env=env) == 0
    assert "en_core_web_sm-2.0.50" in (tmp_path / "v2" / "find-links.html").read_text()
    assert "3.8.50" not in (tmp_path / "v2" / "find-links.html").read_text()


# ----------------------------------------------------------------------------- the forms
@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["en_core_web_sm"], "new"),
        (["en-core-web-sm"], "new"),
        (["en_core_web_sm==3.8.40"], "older"),
        (["en_core_web_sm-3.8.40"], "older"),  # spaCy's --direct form
        (["en_core_web_sm>=3.8,<3.8.45"], "older"),
        (["en_core_web_sm~=3.8.0"], "new"),
        (["en_core_web_sm>=3.7,<3.8", "--spacy", "3.7"], "old"),
        (["en_core_web_sm>=3.7,<3.8", "--force"], "old"),  # not for 3.8: only with --force
        (["en_core_web_sm==2.0.50", "--force"], "v2"),
    ],
)
def test_every_form_chooses_exactly(gh, tmp_path, capsys, argv, expect):
    spacy = [] if "--spacy" in argv else ["--spacy", "3.8"]
    assert main(["install", *argv, *spacy, "--dry-run"], env=env_for(gh, tmp_path / "c")) == 0
    assert capsys.readouterr().out.strip() == line(gh.packages[expect])


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["en_core_web_sm>=3.7,<3.8"], 1, "no version of en_core_web_sm<3.8,>=3.7 works with spaCy 3.8.x"),
        (["en_core_web_sm==9.9"], 1, "no hashed wheel of en_core_web_sm matches ==9.9; versions with one: 2.0.50"),
        (["en_core_web_sm @ https://example.invalid/x.whl"], 2, "a direct URL is not a pipeline name"),
        (["en_core_web_sm>>3"], 2, "is not a pipeline name, NAME==VERSION, NAME-VERSION"),
        (["en_core_web_smm-3.8.0"], 2, "no spaCy pipeline named 'en_core_web_smm'; did you mean en_core_web_sm"),
    ],
)
def test_forms_that_do_not_fit_are_one_line(gh, tmp_path, capsys, argv, code, says):
    assert main(["install", *argv, "--spacy", "3.8", "--dry-run"], env=env_for(gh, tmp_path / "c")) == code
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_uv_no_deps_installs_the_pipeline_alone(gh, tmp_path, capsys, isolated):
    """The issue's case: `--spacy 3.8 --python NEW -- --no-deps` installed spaCy too."""
    older = gh.packages["older"]
    venv = make_venv(tmp_path / "v", with_spacy=False, env=isolated)
    env = env_for(gh, tmp_path / "c")
    assert main(["install", "en_core_web_sm-3.8.40", "--spacy", "3.8", "--python", str(venv.python),
                 "--", "--no-deps"], env=env) == 0
    err = capsys.readouterr().err
    assert installed_from(venv) == ("3.8.40", "uv", older.sha256)
    assert not has(venv, "spacy")
    assert "installed with uv pip install (link mode hardlink" in err
    assert "--no-deps: not installed: spacy>=3.8.0,<3.9.0" in err
    # and --no-deps as install's own option, with pip
    other = make_venv(tmp_path / "w", with_spacy=False, env=isolated)
    assert main(["install", "en_core_web_sm>=3.8,<3.8.45", "--spacy", "3.8", "--no-deps",
                 "--installer", "pip", "--python", str(other.python)], env=env) == 0
    assert "installed with pip install in" in capsys.readouterr().err
    assert installed_from(other) == ("3.8.40", "pip", older.sha256)
    assert not has(other, "spacy")


def test_pip_installer_and_already_installed_costs_nothing(gh, tmp_path, capsys, isolated):
    new = gh.packages["new"]
    venv = make_venv(tmp_path / "v", env=isolated)  # with spaCy: its requirement is satisfied
    env = env_for(gh, tmp_path / "c")
    assert main(["install", "en_core_web_sm", "--installer", "pip", "--python", str(venv.python)],
                env=env) == 0
    assert installed_from(venv) == ("3.8.50", "pip", new.sha256)
    capsys.readouterr()
    n = len(gh.requests)
    assert main(["install", "en_core_web_sm", "--python", str(venv.python)], env=env) == 0
    assert "en-core-web-sm 3.8.50 is already installed" in capsys.readouterr().err
    assert len(gh.requests) == n
    # a stale catalog still answers a no-op without the network
    catalog = next((tmp_path / "c").glob("catalog-*.json"))
    os.utime(catalog, (0, 0))
    assert main(["install", "en_core_web_sm==3.8.50", "--python", str(venv.python)], env=env) == 0
    assert len(gh.requests) == n and "already installed" in capsys.readouterr().err


def test_no_op_imports_no_http_library_and_no_rich(gh, tmp_path, isolated):
    """In a fresh interpreter, as the console script runs it: the answer, no network, and
    none of httpx, rich or asyncio imported."""
    venv = make_venv(tmp_path / "v", env=isolated)
    env = {**isolated, **env_for(gh, tmp_path / "c")}
    assert main(["install", "en_core_web_sm", "--python", str(venv.python)], env=env) == 0
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from spacy_index.cli import main\n"
        f"code = main(['install', 'en_core_web_sm', '--python', {str(venv.python)!r}])\n"
        "took = time.perf_counter() - t\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'httpcore', 'rich', "
        "'asyncio', 'ssl', 'starlette', 'spacy_index.api'})\n"
        "print(code, heavy, took, file=sys.stderr)\n"
    )
    n = len(gh.requests)
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO / "src")},
                          capture_output=True, text=True, timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("0 [] "), proc.stderr  # exit 0, nothing heavy imported
    assert "en-core-web-sm 3.8.50 is already installed" in proc.stderr
    assert len(gh.requests) == n  # no network (its time: bench/install.py, never a test)


def test_deps_come_from_the_index_named_with_the_same_installer(gh, tmp_path, capsys, isolated):
    """Without --no-deps the missing requirement (spaCy) is installed from --index, with
    the installer that installed the pipeline: a stand-in spacy 3.8.99 exists only there."""
    env = env_for(gh, tmp_path / "c")
    out = tmp_path / "mirror"
    assert main(["build", "--mirror", "--spacy", "3.8", "--out", str(out), "-q"], env=env) == 0
    _add_project(out, "spacy", "3.8.99")
    new = gh.packages["new"]
    capsys.readouterr()
    for installer in ("uv", "pip"):
        venv = make_venv(tmp_path / installer, with_spacy=False, env=isolated)
        assert main(["install", "en_core_web_sm", "--spacy", "3.8", "--installer", installer,
                     "--index", str(out), "--python", str(venv.python)], env=env) == 0
        err = capsys.readouterr().err
        assert installed_from(venv) == ("3.8.50", installer, new.sha256)
        assert venv.installed()["spacy"] == "3.8.99"
        assert (venv.site_packages / "spacy-3.8.99.dist-info" / "INSTALLER").read_text().strip() == installer
        assert f"installed its requirements spacy>=3.8.0,<3.9.0 from {out}" in err
    # an index that lacks the requirement: one line that says so
    bare = tmp_path / "bare-mirror"
    assert main(["build", "--mirror", "--spacy", "3.8", "--out", str(bare), "-q"], env=env) == 0
    capsys.readouterr()
    venv = make_venv(tmp_path / "lacking", with_spacy=False, env=isolated)
    assert main(["install", "en_core_web_sm", "--spacy", "3.8", "--index", str(bare),
                 "--python", str(venv.python)], env=env) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: uv failed (exit 1) installing the requirements of "
                           "en_core_web_sm-3.8.50-py3-none-any.whl (spacy>=3.8.0,<3.9.0) from ")
    assert "holds only pipelines" in last and "--no-deps" in last
    assert installed_from(venv)[0] == "3.8.50" and not has(venv, "spacy")


def test_every_kind_of_index(gh, tmp_path, capsys, isolated, monkeypatch):
    """A build --mirror folder (relative path, file:// of it and of its simple/), a plain
    build folder, and the same folder over HTTP."""
    env = env_for(gh, tmp_path / "c")
    mirror, plain = tmp_path / "mirror", tmp_path / "plain"
    assert main(["build", "--mirror", "--out", str(mirror), "-q"], env=env) == 0
    assert main(["build", "--out", str(plain), "-q"], env=env) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    new, older = gh.packages["new"], gh.packages["older"]
    with serve_directory(tmp_path) as static:
        for index in ("./mirror", "mirror/", mirror.as_uri(), mirror.as_uri() + "/simple/",
                      "./plain", static.url + "/mirror/simple/", static.url + "/plain/simple"):
            assert main(["install", "en_core_web_sm-3.8.40", "--spacy", "3.8", "--dry-run",
                         "--index", index], env=env) == 0, index
            assert capsys.readouterr().out.strip() == line(older), index
        # really install from the relative mirror path (relative links resolved)
        venv = make_venv(tmp_path / "v", with_spacy=False, env=isolated)
        before = len(gh.requests)
        assert main(["install", "en_core_web_sm", "--spacy", "3.8", "--no-deps", "--index",
                     "./mirror", "--python", str(venv.python)], env=env) == 0
        assert installed_from(venv)[1:] == ("uv", new.sha256)
        assert not [r for r in gh.requests[before:] if r.path.endswith(".whl")]
        assert "index ./mirror" in capsys.readouterr().err
        # and over HTTP from the mirror: the file is downloaded from that server
        other = make_venv(tmp_path / "w", with_spacy=False, env=isolated)
        assert main(["install", "en_core_web_sm==3.8.40", "--spacy", "3.8", "--no-deps",
                     "--index", static.url + "/mirror/simple/", "--python", str(other.python),
                     "--cache-dir", str(tmp_path / "c2")], env=env) == 0
        assert installed_from(other) == ("3.8.40", "uv", older.sha256)
        assert "downloaded and verified" in capsys.readouterr().err
    assert not [r for r in gh.requests[before:] if r.path.endswith(".whl")]


def test_download_alias_has_spacys_shape(gh, tmp_path, capsys, isolated):
    env = env_for(gh, tmp_path / "c")
    venv = make_venv(tmp_path / "v", with_spacy=False, env=isolated)
    # python -m spacy download en_core_web_sm-3.8.40 --direct --no-deps
    assert main(["download", "en_core_web_sm-3.8.40", "--direct", "--no-deps", "--python",
                 str(venv.python)], env=env) == 0
    assert installed_from(venv) == ("3.8.40", "uv", gh.packages["older"].sha256)
    assert not has(venv, "spacy")
    capsys.readouterr()
    # pip arguments after the name, as spaCy passes them: one uv does not share picks pip
    full = make_venv(tmp_path / "full", env=isolated)
    assert main(["download", "en_core_web_sm", "--no-warn-script-location", "--python",
                 str(full.python)], env=env) == 0
    assert "installed with pip install" in capsys.readouterr().err
    assert installed_from(full) == ("3.8.50", "pip", gh.packages["new"].sha256)
    for argv, says in (
        (["download", "en_core_web_sm", "--direct"], "--direct needs NAME-VERSION"),
        (["download", "en_core_web_sm", "--sdist"], "spacy-index installs wheels"),
        (["install", "en_core_web_sm", "--no-warn-script-location"], "unrecognized arguments"),
    ):
        assert main([*argv, "--dry-run"], env=env) == 2
        assert says in capsys.readouterr().err


# ----------------------------------------------------------------------------- interrupted
def test_a_lost_network_keeps_the_partial_and_the_next_run_resumes(model_wheels, tmp_path, capsys, isolated):
    big = model_wheels(name="core_web_md", version="3.8.50", pad_bytes=6 << 20)
    size = big.wheel.stat().st_size
    with FakeGitHub(load_fixture=False, archive=meta_archive([big])) as fake:
        fake.add_release(f"{big.project}-{big.version}", {big.wheel.name: big.wheel.read_bytes()})
        env = env_for(fake, tmp_path / "c")
        fake.inject(Fault.reset_connection(after_bytes=512 << 10, times=20))
        venv = make_venv(tmp_path / "v", with_spacy=False, env=isolated)
        argv = ["install", "en_core_web_md", "--spacy", "3.8", "--no-deps", "--python", str(venv.python)]
        assert main(argv, env=env) == 1
        err = capsys.readouterr().err
        assert "cannot reach the download of en_core_web_md-3.8.50-py3-none-any.whl" in err
        assert "bytes of it are kept in the cache and the same command resumes from there" in err
        partial = tmp_path / "c" / "partial" / f"{big.sha256}.partial"
        kept = partial.stat().st_size
        assert 0 < kept < size
        fake._faults.clear()
        n = len(fake.requests)
        assert main(argv, env=env) == 0
        err = capsys.readouterr().err
        assert f"resuming the download kept from before ({kept:,} bytes)" in err
        objects = [r for r in fake.requests[n:] if r.origin == "objects"]
        assert objects[0].headers.get("range") == f"bytes={kept}-"
        assert sum(r.bytes_sent for r in objects) == size - kept  # not restarted from byte 0
        assert installed_from(venv, "en_core_web_md") == ("3.8.50", "uv", big.sha256)
        assert not partial.exists()


class _SlowFiles(StoppableHTTPServer):
    """A PEP 691 index of one wheel whose download stops after ``stall_after`` bytes until
    ``release`` is set (bounded: 30 s), with Range support; records Range headers."""

    wheel: Path
    project: str
    sha: str
    metadata: bytes
    stall_after: int | None
    release: threading.Event
    ranges: list[str | None]
    sent: int


@contextlib.contextmanager
def _slow_files(wheel: Path, project: str, sha: str, metadata: bytes, *,
                stall_after: int | None) -> Iterator[_SlowFiles]:
    with serve_http(_SlowHandler, server_class=_SlowFiles, name="slow-files") as server:
        server.wheel, server.project, server.sha, server.metadata = wheel, project, sha, metadata
        server.stall_after, server.release, server.ranges, server.sent = (
            stall_after, threading.Event(), [], 0)
        try:
            yield server
        finally:
            server.release.set()  # a stalled body ends: stopping need not wait for its thread


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    server: _SlowFiles

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        if self.path.rstrip("/") == f"/simple/{srv.project}":
            doc = {"meta": {"api-version": "1.1"}, "name": srv.project, "files": [{
                "filename": srv.wheel.name, "url": f"{base}/files/{srv.wheel.name}",
                "hashes": {"sha256": srv.sha}, "size": srv.wheel.stat().st_size,
                "core-metadata": {"sha256": hashlib.sha256(srv.metadata).hexdigest()}}]}
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == f"/files/{srv.wheel.name}.metadata":
            self.send_response(200)
            self.send_header("Content-Length", str(len(srv.metadata)))
            self.end_headers()
            self.wfile.write(srv.metadata)
            return
        if self.path != f"/files/{srv.wheel.name}":
            self.send_error(404)
            return
        data = srv.wheel.read_bytes()
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        pos = start
        try:
            while pos < len(data):
                if srv.stall_after is not None and pos >= srv.stall_after:
                    srv.release.wait(30)
                    return
                chunk = data[pos : pos + (256 << 10)]
                self.wfile.write(chunk)
                srv.sent += len(chunk)
                pos += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_ctrl_c_says_what_was_kept_and_the_next_run_resumes(model_wheels, tmp_path, isolated, capsys):
    big = model_wheels(name="core_web_md", version="3.8.50", pad_bytes=6 << 20)
    size = big.wheel.stat().st_size
    with _slow_files(big.wheel, "en-core-web-md", big.sha256, big.metadata,
                     stall_after=2 << 20) as server:
        index = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        cache = tmp_path / "c"
        venv = make_venv(tmp_path / "v", with_spacy=False, env=isolated)
        argv = ["install", "en_core_web_md", "--spacy", "3.8", "--no-deps", "--index", index,
                "--python", str(venv.python), "--cache-dir", str(cache)]
        env = {**isolated, "PYTHONPATH": str(REPO / "src"), "GITHUB_API_URL": "http://127.0.0.1:9"}
        proc = subprocess.Popen([sys.executable, "-m", "spacy_index", *argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        partial = cache / "partial" / f"{big.sha256}.partial"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if partial.exists() and partial.stat().st_size >= 2 << 20:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)  # as Ctrl-C does
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        last = err.strip().splitlines()[-1]
        assert last == (f"interrupted: {big.wheel.name} is not complete; its first {2 << 20:,} "
                        f"of {size:,} bytes are kept in the cache and the same command resumes "
                        "from there"), err
        assert "Traceback" not in err and partial.stat().st_size == 2 << 20
        assert not has(venv, "en_core_web_md")
        # the next run asks only for the rest
        server.stall_after = None
        server.release.set()
        server.sent = 0
        assert main(argv, env={"GITHUB_API_URL": "http://127.0.0.1:9"}) == 0
        assert server.ranges[-1] == f"bytes={2 << 20}-" and server.sent == size - (2 << 20)
        assert installed_from(venv, "en_core_web_md") == ("3.8.50", "uv", big.sha256)
        assert "resuming the download kept from before" in capsys.readouterr().err


# ----------------------------------------------------------------------------- helpers
def _add_project(root: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel of ``name`` in a built index folder (page + file)."""
    filename = f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}_standin/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def record_hash(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{dist}/RECORD", record)
    data = buf.getvalue()
    (root / "files" / filename).write_bytes(data)
    page = root / "simple" / name
    page.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(data).hexdigest()
    (page / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{filename}#sha256={sha}">{filename}</a>'
        "</body></html>\n")


def test_probe_is_kept_until_the_environment_changes(tmp_path, monkeypatch, isolated):
    """The answer of the probe subprocess is reused while the interpreter, its sys.path
    variables and every folder on sys.path are unchanged; installing anything changes a
    folder's mtime, and the next probe runs again."""
    from spacy_index.install import environment as inst

    venv = make_venv(tmp_path / "v", with_spacy=False, env=isolated)
    site = venv.site_packages
    old = time.time() - 60
    os.utime(site, (old, old))  # not "just changed" (racy folders are not kept)
    runs = []
    real = inst._run_probe

    def counting(python):
        runs.append(python)
        return real(python)

    monkeypatch.setattr(inst, "_run_probe", counting)
    cache = tmp_path / "c"
    first = inst.probe(str(venv.python), cache)
    assert "pip" in first.installed and len(runs) == 1
    assert inst.probe(str(venv.python), cache).installed == first.installed and len(runs) == 1
    (site / "en_core_web_sm-3.8.50.dist-info").mkdir()  # what an install does
    again = inst.probe(str(venv.python), cache)
    assert again.installed["en-core-web-sm"] == "3.8.50" and len(runs) == 2
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # another sys.path
    inst.probe(str(venv.python), cache)
    assert len(runs) == 3


def test_ctrl_c_while_the_installer_runs(gh, tmp_path, isolated):
    """Ctrl-C while uv runs: uv is stopped, the line says the verified wheel stays and the
    same command finishes; exit 130, no traceback."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    pidfile = tmp_path / "uv.pid"
    (fake_bin / "uv").write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    (fake_bin / "uv").chmod(0o755)
    venv = make_venv(tmp_path / "v", with_spacy=False, env=isolated)
    env = {**isolated, **env_for(gh, tmp_path / "c"), "PYTHONPATH": str(REPO / "src"),
           "PATH": f"{fake_bin}{os.pathsep}{isolated.get('PATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "spacy_index", "install", "en_core_web_sm",
                             "--spacy", "3.8", "--no-deps", "--python", str(venv.python)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        uv_pid = int(pidfile.read_text())
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "interrupted while uv was installing en_core_web_sm-3.8.50-py3-none-any.whl: the "
        "verified wheel stays in the cache; run the same command again to finish (nothing is "
        "downloaded again)")
    assert "Traceback" not in err and not has(venv, "en_core_web_sm")
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # terminated by spacy-index (reaped: it was its child)
            os.kill(uv_pid, 0)
            time.sleep(0.05)


def test_mirror_progress_lines_for_ci_logs():
    """Not a terminal: one line per finished file, with the run's bytes, speed and time left."""
    from spacy_index.mirror import PlainProgress

    lines: list[str] = []
    now = [100.0]
    progress = PlainProgress(lines.append, clock=lambda: now[0])

    def dist(name, size):
        return Distribution(project="en-core-web-lg", filename=name, url="https://x/",
                            version=Version("3.8.0"), kind="wheel", size=size)

    progress.start(3, 600_000_000)
    progress.done(dist("a-3.8.0-py3-none-any.whl", 100_000_000), 100_000_000, downloaded=False)
    now[0] += 10
    progress.done(dist("b-3.8.0-py3-none-any.whl", 250_000_000), 250_000_000, downloaded=True)
    now[0] += 10
    progress.done(dist("c-3.8.0-py3-none-any.whl", 250_000_000), 250_000_000, downloaded=True)
    assert lines == [
        "mirroring 3 files (0.60 GB) through the cache",
        "[1/3] a-3.8.0-py3-none-any.whl: 100,000,000 bytes, already in the cache",
        "[2/3] b-3.8.0-py3-none-any.whl: 250,000,000 bytes, downloaded and verified; "
        "0.25 GB downloaded, 25.0 MB/s, about 10s left",
        "[3/3] c-3.8.0-py3-none-any.whl: 250,000,000 bytes, downloaded and verified; "
        "0.50 GB downloaded, 25.0 MB/s",
    ]
