"""Support for tests/test_workflows.py: a fake PyPI for resolvers, isolated tool venvs
(poetry, pdm), a Prodigy-like licensed find-links host and the client x index matrix.

Fake PyPI
---------
:func:`write_fake_pypi` lays out a PEP 503 static index of every wheel in a
``build_wheelhouse()`` folder (spaCy and its whole dependency closure, re-packed offline)
the way pypi.org serves it: ``#sha256=`` on every link, ``data-requires-python``, PEP 658
metadata next to every wheel (``data-core-metadata``), and the PyPI JSON API
(``<name>/json``) that ``pip-compile --generate-hashes`` reads hashes from. On top of that:

* PyPI's dependency-confusion placeholders ``en-core-web-sm 999.9.9`` and
  ``en-core-web-trf 999.9.9``: sdists whose ``setup.py`` raises;
* small stub wheels for the names that spaCy's closure requires only under markers that
  are false here (``colorama; platform_system == "Windows"``, ``exceptiongroup;
  python_version < "3.11"``...): universal resolvers (uv lock, poetry, pdm) ask for them.

Tool venvs
----------
poetry and pdm are installed from PyPI (``requirements/tools.txt``, fully pinned with
hashes) into one venv below ``<repo>/.tool-venvs/`` (git-ignored), keyed by the file's
hash and the Python version, so a second run reuses it. Nothing of them enters the test
venv.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import html
import http.server
import io
import json
import os
import shutil
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tests.clients import clean_env, run, uv_bin
from tests.servers import StoppableHTTPServer, serve_http

REPO = Path(__file__).resolve().parents[1]
TOOLS_REQUIREMENTS = REPO / "requirements" / "tools.txt"
TOOL_VENVS = REPO / ".tool-venvs"
PLACEHOLDER_VERSION = "999.9.9"
#: A port nothing listens on: every non-loopback request of a client under test fails.
BLACKHOLE_PROXY = "http://127.0.0.1:9"


# ----------------------------------------------------------------------------- artifacts
def placeholder_sdist(name: str, version: str = PLACEHOLDER_VERSION) -> tuple[str, bytes]:
    """PyPI's stub for a name it reserves: an sdist whose ``setup.py`` aborts the
    install. Returns ``(filename, bytes)``."""
    stem = f"{name.replace('-', '_')}-{version}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, text in {
            f"{stem}/setup.py": "raise SystemExit('placeholder: this is not a spaCy pipeline')\n",
            f"{stem}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mtime = 315619200
            tar.addfile(info, io.BytesIO(data))
    return f"{stem}.tar.gz", buf.getvalue()


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}\n"


def stub_wheel(name: str, version: str, *, requires: Iterable[str] = (),
               module: str | None = None) -> tuple[str, bytes]:
    """A small, valid ``py3-none-any`` wheel. Returns ``(filename, bytes)``."""
    dist_name = canonicalize_name(name).replace("-", "_")
    module = module or dist_name
    dist = f"{dist_name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": meta.encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }
    record = "".join(_record_line(k, v) for k, v in files.items()) + f"{dist}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in (*files.items(), (f"{dist}/RECORD", record.encode())):
            z.writestr(zipfile.ZipInfo(k, date_time=(2020, 1, 1, 0, 0, 0)), v)
    return f"{dist_name}-{version}-py3-none-any.whl", buf.getvalue()


def wheel_metadata_bytes(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        (member,) = [n for n in zf.namelist()
                     if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
        return zf.read(member)


def _satisfying_version(specs: list[SpecifierSet]) -> str:
    """A version admitted by every specifier set (for stubs of marker-excluded deps)."""
    candidates = {Version("1.0")}
    for spec in specs:
        for s in spec:
            try:
                v = Version(s.version.replace(".*", ""))
            except ValueError:
                continue
            candidates |= {v, Version(f"{v.major}.{v.minor}.{v.micro + 1}"),
                           Version(f"{v.major + 1}.0")}
    for v in sorted(candidates, reverse=True):
        if all(spec.contains(v, prereleases=True) for spec in specs):
            return str(v)
    raise ValueError(f"no stub version satisfies {specs}")


# ----------------------------------------------------------------------------- fake PyPI
@dataclass
class FakePyPI:
    root: Path
    url: str  #: ``http://127.0.0.1:PORT`` (no trailing slash)
    projects: dict[str, list[str]] = field(default_factory=dict)  #: name -> filenames
    stubs: list[str] = field(default_factory=list)  #: stubbed marker-only names

    @property
    def simple(self) -> str:
        return self.url + "/simple/"


def write_fake_pypi(root: Path, base_url: str, wheelhouse: Path, *,
                    placeholders: Iterable[str] = ("en-core-web-sm", "en-core-web-trf"),
                    extra: Mapping[str, bytes] | None = None) -> FakePyPI:
    """Write a PyPI-like static index of ``wheelhouse`` (plus ``placeholders`` and
    ``extra`` files) into ``root``, whose files are served at ``base_url``."""
    root = Path(root)
    files_dir = root / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, bytes] = {p.name: p.read_bytes() for p in sorted(wheelhouse.glob("*.whl"))}
    artifacts.update(extra or {})
    # every name the closure asks for, with the spellings used (pip-tools asks <name>/json
    # with the name as written in Requires-Dist)
    present: dict[str, str] = {}
    requested: dict[str, list[SpecifierSet]] = {}
    spellings: dict[str, set[str]] = {}
    for filename, data in artifacts.items():
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
            present[name] = str(version)
            meta = BytesParser().parsebytes(wheel_metadata_bytes(data), headersonly=True)
            spellings.setdefault(name, set()).add(meta["Name"])
            for raw in meta.get_all("Requires-Dist") or ():
                req = Requirement(raw)
                if req.marker is not None and "extra" in str(req.marker):
                    continue
                key = canonicalize_name(req.name)
                requested.setdefault(key, []).append(req.specifier)
                spellings.setdefault(key, set()).add(req.name)
    stubs = sorted(set(requested) - set(present))
    for name in stubs:
        filename, data = stub_wheel(name, _satisfying_version(requested[name]))
        artifacts[filename] = data
    for name in placeholders:
        filename, data = placeholder_sdist(name)
        artifacts[filename] = data
        spellings.setdefault(canonicalize_name(name), set()).add(name)

    by_project: dict[str, list[dict[str, Any]]] = {}
    for filename, data in sorted(artifacts.items()):
        (files_dir / filename).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        entry: dict[str, Any] = {"filename": filename, "sha256": sha, "size": len(data),
                                 "url": f"{base_url}/files/{filename}"}
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
            metadata = wheel_metadata_bytes(data)
            (files_dir / f"{filename}.metadata").write_bytes(metadata)
            entry["metadata_sha256"] = hashlib.sha256(metadata).hexdigest()
            parsed = BytesParser().parsebytes(metadata, headersonly=True)
            entry["requires_python"] = parsed.get("Requires-Python")
            entry["packagetype"] = "bdist_wheel"
        else:
            stem = filename.removesuffix(".tar.gz")
            raw_name, _, raw_version = stem.rpartition("-")
            name, version = canonicalize_name(raw_name), Version(raw_version)
            entry["packagetype"] = "sdist"
        entry["version"] = str(version)
        by_project.setdefault(name, []).append(entry)

    simple = root / "simple"
    simple.mkdir(exist_ok=True)
    for name, entries in by_project.items():
        links = []
        for e in entries:
            attrs = ""
            if e.get("requires_python"):
                attrs += f' data-requires-python="{html.escape(e["requires_python"])}"'
            if e.get("metadata_sha256"):
                m = f"sha256={e['metadata_sha256']}"
                attrs += f' data-dist-info-metadata="{m}" data-core-metadata="{m}"'
            href = html.escape(f"{e['url']}#sha256={e['sha256']}")
            links.append(f'<a href="{href}"{attrs}>{html.escape(e["filename"])}</a><br/>')
        page = simple / name
        page.mkdir(exist_ok=True)
        (page / "index.html").write_text(
            '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0">'
            f"<title>Links for {name}</title></head>\n<body><h1>Links for {name}</h1>\n"
            + "\n".join(links) + "\n</body></html>\n")
        # PyPI JSON API, as pip-tools derives it from the index URL: <root>/<name>/json
        releases: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            for url in (e["url"], f"{e['url']}#sha256={e['sha256']}"):
                releases.setdefault(e["version"], []).append({
                    "filename": e["filename"], "url": url, "packagetype": e["packagetype"],
                    "digests": {"sha256": e["sha256"]}, "size": e["size"],
                    "requires_python": e.get("requires_python")})
        doc = json.dumps({"info": {"name": name}, "releases": releases}).encode()
        for spelling in {name, *spellings.get(name, ())}:
            if spelling in ("simple", "files"):
                continue
            (root / spelling).mkdir(exist_ok=True)
            (root / spelling / "json").write_bytes(doc)
    (simple / "index.html").write_text(
        '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0">'
        "<title>Simple index</title></head>\n<body>\n"
        + "\n".join(f'<a href="{n}/">{n}</a><br/>' for n in sorted(by_project))
        + "\n</body></html>\n")
    return FakePyPI(root=root, url=base_url,
                    projects={n: [e["filename"] for e in es] for n, es in by_project.items()},
                    stubs=stubs)


# ----------------------------------------------------------------------------- environments
def tool_env(home: Path, *, cache: Path, **extra: str | os.PathLike[str] | None) -> dict[str, str]:
    """clean_env() for a client under test, sealed off from the machine and the internet:

    * ``HOME`` is ``home`` (no user config of pip, uv, poetry, pdm, git, keyring);
    * every HTTP(S) request to a non-loopback host goes to a proxy that isn't there, so a
      client that tries to reach pypi.org fails loudly instead of succeeding quietly;
    * pip/uv caches below ``cache`` (``PIP_CACHE_DIR``/``UV_CACHE_DIR``), and the
      poetry/pdm cache and config there too.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = clean_env(cache_dir=cache)
    env = {k: v for k, v in env.items()
           if not k.upper().startswith(("POETRY_", "PDM_", "UV_INDEX", "PYTHON_KEYRING"))}
    env.update(
        HOME=str(home),
        HTTP_PROXY=BLACKHOLE_PROXY, HTTPS_PROXY=BLACKHOLE_PROXY, ALL_PROXY=BLACKHOLE_PROXY,
        http_proxy=BLACKHOLE_PROXY, https_proxy=BLACKHOLE_PROXY, all_proxy=BLACKHOLE_PROXY,
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        POETRY_CONFIG_DIR=str(home / "poetry-config"),
        POETRY_CACHE_DIR=str(Path(cache) / "poetry"),
        POETRY_DATA_DIR=str(home / "poetry-data"),
        POETRY_VIRTUALENVS_IN_PROJECT="true",
        POETRY_NO_INTERACTION="1",
        POETRY_KEYRING_ENABLED="false",
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        PDM_CONFIG_FILE=str(home / "pdm-config.toml"),
        PDM_CACHE_DIR=str(Path(cache) / "pdm"),
        PDM_CHECK_UPDATE="false",
        PDM_NON_INTERACTIVE="1",
        PDM_IGNORE_SAVED_PYTHON="1",
        NO_COLOR="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = os.fspath(value)
    return env


def base_python() -> str:
    """The interpreter the test venv was made from (real, not a venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


@dataclass(frozen=True)
class Tools:
    """The isolated venv holding poetry and pdm."""

    venv: Path

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    @property
    def poetry(self) -> Path:
        return self.bin("poetry")

    @property
    def pdm(self) -> Path:
        return self.bin("pdm")

    def versions(self) -> dict[str, str]:
        code = ("import importlib.metadata as m, json; print(json.dumps({n: m.version(n) "
                "for n in ('poetry', 'poetry-core', 'pdm', 'hishel')}))")
        return json.loads(run([self.bin("python"), "-c", code]).stdout)


def ensure_tools(requirements: Path = TOOLS_REQUIREMENTS, base: Path = TOOL_VENVS) -> Tools:
    """Create (once) the venv for ``requirements`` with ``uv venv`` + ``uv pip install
    --require-hashes``. Needs PyPI the first time; later calls reuse it (keyed by the
    requirements' hash and the Python version). Safe against concurrent sessions."""
    text = requirements.read_bytes()
    key = hashlib.sha256(text + sys.version.encode()).hexdigest()[:12]
    base.mkdir(parents=True, exist_ok=True)
    venv = base / f"tools-{key}"
    stamp = venv / ".complete"
    if stamp.exists():
        return Tools(venv)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return Tools(venv)
        shutil.rmtree(venv, ignore_errors=True)
        env = clean_env(cache_dir=base / ".cache")
        # uv's own roots miss a TLS-inspecting proxy's CA: the system store, as pip uses
        # (UV_SYSTEM_CERTS in current uv, UV_NATIVE_TLS before it)
        env.update(UV_SYSTEM_CERTS="1", UV_NATIVE_TLS="1")
        run([uv_bin(), "venv", "--quiet", "--python", base_python(), venv], env=env)
        run([uv_bin(), "pip", "install", "--quiet", "--python", venv / "bin" / "python",
             "--require-hashes", "-r", requirements], env=env, timeout=600)
        stamp.write_text(requirements.name + "\n")
        for old in base.glob("tools-*"):  # other pins: no longer used
            if old != venv:
                shutil.rmtree(old, ignore_errors=True)
    return Tools(venv)


# ----------------------------------------------------------------------------- licensed host
class _LicensedHandler(http.server.BaseHTTPRequestHandler):
    """A Prodigy-like private find-links host: the key is the basic-auth *username*."""

    server: _LicensedServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", ctype: str = "text/html",
               headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.server.seen.append((self.path, auth))
        expected = "Basic " + base64.b64encode(f"{self.server.key}:".encode()).decode()
        if auth != expected:
            self._reply(401, headers={"WWW-Authenticate": 'Basic realm="licensed"'})
            return
        name = self.path.split("?")[0].strip("/")
        if name == "":
            body = "".join(
                f'<a href="/{n}#sha256={hashlib.sha256(d).hexdigest()}">{n}</a><br>\n'
                for n, d in self.server.files.items()).encode()
            self._reply(200, body)
        elif name in self.server.files:
            self._reply(200, self.server.files[name], "application/octet-stream")
        else:
            self._reply(404)


class _LicensedServer(StoppableHTTPServer):
    key: str
    files: dict[str, bytes]
    seen: list[tuple[str, str]]


@dataclass
class LicensedHost:
    url: str  #: ``http://127.0.0.1:PORT/`` (no key in it)
    port: int
    seen: list[tuple[str, str]]  #: (path, Authorization header) of every request

    def url_with_key(self, key: str) -> str:
        return f"http://{key}@127.0.0.1:{self.port}/"


@contextlib.contextmanager
def licensed_host(key: str, files: Mapping[str, bytes]) -> Iterator[LicensedHost]:
    """Serve ``files`` as one flat find-links page at ``/`` on 127.0.0.1, only to clients
    that send ``key`` as the basic-auth username (empty password); 401 otherwise."""
    with serve_http(_LicensedHandler, server_class=_LicensedServer, name="licensed-host") as httpd:
        httpd.key, httpd.files, httpd.seen = key, dict(files), []
        port = httpd.server_address[1]
        yield LicensedHost(url=f"http://127.0.0.1:{port}/", port=port, seen=httpd.seen)


# ----------------------------------------------------------------------------- measuring
def upstream_bytes(gh: Any) -> int:
    """Body bytes the fake GitHub sent on its download origins (web + objects)."""
    return sum(r.bytes_sent for r in list(gh.requests) if r.origin in ("web", "objects"))


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional ``export``, optional quotes)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        out[key.strip()] = value.strip().strip("'\"")
    return out


@dataclass
class Row:
    client: str
    index: str  #: "static" | "serve"
    works: bool = False
    lock: str = ""  #: what the lock file is
    lock_has_hashes: bool | None = None
    lock_bytes: int | None = None  #: upstream (GitHub) bytes of locking
    first_install_bytes: int | None = None  #: upstream (GitHub) bytes of the first install
    second_install_bytes: int | None = None  #: re-run in the same environment
    fresh_env_bytes: int | None = None  #: same lock, new environment, warm client cache
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  #: seconds per step
    notes: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - t0, 1)


