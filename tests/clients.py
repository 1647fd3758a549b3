"""Run real package clients (pip, uv, pip-tools) in fresh, isolated venvs.

The machine this project is developed on has a global pip configuration
(``/etc/pip.conf``, ``/etc/xdg/pip/pip.conf``, ``~/.config/pip/pip.conf``) and
``PIP_*`` environment variables that add extra indexes, find-links and a
constraint file.  A test that runs pip must not see any of that, otherwise it
could silently install from somewhere other than the index under test.
:func:`clean_env` builds the environment for such subprocesses.

Fresh venvs with spaCy
----------------------
End-to-end tests install a pipeline package from an index that holds *only*
model packages, while every model depends on ``spacy``.  The venv must
therefore already contain spaCy.  :func:`make_venv` does that without any
network access and in well under a second by *cloning* the installed
distributions (spaCy and its dependency closure, pip, optionally pip-tools)
from the interpreter running the tests into the new venv's site-packages:
every file listed in a distribution's ``RECORD`` (plus its cached
``__pycache__`` bytecode) is hard-linked (copied when linking is impossible)
and console scripts are regenerated for the new interpreter.  The result is a
set of real ``*.dist-info`` directories inside the venv, so pip, ``uv pip
--python <venv>`` and pip-tools all see spaCy as installed, and they can
uninstall or upgrade it without touching the source environment (uninstalling
removes a link, it never writes into the shared inode).  Never open a cloned
file for writing in place.

Resolvers (``pip-compile``, ``uv pip compile``, ``pip install`` into a venv
*without* spaCy) need spaCy to be *available*, not installed: use
:func:`build_wheelhouse`, which re-packs the installed distributions into
wheels (offline), and pass ``--find-links <wheelhouse>``.

Measured here (2 cores): ``make_venv`` with pip+spaCy 0.5 s, and ``import
spacy`` in it ~1.7 s (bytecode reused).  For comparison: ``python -m venv``
with pip 7.9 s; ``pip install`` of spaCy from a local wheelhouse 15-17 s;
``uv venv`` + ``uv pip install --no-index --find-links`` 1.3 s with a cold uv
cache, 0.2 s warm, but then ``import spacy`` takes ~4 s because uv writes no
bytecode and the machine sets ``PYTHONDONTWRITEBYTECODE=1``.
``build_wheelhouse`` (spaCy closure + pip, 45 wheels) ~2-3 s.

pip-sync: run it from the test runner's pip-tools with ``python -m piptools
sync --python-executable <venv python> lock.txt``; it uninstalls whatever
the lock lacks, so the lock must hold spaCy's closure (a ``pip-compile`` of
``en_core_web_sm`` does).  uv probes the index for *every* dependency, even
installed ones, and accepts 404s; pip does not ask for installed ones.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import hashlib
import http.server
import importlib.metadata as importlib_metadata
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.servers import StoppableHTTPServer, serve_http
from tests.wheels import require_spacy


def _spacy_version() -> str:
    """The test runner's spaCy; the pure tests collect and run without it."""
    try:
        return importlib_metadata.version("spacy")
    except importlib_metadata.PackageNotFoundError:
        return "0"


SPACY_VERSION = _spacy_version()

#: Variables whose name starts with one of these are dropped by clean_env.
_DROP_PREFIXES = ("PIP_", "UV_", "PIPTOOLS_", "CONDA_")
#: Variables dropped by clean_env (they would leak the test runner's Python).
_DROP_NAMES = frozenset(
    {
        "VIRTUAL_ENV",
        "VIRTUAL_ENV_PROMPT",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONNOUSERSITE",
        "PYTHONSAFEPATH",
        "PYTHONEXECUTABLE",
        "__PYVENV_LAUNCHER__",
        "PYTEST_ADDOPTS",
        "PYTEST_CURRENT_TEST",
        "PYTEST_VERSION",
        "XDG_CONFIG_HOME",
        "XDG_CONFIG_DIRS",
    }
)
_LOCAL_NO_PROXY = ("127.0.0.1", "localhost", "::1")


