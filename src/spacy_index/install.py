"""``spacy-index install`` (and ``download``, its spaCy-shaped alias): a ``spacy download``
that picks the pipeline compatible with the spaCy it installs for, keeps each wheel once in a
verified user cache, and installs it with its hash pinned: with ``uv pip install`` (files
linked from uv's cache) where uv is available, else with pip.

Fast by construction, so that an already-installed pipeline answers in well under 0.15 s:

- choosing is pure (:func:`choose`, the spaCy rule is :func:`spacy_index.model.spacy_compatible`);
- the environment is probed by listing the ``*.dist-info`` folders on the target's
  ``sys.path`` (:func:`probe`: in this process when the target is this interpreter, else one
  short subprocess), no metadata parsed;
- the catalog is read from its cached JSON and only the requested projects become objects;
- a wheel verified once is trusted again while its inode, size and times are unchanged
  (:func:`verified_wheel`), and installers get it at a stable path, which keeps uv's cache
  warm;
- nothing here imports an HTTP library, asyncio or rich until a download or an index needs it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.catalog import Catalog
from spacy_index.errors import SpacyIndexError, UpstreamUnreachable, UsageError
from spacy_index.model import Distribution, split_requirement
from spacy_index.model_spacy import spacy_compatible

if TYPE_CHECKING:
    import httpx

#: spaCy minor series a pipeline can target, for "which spaCy versions have one" messages.
KNOWN_SPACY_MINORS = tuple(Version(v) for v in (
    "1.6", "1.7", "1.8", "1.9", "1.10", "2.0", "2.1", "2.2", "2.3",
    "3.0", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "3.8", "3.9",
))
DEFAULT_API_URL = "https://api.github.com"
#: how long the cached catalog counts as fresh (an install that would change nothing uses it
#: whatever its age: it costs no network)
CATALOG_MAX_AGE = 24 * 3600.0

Say = Callable[[str], None]


class NoSuchModel(UsageError):
    def __init__(self, name: str, suggestions: Sequence[str]) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"no spaCy pipeline named {name!r}{hint} (see `spacy-index list`)")


class NoCompatibleVersion(SpacyIndexError):
    def __init__(self, name: str, spacy: object, have: Sequence[str]) -> None:
        self.name = name
        self.spacy = spacy
        self.have = list(have)
        which = ", ".join(have) if have else "none"
        super().__init__(
            f"no version of {name} works with spaCy {spacy}; spaCy versions that have one: "
            f"{which}. Upgrade or downgrade spaCy, pass --spacy X.Y, or --force to install "
            "it anyway"
        )


class SpacyMissing(SpacyIndexError):
    def __init__(self, python: str) -> None:
        self.python = python
        super().__init__(
            f"spaCy is not installed for {python}; install it first (pip install spacy) "
            "or pass --spacy X.Y to choose for another version"
        )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying one line that says what was kept."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- choosing
@dataclass(frozen=True)
class SpacyTarget:
    """The spaCy a pipeline must work with: one version, or a whole ``X.Y`` series.

    ``version`` is what :func:`~spacy_index.model.spacy_compatible` takes (``3.8``: the
    series, ``3.8.2``: exactly); ``versions`` is kept for callers that list them.
    """

    label: str
    versions: tuple[Version, ...]
    version: Version | None = None

    def admits(self, dist: Distribution) -> bool:
        """Whether ``dist`` runs on this spaCy (the one rule: ``spacy_compatible``)."""
        spec = dist.spacy_requirement
        if self.version is not None:
            return spacy_compatible(spec, self.version)
        return any(spacy_compatible(spec, v) for v in self.versions)

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Choice:
    dist: Distribution
    spacy: SpacyTarget | None
    #: chosen with --force although the spaCy target does not admit it
    forced: bool = False

    @property
    def requirement_line(self) -> str:
        return f"{self.dist.project}=={self.dist.version} --hash=sha256:{self.dist.sha256}"


@dataclass(frozen=True)
class Environment:
    python: str
    spacy: Version | None
    installed: dict[str, str]  # normalized name -> version
    has_pip: bool

    def version_of(self, name: str) -> Version | None:
        text = self.installed.get(canonicalize_name(name))
        if text is None:
            return None
        try:
            return Version(text)
        except InvalidVersion:
            return None


#: Run by the target interpreter (or exec'd here): every ``*.dist-info`` / ``*.egg-info`` on
#: ``sys.path``, first one wins as for importlib.metadata; names and versions from the folder
#: names (``{name}-{version}.dist-info``), the metadata file read only for a bare egg-info.
_PROBE = r"""
import os, sys