class Matrix:
    """Rows recorded by the workflow tests; written as JSON + a markdown table."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.findings: dict[str, Any] = {}
        self.versions: dict[str, str] = {}
        self.started = time.monotonic()

    @contextlib.contextmanager
    def row(self, client: str, index: str) -> Iterator[Row]:
        r = Row(client=client, index=index)
        self.rows = [x for x in self.rows if (x.client, x.index) != (client, index)]
        self.rows.append(r)
        t0 = time.monotonic()
        try:
            yield r
        except BaseException as e:
            r.works = False
            r.notes.append(f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            raise
        finally:
            r.seconds = round(time.monotonic() - t0, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "findings": self.findings,
                "versions": self.versions,
                "seconds": round(time.monotonic() - self.started, 1)}

    def table(self) -> str:
        def fmt(v: Any) -> str:
            if v is None:
                return "-"
            if isinstance(v, bool):
                return "yes" if v else "no"
            return str(v)

        kinds = ("static", "serve")
        clients = list(dict.fromkeys(r.client for r in self.rows))
        head = "| client | " + " | ".join(
            f"{k}: works / lock hashes / 2nd install B / fresh env B" for k in kinds) + " |"
        lines = [head, "|---|" + "---|" * len(kinds)]
        by = {(r.client, r.index): r for r in self.rows}
        for c in clients:
            cells = []
            for k in kinds:
                r = by.get((c, k))
                cells.append("not run" if r is None else " / ".join(
                    fmt(v) for v in (r.works, r.lock_has_hashes, r.second_install_bytes,
                                     r.fresh_env_bytes)))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def merge_previous(self, path: Path) -> None:
        """Keep the rows and findings of an earlier run (``path``) that this run did not
        produce, so a partial run (``-k pdm``) doesn't wipe the rest of the table."""
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        have = {(r.client, r.index) for r in self.rows}
        fields = set(Row.__dataclass_fields__)
        kept = [Row(**{k: v for k, v in raw.items() if k in fields})
                for raw in old.get("rows", []) if (raw.get("client"), raw.get("index")) not in have]
        clients = ["pip", "pip-tools", "uv pip", "uv project", "poetry", "pdm"]
        self.rows = sorted(kept + self.rows, key=lambda r: (
            clients.index(r.client) if r.client in clients else len(clients), r.client,
            r.index != "static"))
        self.findings = {**old.get("findings", {}), **self.findings}
        self.versions = {**old.get("versions", {}), **self.versions}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.merge_previous(path)
        path.write_text(json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n")
        path.with_suffix(".md").write_text(self.table() + "\n")


__all__ = [
    "BLACKHOLE_PROXY",
    "PLACEHOLDER_VERSION",
    "REPO",
    "TOOLS_REQUIREMENTS",
    "TOOL_VENVS",
    "FakePyPI",
    "LicensedHost",
    "Matrix",
    "Row",
    "Tools",
    "base_python",
    "ensure_tools",
    "licensed_host",
    "placeholder_sdist",
    "read_dotenv",
    "stub_wheel",
    "tool_env",
    "upstream_bytes",
    "wheel_metadata_bytes",
    "write_fake_pypi",
]