def clean_env(
    *,
    cache_dir: os.PathLike[str] | str | None = None,
    base: Mapping[str, str] | None = None,
    **extra: str | os.PathLike[str] | None,
) -> dict[str, str]:
    """Environment for pip/uv/pip-tools subprocesses, isolated from the machine.

    * every ``PIP_*`` / ``UV_*`` (and ``PIPTOOLS_*``) variable is dropped, as
      are ``VIRTUAL_ENV``, ``PYTHONPATH`` & co.;
    * ``PIP_CONFIG_FILE=os.devnull`` (pip then loads *no* config file at all,
      not even the global/user/site ones), ``PIP_DISABLE_PIP_VERSION_CHECK=1``,
      ``PIP_NO_INPUT=1``, ``UV_NO_CONFIG=1`` (no ``uv.toml``/``pyproject`` uv
      settings), ``UV_PYTHON_DOWNLOADS=never``, ``UV_NO_PROGRESS=1``;
    * ``PATH``, ``HOME``, locale and the TLS variables (``SSL_CERT_FILE``,
      ``REQUESTS_CA_BUNDLE``...) are kept, so PyPI stays reachable;
    * if proxy variables exist, loopback addresses are added to ``NO_PROXY``;
    * ``cache_dir``: when given, ``PIP_CACHE_DIR=<cache_dir>/pip`` and
      ``UV_CACHE_DIR=<cache_dir>/uv`` (pass a per-test ``tmp_path`` or a
      session directory to share a warm cache).  When omitted, caching is
      disabled (``PIP_NO_CACHE_DIR=1``, ``UV_NO_CACHE=1``): nothing is read
      from or written to the user's caches.
    * ``extra``: further variables; a value of ``None`` removes the variable.
    """
    src = os.environ if base is None else base
    env = {
        k: v
        for k, v in src.items()
        if not k.upper().startswith(_DROP_PREFIXES) and k.upper() not in _DROP_NAMES
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
        PYTHONUNBUFFERED="1",
    )
    if cache_dir is not None:
        cache = Path(cache_dir)
        env["PIP_CACHE_DIR"] = str(cache / "pip")
        env["UV_CACHE_DIR"] = str(cache / "uv")
    else:
        env["PIP_NO_CACHE_DIR"] = "1"
        env["UV_NO_CACHE"] = "1"
    if any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") for k in env):
        for key in ("NO_PROXY", "no_proxy"):
            parts = [p for p in env.get(key, "").split(",") if p]
            parts += [h for h in _LOCAL_NO_PROXY if h not in parts]
            env[key] = ",".join(parts)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = os.fspath(value)
    return env