def scan(paths):
    found = {}
    for entry in paths:
        if not entry:
            continue
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info"):
                stem = n[:-10]
            elif n.endswith(".egg-info"):
                stem = n[:-9]
            else:
                continue
            name, _, rest = stem.partition("-")
            version = rest.split("-")[0]
            if not version:
                path = os.path.join(entry, n)
                meta = os.path.join(path, "PKG-INFO") if os.path.isdir(path) else path
                try:
                    with open(meta, encoding="utf-8", errors="replace") as f:
                        for line in f:
                            if line.startswith("Version:"):
                                version = line[8:].strip()
                                break
                            if not line.strip():
                                break
                except OSError:
                    continue
            if name and version:
                found.setdefault(name, version)
    return found
"""


def probe(python: str, cache_dir: Path | None = None) -> Environment:
    """What is installed for ``python``: in this process when it is this interpreter, else
    one subprocess that lists its ``sys.path`` (no network, no metadata parsing). With
    ``cache_dir`` the answer is kept, and used again while nothing it depends on changed
    (see :func:`_cached_probe`)."""
    if _is_this_interpreter(python):
        namespace: dict[str, object] = {}
        exec(_PROBE, namespace)  # one definition for both ways
        raw = namespace["scan"](sys.path)  # type: ignore[operator]
    else:
        raw = _cached_probe(python, cache_dir) if cache_dir is not None else None
        if raw is None:
            raw, watch = _run_probe(python)
            if cache_dir is not None:
                _store_probe(python, cache_dir, raw, watch)
    installed = {canonicalize_name(k): v for k, v in raw.items()}  # type: ignore[union-attr]
    spacy = None
    if "spacy" in installed:
        try:
            spacy = Version(installed["spacy"])
        except InvalidVersion:
            spacy = None
    return Environment(python, spacy, installed, "pip" in installed)


#: environment variables that change what a Python puts on ``sys.path``
_PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE",
                   "PYTHONSAFEPATH", "PYTHONPLATLIBDIR")


def _run_probe(python: str) -> tuple[dict[str, str], list[str]]:
    """The installed distributions of ``python`` and the folders that decide them (its
    ``sys.path`` and its user site folder, which counts once it exists)."""
    import subprocess

    code = _PROBE + (
        "\nimport json, site\n"
        "watch = [p for p in sys.path if p]\n"
        "if site.ENABLE_USER_SITE and site.USER_SITE: watch.append(site.USER_SITE)\n"
        "print(json.dumps({'installed': scan(sys.path), 'watch': watch}))\n"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60)
        doc = json.loads(out.stdout)
        return dict(doc["installed"]), list(doc["watch"])
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired,
            ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot run {python!r} to see what is installed: {e}") from None


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _interpreter_state(python: str) -> list[object]:
    """What identifies the interpreter: the file (and the link to it) and its venv's
    ``pyvenv.cfg`` (include-system-site-packages)."""
    try:
        st, lst = os.stat(python), os.lstat(python)
    except OSError:
        return []
    here = os.path.dirname(os.path.abspath(python))
    return [st.st_ino, st.st_size, st.st_mtime_ns, lst.st_mtime_ns,
            _mtime(os.path.join(os.path.dirname(here), "pyvenv.cfg")),
            [os.environ.get(v) for v in _PATH_VARIABLES]]


def _probe_file(cache_dir: Path, python: str) -> Path:
    from urllib.parse import quote

    key = quote(os.path.abspath(python), safe="")
    if len(key) > 180:
        import hashlib

        key = hashlib.sha256(key.encode()).hexdigest()
    return cache_dir / "install" / "probes" / f"{key}.json"


def _cached_probe(python: str, cache_dir: Path) -> dict[str, str] | None:
    """A probe's answer kept from an earlier run, if nothing it depends on changed: the
    interpreter, its environment variables for ``sys.path``, and the modification time of
    every folder on it (installing or removing a distribution adds or removes a
    ``*.dist-info`` folder, which changes its folder's mtime)."""
    try:
        doc = json.loads(_probe_file(cache_dir, python).read_text())
        if doc["interpreter"] != _interpreter_state(python) or not doc["interpreter"]:
            return None
        if any(_mtime(path) != mtime for path, mtime in doc["watch"]):
            return None
        return dict(doc["installed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_probe(python: str, cache_dir: Path, installed: dict[str, str],
                 watch: list[str]) -> None:
    state = [[path, _mtime(path)] for path in watch]
    racy = time.time_ns() - 2_000_000_000  # a folder changed just now may change again unseen
    if any(m is not None and m > racy for _, m in state):
        return
    if any(n.endswith(".egg-info") for n in installed):  # pragma: no cover - not keyed here
        return
    path = _probe_file(cache_dir, python)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"interpreter": _interpreter_state(python), "watch": state,
                                   "installed": installed}))
        os.replace(tmp, path)
    except OSError:
        pass  # only a shortcut


def _is_this_interpreter(python: str) -> bool:
    """Same path as ``sys.executable`` without resolving symlinks (a venv's python links to
    its base interpreter, which has other packages)."""
    if os.sep not in python and not (os.altsep and os.altsep in python):
        return python == sys.executable
    return os.path.normpath(os.path.abspath(python)) == os.path.normpath(sys.executable)


def _minor_series(dists: Iterable[Distribution]) -> list[str]:
    specs = {d.spacy_requirement for d in dists} - {None}
    return [str(m) for m in KNOWN_SPACY_MINORS if any(spacy_compatible(s, m) for s in specs)]


def split_model(text: str) -> tuple[str, SpecifierSet | None]:
    """What the user asked for, as ``(name, specifier or None)``:

    - ``en_core_web_sm`` (``en-core-web-sm`` alike) → the newest compatible version;
    - ``en_core_web_sm==3.8.0``, or any PEP 508 specifier such as ``'en_core_web_sm>=3.7,<3.8'``;
    - ``en_core_web_sm-3.8.0``: spaCy's ``download --direct`` form, the same as ``==3.8.0``.
    """
    text = text.strip()
    if any(c in text for c in "=<>!~ ;@[,("):
        from packaging.requirements import InvalidRequirement, Requirement

        try:
            req = Requirement(text)
        except InvalidRequirement:
            raise UsageError(f"{text!r} is not a pipeline name, NAME==VERSION, NAME-VERSION "
                             "or NAME with a version specifier such as 'NAME>=3.7,<3.8'") from None
        if req.url:
            raise UsageError(f"{text!r}: a direct URL is not a pipeline name; give NAME, "
                             "NAME==VERSION or NAME-VERSION (or --index for another index)")
        if req.marker is not None or req.extras:
            raise UsageError(f"{text!r}: extras and markers are not supported here; give NAME "
                             "with a version specifier")
        return req.name, (req.specifier if str(req.specifier) else None)
    name, dash, version = text.rpartition("-")
    if dash and name and version[:1].isdigit():
        try:
            Version(version)
        except InvalidVersion:
            pass
        else:
            return name, SpecifierSet(f"=={version}")
    try:
        canonicalize_name(text, validate=True)
    except ValueError:
        raise UsageError(f"{text!r} is not a pipeline name (see `spacy-index list`)") from None
    return text, None


def choose(catalog: Catalog, name: str, spacy: SpacyTarget | None, *, pre: bool = False,
           force: bool = False) -> Choice:
    """The newest hashed wheel of ``name`` (which may carry a version: :func:`split_model`)
    that runs on ``spacy``; with ``force`` (or no target) whatever spaCy it is for."""
    bare, pinned = split_model(name)
    project = catalog.projects.get(canonicalize_name(bare))
    if project is None:
        import difflib

        names = [p.display_name for p in catalog.projects.values()]
        close = difflib.get_close_matches(bare.replace("-", "_"), names, n=3, cutoff=0.6)
        raise NoSuchModel(bare, close)
    wheels = [d for d in project.files if d.kind == "wheel" and d.sha256 and d.version]
    if pinned is not None:
        have = sorted({d.version for d in wheels if d.version is not None})
        wheels = [d for d in wheels if pinned.contains(d.version, prereleases=True)]  # type: ignore[arg-type]
        if not wheels:
            versions = ", ".join(str(v) for v in have) or "none"
            raise SpacyIndexError(f"no hashed wheel of {project.display_name} matches "
                                  f"{pinned}; versions with one: {versions}")
        pre = pre or all(d.version.is_prerelease for d in wheels)  # type: ignore[union-attr]
    candidates = [d for d in wheels if pre or not d.version.is_prerelease]  # type: ignore[union-attr]
    label = project.display_name + (str(pinned) if pinned is not None else "")
    if spacy is not None and not force:
        fitting = [d for d in candidates if spacy.admits(d)]
        if not fitting:
            raise NoCompatibleVersion(label, spacy, _minor_series(wheels))
        candidates = fitting
    if not candidates:
        raise SpacyIndexError(f"{label} has only pre-release wheels; pass --pre or a version")
    best = max(candidates, key=Distribution.sort_key)
    return Choice(best, spacy, forced=spacy is not None and not spacy.admits(best))


def resolve_spacy(option: str, env: Environment) -> SpacyTarget:
    """``auto`` → the installed spaCy; ``3.8`` → the whole 3.8 series; ``3.8.2`` → exactly."""
    if option == "auto":
        if env.spacy is None:
            raise SpacyMissing(env.python)
        return SpacyTarget(str(env.spacy), (env.spacy,), env.spacy)
    try:
        v = Version(option)
    except InvalidVersion:
        raise UsageError(f"--spacy needs auto or a version such as 3.8, got {option!r}") from None
    if len(v.release) >= 3:
        return SpacyTarget(str(v), (v,), v)
    major, minor = v.release[0], (v.release[1] if len(v.release) > 1 else 0)
    series = tuple(Version(f"{major}.{minor}.{patch}") for patch in range(40))
    return SpacyTarget(f"{major}.{minor}.x", series, Version(f"{major}.{minor}"))