def uv_bin() -> str:
    """Path of the ``uv`` executable (the one installed with the ``uv`` package)."""
    try:
        import uv  # type: ignore[import-not-found]

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    here = Path(sys.executable).with_name("uv")
    if here.exists():
        return str(here)
    found = shutil.which("uv")
    if found is None:
        raise FileNotFoundError("uv executable not found")
    return found


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the captured output."""

    def __str__(self) -> str:
        cmd = self.cmd if isinstance(self.cmd, str) else " ".join(map(str, self.cmd))
        return (
            f"command failed with exit code {self.returncode}: {cmd}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: os.PathLike[str] | str | None = None,
    timeout: float | None = 900,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` capturing text output; ``env`` defaults to :func:`clean_env`."""
    argv = [os.fspath(a) for a in cmd]
    proc = subprocess.run(
        argv,
        env=dict(env) if env is not None else clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


@dataclass
class Venv:
    """A virtual environment created by :func:`make_venv`."""

    path: Path
    python: Path
    env: dict[str, str] = field(default_factory=clean_env)

    def bin(self, name: str) -> Path:
        return self.python.parent / name

    @property
    def site_packages(self) -> Path:
        return _site_packages(self.path)

    def run(
        self,
        *args: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        check: bool = True,
        cwd: os.PathLike[str] | str | None = None,
        timeout: float | None = 900,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<venv python> *args`` (e.g. ``venv.run("-c", "import spacy")``)."""
        return run(
            [self.python, *args],
            env=self._env(env),
            check=check,
            cwd=cwd,
            timeout=timeout,
        )

    def pip(self, *args: str | os.PathLike[str], **kwargs) -> subprocess.CompletedProcess[str]:
        """``<venv python> -m pip *args``."""
        return self.run("-m", "pip", *args, **kwargs)

    def uv_pip(
        self,
        subcommand: str,
        *args: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        check: bool = True,
        cwd: os.PathLike[str] | str | None = None,
        timeout: float | None = 900,
    ) -> subprocess.CompletedProcess[str]:
        """``uv pip <subcommand> --python <venv python> *args``."""
        return run(
            [uv_bin(), "pip", subcommand, "--python", self.python, *args],
            env=self._env(env),
            check=check,
            cwd=cwd,
            timeout=timeout,
        )

    def has_module(self, name: str) -> bool:
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
        return self.run("-c", code, check=False).returncode == 0

    def installed(self) -> dict[str, str]:
        """Canonical project name -> version of every distribution in the venv."""
        code = (
            "import importlib.metadata as m, json\n"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
        )
        data = json.loads(self.run("-c", code).stdout)
        return {canonicalize_name(k): v for k, v in data.items()}

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        base = dict(self.env if env is None else env)
        base["VIRTUAL_ENV"] = str(self.path)
        bindir = str(self.python.parent)
        path = base.get("PATH", "")
        if not path.startswith(bindir + os.pathsep):
            base["PATH"] = bindir + os.pathsep + path if path else bindir
        return base


# --------------------------------------------------------------------------
# cloning installed distributions


def _site_packages(venv: Path) -> Path:
    """purelib of a venv at ``venv`` made by the running interpreter."""
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    if os.name == "nt" and scheme != "venv":  # pragma: no cover
        scheme = "nt"
    vars = {"base": str(venv), "platbase": str(venv)}
    return Path(sysconfig.get_path("purelib", scheme=scheme, vars=vars))


def _distribution(name: str, path: Sequence[str] | None = None) -> importlib_metadata.Distribution:
    dists = importlib_metadata.distributions(name=name, path=list(path) if path else sys.path)
    for dist in dists:
        return dist
    # distributions(name=) matches the normalized name in recent Pythons;
    # fall back to a scan for robustness.
    want = canonicalize_name(name)
    for dist in importlib_metadata.distributions(path=list(path) if path else sys.path):
        if canonicalize_name(dist.metadata["Name"]) == want:
            return dist
    raise importlib_metadata.PackageNotFoundError(name)


def dependency_closure(
    names: Iterable[str], *, path: Sequence[str] | None = None
) -> list[importlib_metadata.Distribution]:
    """Installed distributions needed by ``names`` (requirement strings allowed,
    extras honoured), following ``Requires-Dist`` with markers evaluated for
    the running interpreter."""
    seen: dict[str, importlib_metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    queue: list[tuple[str, frozenset[str]]] = []
    for spec in names:
        req = Requirement(spec)
        queue.append((req.name, frozenset(req.extras)))
    while queue:
        name, extras = queue.pop()
        key = canonicalize_name(name)
        todo = [e for e in ("", *sorted(extras)) if (key, e) not in done]
        if not todo:
            continue
        dist = seen.get(key) or _distribution(name, path)
        seen[key] = dist
        for extra in todo:
            done.add((key, extra))
            for raw in dist.requires or ():
                req = Requirement(raw)
                if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                    continue
                if req.marker is None and extra:
                    continue  # already followed for the base package
                queue.append((req.name, frozenset(req.extras)))
    return list(seen.values())


class _Cloner:
    """Hard-link (or copy) files, creating parent directories once."""

    def __init__(self, link: bool) -> None:
        self.link = link
        self.dirs: set[str] = set()
        self.count = 0

    def __call__(self, src: str, dst: str) -> None:
        parent = os.path.dirname(dst)
        if parent not in self.dirs:
            os.makedirs(parent, exist_ok=True)
            self.dirs.add(parent)
        if self.link:
            try:
                os.link(src, dst)
                self.count += 1
                return
            except FileExistsError:
                return
            except OSError:  # cross-device, unsupported: copy from now on
                self.link = False
        if not os.path.exists(dst):
            shutil.copy2(src, dst)
            self.count += 1


_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {head}
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit({call}())
"""


def _write_console_scripts(dist: importlib_metadata.Distribution, venv_python: Path) -> None:
    bindir = venv_python.parent
    for ep in dist.entry_points:
        if ep.group != "console_scripts":
            continue
        module, _, attr = ep.value.partition(":")
        attr = attr.split("[")[0].strip()
        module = module.strip()
        head = attr.split(".")[0]
        script = bindir / ep.name
        script.write_text(_SCRIPT.format(python=venv_python, module=module, head=head, call=attr))
        script.chmod(0o755)


def clone_distributions(
    dists: Iterable[importlib_metadata.Distribution],
    site_packages: Path,
    *,
    venv_python: Path | None = None,
    link: bool = True,
) -> int:
    """Hard-link (or copy) the files of ``dists`` into ``site_packages``.

    Files listed in each ``RECORD`` below the distribution's site-packages are
    cloned, together with the ``__pycache__`` bytecode of their directories
    (hard links keep the source mtime, so the bytecode stays valid).  Entries
    outside site-packages (console scripts) are regenerated for
    ``venv_python``.  Returns the number of files cloned.
    """
    clone = _Cloner(link)
    site = os.fspath(site_packages)
    tag = sys.implementation.cache_tag
    for dist in dists:
        files = dist.files
        if files is None:
            raise RuntimeError(f"{dist.metadata['Name']} has no RECORD; cannot clone it")
        root = os.path.realpath(dist.locate_file(""))
        py_dirs: set[str] = set()
        for rel in files:
            rel_s = str(rel)
            if not rel_s or rel_s.startswith(("..", "/")) or "__pycache__" in rel_s:
                continue
            src = os.path.join(root, rel_s)
            if not os.path.isfile(src):
                continue
            clone(src, os.path.join(site, rel_s))
            if rel_s.endswith(".py"):
                py_dirs.add(os.path.dirname(rel_s))
        for rel_dir in py_dirs:
            cache = os.path.join(root, rel_dir, "__pycache__")
            try:
                names = os.listdir(cache)
            except OSError:
                continue
            for pyc in names:
                if pyc.endswith(".pyc") and f".{tag}" in pyc:
                    clone(os.path.join(cache, pyc), os.path.join(site, rel_dir, "__pycache__", pyc))
        if venv_python is not None:
            _write_console_scripts(dist, venv_python)
    return clone.count


def make_venv(
    path: os.PathLike[str] | str,
    *,
    with_spacy: bool = True,
    with_pip: bool = True,
    extra: Iterable[str] = (),
    link: bool = True,
    env: Mapping[str, str] | None = None,
    cache_dir: os.PathLike[str] | str | None = None,
) -> Venv:
    """Create a venv at ``path`` (stdlib ``venv --without-pip``) and clone
    into it: pip (``with_pip``), spaCy and its dependency closure
    (``with_spacy``) and every requirement in ``extra`` (e.g.
    ``"pip-tools"``) with its closure, from the interpreter running the tests.

    No network, no wheel building, typically ~0.3-0.5 s with spaCy.

    ``env`` is the default environment of :meth:`Venv.run` & co; it defaults
    to ``clean_env(cache_dir=cache_dir)`` (caching disabled when
    ``cache_dir`` is None).
    """
    path = Path(path).absolute()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty")
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    run([base_python, "-m", "venv", "--without-pip", path], env=clean_env())
    python = path / "bin" / "python"
    if not python.exists():  # pragma: no cover - Windows layout
        python = path / "Scripts" / "python.exe"
    wanted = list(extra)
    if with_pip:
        wanted.append("pip")
    if with_spacy:
        require_spacy()
        wanted.append("spacy")
    if wanted:
        site = _site_packages(path)
        clone_distributions(dependency_closure(wanted), site, venv_python=python, link=link)
    return Venv(
        path=path,
        python=python,
        env=dict(env) if env is not None else clean_env(cache_dir=cache_dir),
    )


# --------------------------------------------------------------------------
# wheelhouse of installed distributions


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _compress_tags(tags: list[str]) -> str:
    pys: list[str] = []
    abis: list[str] = []
    plats: list[str] = []
    for tag in tags:
        py, abi, plat = tag.split("-")
        for seq, value in ((pys, py), (abis, abi), (plats, plat)):
            if value not in seq:
                seq.append(value)
    return "-".join(".".join(sorted(seq)) for seq in (pys, abis, plats))


_SKIP_DIST_INFO = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def repack_distribution(dist: importlib_metadata.Distribution, dest: Path) -> Path:
    """Rebuild a wheel from an installed distribution (files in site-packages
    only; console scripts are recreated from entry_points.txt on install).

    Stored uncompressed: this is a local test wheelhouse, speed matters more
    than size.
    """
    root = Path(dist.locate_file("")).resolve()
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")
    ]
    if not tags:
        raise RuntimeError(f"{dist.metadata['Name']}: no Tag in WHEEL")
    dist_info = None
    for rel in dist.files or ():
        if str(rel).endswith(".dist-info/METADATA") and len(Path(rel).parts) == 2:
            dist_info = Path(rel).parts[0]
    if dist_info is None:
        raise RuntimeError(f"{dist.metadata['Name']}: no dist-info in RECORD")
    stem = dist_info[: -len(".dist-info")]
    name = f"{stem}-{_compress_tags(tags)}.whl"
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    tmp = target.with_suffix(".tmp")
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel in sorted(dist.files or (), key=str):
            parts = Path(rel).parts
            if not parts or parts[0] == ".." or "__pycache__" in parts:
                continue
            if parts[0] == dist_info and parts[-1] in _SKIP_DIST_INFO and len(parts) == 2:
                continue
            src = root / rel
            if not src.is_file():
                continue
            data = src.read_bytes()
            arcname = Path(rel).as_posix()
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (src.stat().st_mode & 0o777 | 0o100000) << 16
            zf.writestr(info, data)
            writer.writerow([arcname, _record_hash(data), len(data)])
        writer.writerow([f"{dist_info}/RECORD", "", ""])
        info = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o100644 << 16
        zf.writestr(info, record.getvalue())
    tmp.replace(target)
    return target


def build_wheelhouse(
    dest: os.PathLike[str] | str,
    requirements: Iterable[str] = ("spacy",),
    *,
    with_pip: bool = False,
) -> Path:
    """Offline wheelhouse: re-pack the installed closure of ``requirements``
    (and pip with ``with_pip``) into wheels in ``dest``.  Use with
    ``--find-links <dest>`` (``--no-index`` or next to a model-only index) so
    resolvers can find spaCy without PyPI."""
    dest = Path(dest)
    wanted = list(requirements) + (["pip"] if with_pip else [])
    for dist in dependency_closure(wanted):
        repack_distribution(dist, dest)
    return dest


# --------------------------------------------------------------------------
# static file server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: uv probes the index once per dependency
    disable_nagle_algorithm = True  # else 40 ms (delayed ACK) per keep-alive response

    def log_message(self, format: str, *args: object) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log = getattr(self.server, "request_log", None)
        if log is not None:
            code = getattr(code, "value", code)
            log.append(f"{self.command} {self.path} {code}")


class _Server(StoppableHTTPServer):
    # uv opens dozens of connections at once; with the default backlog of 5
    # the kernel drops SYNs and the client retries after 1 s.
    request_queue_size = 256


@contextlib.contextmanager
def serve_directory(root: os.PathLike[str] | str) -> Iterator[StaticServer]:
    """Serve ``root`` over HTTP on 127.0.0.1 (ephemeral port) from a thread,
    like ``python -m http.server --bind 127.0.0.1 --directory root``.
    Directories serve their ``index.html``.  Stopped on exit."""
    handler = functools.partial(_QuietHandler, directory=os.fspath(root))
    log: list[str] = []
    with serve_http(handler, server_class=_Server, name="static-index") as httpd:
        httpd.request_log = log  # type: ignore[attr-defined]
        host, port = httpd.server_address[:2]
        yield StaticServer(url=f"http://{host}:{port}", port=port, requests=log)


@dataclass
class StaticServer:
    url: str  #: ``http://127.0.0.1:PORT`` (no trailing slash)
    port: int
    requests: list[str]  #: ``"GET /path 200"`` per request served


# --------------------------------------------------------------------------
# pytest fixtures (import them from conftest.py)


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """clean_env() with a per-test pip/uv cache below tmp_path."""
    return clean_env(cache_dir=tmp_path / "client-cache")


@pytest.fixture
def spacy_venv(tmp_path: Path, client_env: dict[str, str]) -> Venv:
    """A fresh venv with pip and spaCy (cloned), per test."""
    return make_venv(tmp_path / "venv", env=client_env)


@pytest.fixture(scope="session")
def spacy_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session wheelhouse with spaCy's closure and pip (offline re-pack)."""
    require_spacy()
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"), with_pip=True)


__all__ = [
    "SPACY_VERSION",
    "CommandFailed",
    "Venv",
    "build_wheelhouse",
    "clean_env",
    "client_env",
    "clone_distributions",
    "dependency_closure",
    "make_venv",
    "repack_distribution",
    "run",
    "serve_directory",
    "spacy_venv",
    "spacy_wheelhouse",
    "uv_bin",
]