# --------------------------------------------------------------------------- settings
def paths_from_env(env: Mapping[str, str], cache_dir: Path | None) -> tuple[str, Path]:
    """``(GitHub API URL, cache folder)`` as :class:`spacy_index.config.Settings` gives them,
    without its imports (an install that changes nothing must not load an HTTP library)."""
    api = (env.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")
    if cache_dir is None:
        if env.get("SPACY_INDEX_CACHE_DIR"):
            cache_dir = Path(env["SPACY_INDEX_CACHE_DIR"])
        else:
            import platformdirs

            cache_dir = Path(platformdirs.user_cache_dir("spacy-index", appauthor=False))
    return _api_key(api), cache_dir


def _api_key(api_url: str) -> str:
    """An API URL without credentials, scheme and host in lower case, no trailing slash."""
    parts = urlsplit(api_url.strip())
    netloc = parts.netloc.rpartition("@")[2].lower()
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, "")).rstrip("/")


# --------------------------------------------------------------------------- index pages
@dataclass(frozen=True)
class IndexLocation:
    """``--index``: an http(s) index (a static one, or ``spacy-index serve``), or a folder
    made by ``build`` / ``build --mirror`` (given as a path or a ``file://`` URL)."""

    text: str
    #: the folder that holds ``<project>/index.json`` (a build's ``simple/``), for local ones
    folder: Path | None
    #: the index URL installers get (``--index-url``), ending in ``/``
    url: str


def parse_index(text: str) -> IndexLocation:
    from urllib.request import url2pathname

    if text.startswith(("http://", "https://")):
        return IndexLocation(text, None, text if text.endswith("/") else text + "/")
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"--index {text}: a file:// URL names a folder on this machine "
                             "(file:///path/to/index/)")
        path = Path(url2pathname(unquote(parts.path)))
    elif "://" in text:
        raise UsageError(f"--index {text}: give an http(s):// index, a file:// URL or a "
                         "folder made by `spacy-index build`")
    else:
        path = Path(text).expanduser()
    path = path.resolve()
    if not path.is_dir():
        raise UsageError(f"--index {text}: no such folder (give a folder made by "
                         "`spacy-index build`, a file:// URL or an http(s):// index)")
    simple = path / "simple" if (path / "simple").is_dir() else path
    return IndexLocation(text, simple, simple.as_uri() + "/")


def catalog_from_index(index: str | IndexLocation, names: Sequence[str], known: Catalog,
                       client: httpx.Client | None = None) -> Catalog:
    """Distributions of ``names`` as an index lists them, in PEP 691 JSON or PEP 503 HTML
    (relative links resolved against the page); spaCy requirements come from the catalog by
    filename, else from PEP 658 metadata (the ``.metadata`` file beside a mirror's wheel)."""
    from urllib.parse import urldefrag

    from spacy_index.simple.parse import parse_page

    where = parse_index(index) if isinstance(index, str) else index
    by_filename = {d.filename: d for d in known.files}
    dists: list[Distribution] = []
    for raw in names:
        name = canonicalize_name(split_model(raw)[0])
        page = _project_page(where, name, client)
        if page is None:
            continue
        body, ctype, page_url = page
        try:
            parsed = parse_page(body, ctype, page_url, name)
        except (ValueError, RecursionError) as e:
            raise SpacyIndexError(f"the index {where.text} sent an unreadable page for {name!r}") from e
        for d in parsed.dists:
            if d.version is None:
                continue
            d = replace(d, url=urldefrag(d.url)[0])
            reqs = by_filename[d.filename].requires_dist if d.filename in by_filename else None
            info = parsed.files.get(d.filename)
            if reqs is None and info is not None and info.has_metadata:
                reqs = _requires_from_metadata(d.url + ".metadata", client)
            dists.append(replace(d, requires_dist=reqs))
    return Catalog.from_distributions(dists, source=where.text)


def _project_page(where: IndexLocation, name: NormalizedName,
                  client: httpx.Client | None) -> tuple[bytes, str, str] | None:
    json_type = "application/vnd.pypi.simple.v1+json"
    if where.folder is not None:
        folder = where.folder / name
        if (folder / "index.json").is_file():
            return (folder / "index.json").read_bytes(), json_type, folder.as_uri() + "/"
        if (folder / "index.html").is_file():
            return (folder / "index.html").read_bytes(), "text/html", folder.as_uri() + "/"
        return None
    import httpx

    from spacy_index.http import describe_error, redact_url

    assert client is not None
    url = where.url + f"{name}/"
    try:
        resp = client.get(url, headers={"Accept": f"{json_type}, text/html;q=0.1"})
    except httpx.TransportError as e:
        raise UpstreamUnreachable(f"the index {redact_url(where.text)}", describe_error(e, url)) from None
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise SpacyIndexError(f"the index {redact_url(where.text)} answered HTTP "
                              f"{resp.status_code} for {name!r}")
    ctype = resp.headers.get("content-type", "text/html").split(";")[0].strip().lower()
    return resp.content, ctype, str(resp.url)


def _requires_from_metadata(url: str, client: httpx.Client | None) -> tuple[str, ...] | None:
    from email.parser import BytesHeaderParser

    if url.startswith("file:"):
        try:
            data = _local_path(url).read_bytes()
        except OSError:
            return None
    else:
        import httpx

        if client is None:
            return None
        try:
            resp = client.get(url)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        data = resp.content
    headers = BytesHeaderParser().parsebytes(data)
    return tuple(headers.get_all("Requires-Dist") or ())


def _local_path(url: str) -> Path:
    from urllib.request import url2pathname

    return Path(url2pathname(unquote(urlsplit(url).path)))


# --------------------------------------------------------------------------- the verified cache
def _file_stamp(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _install_dir(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "install" / sha256


def verified_wheel(cache_dir: Path, sha256: str) -> Path | None:
    """The local file with this sha256 if it was verified before (by :func:`download`) and
    has not changed since: same inode, size, mtime and ctime (ctime moves on every write or
    new link, and cannot be set back), so it is not hashed again."""
    try:
        doc = json.loads((_install_dir(cache_dir, sha256) / "verified.json").read_text())
        path = Path(doc["path"])
        return path if _file_stamp(path.stat()) == doc["stamp"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_verified(cache_dir: Path, sha256: str, path: Path) -> None:
    folder = _install_dir(cache_dir, sha256)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".verified.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"path": str(path), "stamp": _file_stamp(path.stat())}))
        os.replace(tmp, folder / "verified.json")
    except OSError:
        pass  # only a shortcut: without it the next run hashes the file again


def _hash_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def download(choice: Choice, cache_dir: Path, *, progress: bool = True,
             transport: httpx.AsyncBaseTransport | None = None,
             ca_bundle: str | None = None, say: Say | None = None,
             anywhere: bool = False) -> tuple[Path, bool]:
    """The verified wheel: ``(path, downloaded?)``. From the cache (a file verified before is
    not hashed again), from a local index's folder (verified in place), or downloaded into
    the cache, verified while streaming, resumed where an earlier run stopped. ``anywhere``:
    a file verified before in a local index's folder will do too (else only the cache's)."""
    d = choice.dist
    assert d.sha256 is not None
    known = verified_wheel(cache_dir, d.sha256)
    files = cache_dir / "files"
    if known is not None and (anywhere or d.url.startswith("file:")
                              or known.parent.parent == files):
        return known, False
    if d.url.startswith("file:"):  # a local index (a mirror folder): verify, use in place
        from spacy_index.errors import DigestMismatch

        local = _local_path(d.url)
        try:
            actual = _hash_file(local)
        except OSError as e:
            raise SpacyIndexError(f"cannot read {d.filename} in the index folder: "
                                  f"{e.strerror or e} ({local})") from None
        if actual != d.sha256:
            raise DigestMismatch(d.filename, d.sha256, actual)
        _remember_verified(cache_dir, d.sha256, local)
        return local, False
    path, downloaded = _fetch(d, cache_dir, progress=progress, transport=transport,
                              ca_bundle=ca_bundle, say=say)
    _remember_verified(cache_dir, d.sha256, path)
    return path, downloaded


def _fetch(d: Distribution, cache_dir: Path, *, progress: bool,
           transport: httpx.AsyncBaseTransport | None, ca_bundle: str | None,
           say: Say | None) -> tuple[Path, bool]:
    import asyncio

    import httpx

    from spacy_index.cache import FileCache, Upstream, UpstreamFileError
    from spacy_index.errors import DigestMismatch
    from spacy_index.http import describe_error, make_async_client

    assert d.sha256 is not None
    up = Upstream(url=d.url, filename=d.filename, sha256=d.sha256, size=d.size)
    kept = {"at_start": 0, "now": 0, "total": d.size}

    async def run() -> tuple[Path, bool]:
        async with make_async_client(transport=transport, ca_bundle=ca_bundle,
                                     timeout=httpx.Timeout(60.0, connect=10.0)) as client:
            cache = FileCache(cache_dir, client, resume=True)
            kept["at_start"] = cache.partial_size(d.sha256)  # type: ignore[arg-type]
            try:
                stream = cache.open(up)
                async with stream:
                    if stream.hit and stream.path is not None:
                        return stream.path, False
                    kept["total"] = stream.size
                    if kept["at_start"] and say is not None:
                        say(f"{d.filename}: resuming the download kept from before "
                            f"({kept['at_start']:,} bytes)")
                    with _progress(d.filename, stream.size, enabled=progress) as advance:
                        async for chunk in stream:
                            advance(len(chunk))
                return cache.path(d.sha256), True  # type: ignore[arg-type]
            finally:
                await cache.aclose()
                kept["now"] = cache.partial_size(d.sha256)  # type: ignore[arg-type]

    for attempt in (1, 2):
        try:
            return asyncio.run(run())
        except KeyboardInterrupt:
            have, total = kept["now"], kept["total"]
            of = f" of {total:,}" if total else ""
            if have:
                raise Interrupted(
                    f"interrupted: {d.filename} is not complete; its first {have:,}{of} bytes "
                    "are kept in the cache and the same command resumes from there") from None
            raise Interrupted(f"interrupted: nothing of {d.filename} was kept; "
                              "nothing was installed") from None
        except DigestMismatch:
            if attempt == 1 and kept["at_start"]:
                if say is not None:
                    say(f"{d.filename}: the download kept from before does not verify; "
                        "downloading it again from byte 0")
                continue
            raise
        except httpx.TransportError as e:
            raise UpstreamUnreachable(
                f"the download of {d.filename}", describe_error(e, d.url),
                _kept_hint(cache_dir, d),
            ) from None
        except UpstreamFileError as e:
            if e.status is not None:
                raise
            raise UpstreamUnreachable(
                f"the download of {d.filename}", e.detail or "connection failed",
                _kept_hint(cache_dir, d),
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _kept_hint(cache_dir: Path, d: Distribution) -> str:
    path = cache_dir / "partial" / f"{d.sha256}.partial"
    try:
        have = path.stat().st_size
    except OSError:
        have = 0
    if have:
        return (f"{have:,} bytes of it are kept in the cache and the same command resumes "
                "from there; check the network")
    return "nothing is cached for it yet; check the network"


class _progress:
    """A rich progress bar (size, speed, ETA) on stderr; silent when not a terminal."""

    def __init__(self, name: str, total: int | None, *, enabled: bool) -> None:
        self._enabled = enabled
        if not enabled:
            return
        from spacy_index.progress import transfer_progress

        self._progress = transfer_progress()
        self._task = self._progress.add_task(name, total=total)

    def __enter__(self) -> Callable[[int], None]:
        if not self._enabled:
            return lambda n: None
        self._progress.start()
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._enabled:
            self._progress.stop()


# --------------------------------------------------------------------------- installers
#: installer options pip and uv both take, so ``auto`` may hand them to uv
_SHARED_FLAGS = frozenset({
    "-q", "--quiet", "-v", "--verbose", "--no-deps", "--pre", "-U", "--upgrade",
    "--no-index", "--force-reinstall", "--reinstall",
})
_SHARED_WITH_VALUE = frozenset({
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
    "--prefix", "--target",
})


@dataclass(frozen=True)
class Installer:
    name: str  #: ``uv`` or ``pip``
    argv: tuple[str, ...]  #: the command up to and including ``install`` and ``--python``
    #: what the one line says of it (``uv pip install, files linked from uv's cache``)
    how: str
    link_mode: str | None = None


def find_uv() -> str | None:
    """uv on PATH, beside this interpreter (the ``uv`` package in this environment, as
    ``pip install 'spacy-index[uv]'`` brings it), or where the ``uv`` package says."""
    import shutil

    found = shutil.which("uv")
    if found:
        return found
    here = Path(sys.executable).parent / ("uv.exe" if os.name == "nt" else "uv")
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError, OSError):
        return None


def _uv_understands(extra: Sequence[str]) -> bool:
    expect_value = False
    for arg in extra:
        if expect_value:
            expect_value = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in _SHARED_WITH_VALUE:
            expect_value = "=" not in arg
        elif flag not in _SHARED_FLAGS:
            return False
    return True


def _this_pip_can_target() -> bool:
    """This interpreter's pip exists and has ``--python`` (pip 22.3+)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return Version(dist_version("pip")) >= Version("22.3")
    except (PackageNotFoundError, InvalidVersion):
        return False


def pick_installer(mode: str, env: Environment, extra: Sequence[str],
                   environ: Mapping[str, str] | None = None) -> Installer:
    """``uv`` when available (``auto``) unless the arguments after ``--`` are pip's own,
    else pip: the target's, or this interpreter's pip with ``--python``."""
    environ = os.environ if environ is None else environ
    uv = find_uv() if mode in ("auto", "uv") else None
    if mode == "uv" and uv is None:
        raise UsageError("--installer uv: uv is not installed (pip install uv, or "
                         "pip install 'spacy-index[uv]')")
    if uv is not None and (mode == "uv" or _uv_understands(extra)):
        link = environ.get("UV_LINK_MODE") or ("clone" if sys.platform == "darwin" else "hardlink")
        return Installer("uv", (uv, "pip", "install", "--python", env.python),
                         f"uv pip install (link mode {link}: files linked from uv's cache)", link)
    pip_flags = ("--disable-pip-version-check",)
    if env.has_pip:
        return Installer("pip", (env.python, "-m", "pip", "install", *pip_flags), "pip install")
    if _this_pip_can_target():
        return Installer("pip", (sys.executable, "-m", "pip", "--python", env.python, "install",
                                 *pip_flags), "pip --python … install (this environment's pip)")
    if mode == "pip":
        raise UsageError(f"--installer pip: pip is not installed for {env.python}")
    raise UsageError(f"neither uv nor pip is available to install into {env.python}; "
                     "pip install uv (or 'spacy-index[uv]')")


def split_passthrough(args: Sequence[str], no_deps: bool) -> tuple[list[str], bool]:
    """The installer arguments without ``--no-deps``, which becomes the flag itself: the
    pipeline is always installed alone first, and ``--no-deps`` then skips its requirements."""
    rest = [a for a in args if a != "--no-deps"]
    return rest, no_deps or len(rest) != len(args)


@dataclass(frozen=True)
class InstallReport:
    installer: Installer
    seconds: float
    #: requirements installed after the pipeline, and requirements left out (``--no-deps``)
    installed_requirements: tuple[str, ...] = ()
    skipped_requirements: tuple[str, ...] = ()
    requirements_seconds: float = 0.0


def wheel_link(cache_dir: Path, dist: Distribution, path: Path) -> Path:
    """A stable path named like the wheel that leads to the verified file (a symlink;
    a hard link or copy where symlinks are impossible). uv's cache is keyed by path: one
    stable path per file keeps it warm, so the next venv gets hard links in milliseconds."""
    assert dist.sha256 is not None
    folder = _install_dir(cache_dir, dist.sha256)
    link = folder / dist.filename
    try:
        if os.path.realpath(link) == os.path.realpath(path) and link.exists():
            return link
    except OSError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{dist.filename}.{os.getpid()}.tmp"
    with _suppress_oserror():
        tmp.unlink()
    try:
        tmp.symlink_to(path)
    except OSError:
        try:
            os.link(path, tmp)
        except OSError:
            import shutil

            shutil.copyfile(path, tmp)
    os.replace(tmp, link)
    return link


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return isinstance(kind, type) and issubclass(kind, OSError)


def install_wheel(choice: Choice, wheel: Path, env: Environment, installer: Installer,
                  extra: Sequence[str], cache_dir: Path, *, no_deps: bool = False,
                  index: IndexLocation | None = None, force: bool = False) -> InstallReport:
    """Install the verified wheel alone with its hash pinned (``name @ file://… --hash``,
    ``--require-hashes --no-deps --no-index``), then, unless ``no_deps``, the requirements it
    names that are missing, with the same installer and the index the user named."""
    d = choice.dist
    assert d.sha256 is not None
    link = wheel_link(cache_dir, d, wheel)
    req = _install_dir(cache_dir, d.sha256) / "requirements.txt"
    line = f"{d.project} @ {link.as_uri()} --hash=sha256:{d.sha256}\n"
    if not req.is_file() or req.read_text() != line:
        tmp = req.with_name(f".requirements.{os.getpid()}.tmp")
        tmp.write_text(line)
        os.replace(tmp, req)
    quiet = [] if any(_is_verbosity(a) for a in extra) else ["-q"]
    cmd = [*installer.argv, "--no-deps", "--no-index", "--require-hashes", *quiet]
    if installer.link_mode:
        cmd += ["--link-mode", installer.link_mode]
    t0 = time.perf_counter()
    _run([*cmd, "-r", str(req), *_without_index_args(extra)], installer, what=f"{d.filename}")
    seconds = time.perf_counter() - t0
    wanted = [r for r in (d.requires_dist or ()) if not _satisfied(r, env, force)]
    if no_deps or not wanted:
        return InstallReport(installer, seconds, (), tuple(wanted) if no_deps else ())
    cmd = [*installer.argv, *quiet]
    if index is not None:
        cmd += ["--index-url", index.url]
    t1 = time.perf_counter()
    _run([*cmd, *wanted, *extra], installer, what=f"the requirements of {d.filename} "
         f"({', '.join(wanted)})", index=index)
    return InstallReport(installer, seconds, tuple(wanted), (), time.perf_counter() - t1)


_INDEX_FLAGS = frozenset({"-i", "--index-url", "--extra-index-url", "-f", "--find-links"})


def _without_index_args(extra: Sequence[str]) -> list[str]:
    """The arguments for installing the cached file alone: where to find packages does not
    apply (and uv refuses index options beside --no-index)."""
    out: list[str] = []
    skip = False
    for arg in extra:
        if skip:
            skip = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in _INDEX_FLAGS:
            skip = not eq
            continue
        if arg == "--no-index":
            continue
        out.append(arg)
    return out


def _is_verbosity(arg: str) -> bool:
    return arg in ("--verbose", "--quiet") or (len(arg) > 1 and arg[0] == "-"
                                               and set(arg[1:]) <= {"v", "q"})


def _satisfied(requirement: str, env: Environment, force: bool = False) -> bool:
    """Installed in a version the requirement admits; with ``force``, spaCy counts as
    satisfied in any version (the point of --force is to ignore its range)."""
    name, spec = split_requirement(requirement)
    have = env.version_of(name)
    if have is None:
        return False
    if force and name == "spacy":
        return True
    return spec is None or spec.contains(have, prereleases=True)


def _run(cmd: Sequence[str], installer: Installer, *, what: str,
         index: IndexLocation | None = None) -> None:
    """Run the installer in its own session, so Ctrl-C reaches only us: we stop it quietly
    (no traceback of its own) and say what is left, once."""
    import subprocess

    proc = subprocess.Popen(list(cmd), start_new_session=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise Interrupted(
            f"interrupted while {installer.name} was installing {what}: the verified wheel "
            "stays in the cache; run the same command again to finish (nothing is downloaded "
            "again)") from None
    if proc.returncode != 0:
        hint = ""
        if index is not None:
            hint = (f" from {index.text}; an index made by `spacy-index build` holds only "
                    "pipelines: install spaCy first, use a `spacy-index serve` URL, or pass "
                    "--no-deps")
        raise SpacyIndexError(f"{installer.name} failed (exit {proc.returncode}) installing "
                              f"{what}{hint}")


# --------------------------------------------------------------------------- catalog cache
def _catalog_path(cache_dir: Path, api_url: str) -> Path:
    key = _api_key(api_url)
    if key == DEFAULT_API_URL:
        return cache_dir / "catalog.json"
    import hashlib

    return cache_dir / f"catalog-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


#: the cached catalog's format (``snapshot.catalog_to_json``) read here without importing
#: the snapshot module; any other format goes to ``snapshot.catalog_from_json``
_CATALOG_FORMAT = 1


def _read_catalog(path: Path, projects: Iterable[str] | None) -> Catalog:
    doc = json.loads(path.read_text())
    if projects is not None:
        wanted = {canonicalize_name(split_model(p)[0]) for p in projects}
        doc = {**doc, "files": [f for f in doc.get("files", ())
                                if canonicalize_name(str(f.get("filename", "")).split("-", 1)[0])
                                in wanted]}
    if doc.get("format") != _CATALOG_FORMAT:
        from spacy_index.sources import snapshot as snapshots

        return snapshots.catalog_from_json(doc)
    from spacy_index.catalog import catalog_from_files_json

    return catalog_from_files_json(doc)


def load_cached_catalog(cache_dir: Path, api_url: str, *, projects: Iterable[str] | None = None,
                        max_age: float = CATALOG_MAX_AGE) -> tuple[Catalog, str, bool] | None:
    """The cached catalog whatever its age, only ``projects`` (requested names) made into
    objects: ``(catalog, how, fresh?)``, or None when there is none (no network here)."""
    path = _catalog_path(cache_dir, api_url)
    try:
        age = time.time() - path.stat().st_mtime
        catalog = _read_catalog(path, projects)
    except (OSError, ValueError, KeyError, TypeError, SpacyIndexError):
        return None
    fresh = age < max_age
    return catalog, "cached catalog" if fresh else "cached catalog, older than a day", fresh


def cached_catalog(cache_dir: Path, *, fetch: Callable[[], Catalog], max_age: float,
                   refresh: bool, api_url: str = DEFAULT_API_URL,
                   projects: Iterable[str] | None = None) -> tuple[Catalog, str]:
    """The catalog for install/list: a cached copy if fresh, else ``fetch()`` (stored), else
    the last cached copy, or when offline the bundled snapshot, which (one rule for every
    command) only stands in for github.com, never for another ``GITHUB_API_URL``. The
    snapshot is stored too, dated as old, so later runs read it fast and still try live."""
    from spacy_index.sources import snapshot as snapshots

    default = _api_key(api_url) == DEFAULT_API_URL
    path = _catalog_path(cache_dir, api_url)
    if not refresh:
        loaded = load_cached_catalog(cache_dir, api_url, projects=projects, max_age=max_age)
        if loaded is not None and loaded[2]:
            return loaded[0], loaded[1]
    try:
        catalog = fetch()
        how, stale = "live catalog", False
    except UpstreamUnreachable:
        if path.is_file():
            try:
                return _read_catalog(path, projects), "cached catalog (offline)"
            except (OSError, ValueError, KeyError, TypeError, SpacyIndexError):
                pass
        if not default:
            raise
        from spacy_index.api import fetch_catalog

        catalog, how, stale = fetch_catalog(offline=True).catalog, "bundled snapshot (offline)", True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(snapshots.catalog_to_json(catalog)))
    if stale:
        os.utime(tmp, (0, 0))  # read fast next time, but never taken for a fresh live copy
    os.replace(tmp, path)
    return catalog, how
