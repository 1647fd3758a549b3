"""``spacy-index install``: a ``spacy download`` that picks the pipeline compatible with the
installed spaCy, downloads each wheel once into a verified user cache, and installs it with
the hash pinned.

Choosing is pure (:func:`choose`); the environment is probed once with the target
interpreter; the catalog is the bundled snapshot plus a cached live delta, so an
already-installed pipeline costs no network at all.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from email.parser import BytesHeaderParser
from pathlib import Path
from urllib.parse import urljoin

import httpx
from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.catalog import Catalog
from spacy_index.errors import SpacyIndexError, UpstreamUnreachable, UsageError
from spacy_index.http import describe_error, make_async_client, redact_url
from spacy_index.model import Distribution, spacy_admits, split_requirement

#: spaCy minor series a pipeline can target, for "which spaCy versions have one" messages.
KNOWN_SPACY_MINORS = tuple(Version(v) for v in (
    "1.6", "1.7", "1.8", "1.9", "1.10", "2.0", "2.1", "2.2", "2.3",
    "3.0", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "3.8", "3.9",
))


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
            f"{which}. Upgrade or downgrade spaCy, or pass --spacy X.Y"
        )


class SpacyMissing(SpacyIndexError):
    def __init__(self, python: str) -> None:
        self.python = python
        super().__init__(
            f"spaCy is not installed for {python}; install it first (pip install spacy) "
            "or pass --spacy X.Y to choose for another version"
        )


@dataclass(frozen=True)
class SpacyTarget:
    """The spaCy a pipeline must work with: one version, or a whole ``X.Y`` series."""

    label: str
    versions: tuple[Version, ...]

    def admits(self, dist: Distribution) -> bool:
        return any(spacy_admits(dist.spacy_requirement, v) for v in self.versions)

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Choice:
    dist: Distribution
    spacy: SpacyTarget

    @property
    def requirement_line(self) -> str:
        return f"{self.dist.project}=={self.dist.version} --hash=sha256:{self.dist.sha256}"


@dataclass(frozen=True)
class Environment:
    python: str
    spacy: Version | None
    installed: dict[str, str]  # normalized name -> version
    has_pip: bool


PROBE = r"""
import importlib.metadata as m, importlib.util as u, json
inst = {}
for d in m.distributions():
    try:
        inst[d.metadata["Name"]] = d.version
    except Exception:
        pass
print(json.dumps({"installed": inst, "pip": u.find_spec("pip") is not None}))
"""


def probe(python: str) -> Environment:
    """What is installed for ``python`` (one subprocess, no network)."""
    try:
        out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, check=True,
                             timeout=60)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"cannot run {python!r} to see what is installed: {e}") from None
    data = json.loads(out.stdout)
    installed = {canonicalize_name(k): v for k, v in data["installed"].items()}
    spacy = None
    if "spacy" in installed:
        try:
            spacy = Version(installed["spacy"])
        except InvalidVersion:
            spacy = None
    return Environment(python, spacy, installed, bool(data["pip"]))


def _minor_series(dists: Sequence[Distribution]) -> list[str]:
    have = []
    for minor in KNOWN_SPACY_MINORS:
        probe_versions = (minor, Version(f"{minor}.9"))
        if any(spacy_admits(d.spacy_requirement, v) for d in dists for v in probe_versions):
            have.append(str(minor))
    return have


def split_model(text: str) -> tuple[str, SpecifierSet | None]:
    """``en_core_web_sm`` → (name, None); ``en_core_web_sm==3.8.0`` (any PEP 440 specifier,
    as in a requirement) → (name, specifier)."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not any(c in text for c in "=<>!~ "):
        return text, None
    try:
        req = Requirement(text)
    except InvalidRequirement:
        raise UsageError(f"{text!r} is not a pipeline name or NAME==VERSION") from None
    return req.name, (req.specifier if str(req.specifier) else None)


def choose(catalog: Catalog, name: str, spacy: SpacyTarget, *, pre: bool = False) -> Choice:
    """The newest hashed wheel of ``name`` whose spaCy requirement admits ``spacy``;
    ``name`` may pin versions (``en_core_web_sm==3.8.0``)."""
    name, pinned = split_model(name)
    norm = canonicalize_name(name)
    project = catalog.projects.get(norm)
    if project is None:
        names = [p.display_name for p in catalog.projects.values()]
        close = difflib.get_close_matches(name.replace("-", "_"), names, n=3, cutoff=0.6)
        raise NoSuchModel(name, close)
    wheels = [d for d in project.files if d.kind == "wheel" and d.sha256]
    if pinned is not None:
        have = sorted({d.version for d in wheels})
        wheels = [d for d in wheels if pinned.contains(d.version, prereleases=True)]
        if not wheels:
            versions = ", ".join(str(v) for v in have) or "none"
            raise SpacyIndexError(f"no hashed wheel of {project.display_name} matches "
                                  f"{pinned}; versions with one: {versions}")
        pre = pre or all(d.version.is_prerelease for d in wheels)
    candidates = [d for d in wheels if spacy.admits(d) and (pre or not d.version.is_prerelease)]
    if not candidates:
        label = project.display_name + (str(pinned) if pinned is not None else "")
        raise NoCompatibleVersion(label, spacy, _minor_series(wheels))
    return Choice(max(candidates, key=Distribution.sort_key), spacy)


def resolve_spacy(option: str, env: Environment) -> SpacyTarget:
    """``auto`` → the installed spaCy; ``3.8`` → the whole 3.8 series; ``3.8.2`` → exactly."""
    if option == "auto":
        if env.spacy is None:
            raise SpacyMissing(env.python)
        return SpacyTarget(str(env.spacy), (env.spacy,))
    try:
        v = Version(option)
    except InvalidVersion:
        raise UsageError(f"--spacy needs auto or a version such as 3.8, got {option!r}") from None
    if len(v.release) >= 3:
        return SpacyTarget(str(v), (v,))
    major, minor = v.release[0], (v.release[1] if len(v.release) > 1 else 0)
    series = tuple(Version(f"{major}.{minor}.{patch}") for patch in range(40))
    return SpacyTarget(f"{major}.{minor}.x", series)


# --------------------------------------------------------------------------- index pages
def catalog_from_index(index: str, names: Sequence[str], known: Catalog,
                       client: httpx.Client) -> Catalog:
    """Distributions of ``names`` as an index (URL, or a local folder) lists them, in PEP 691
    JSON or PEP 503 HTML; spaCy requirements come from the catalog by filename, else from
    PEP 658 metadata."""
    from spacy_index.server.sources import parse_page

    by_filename = {d.filename: d for d in known.files}
    dists: list[Distribution] = []
    for raw in names:
        name = canonicalize_name(split_model(raw)[0])
        page = _project_page(index, name, client)
        if page is None:
            continue
        body, ctype, page_url = page
        try:
            parsed = parse_page(body, ctype, page_url, name)
        except (ValueError, RecursionError) as e:
            raise SpacyIndexError(f"the index {index} sent an unreadable page for {name!r}") from e
        extra = parsed.files
        for d in parsed.dists:
            if d.version is None:
                continue
            reqs = by_filename[d.filename].requires_dist if d.filename in by_filename else None
            info = extra.get(d.filename)
            if reqs is None and info is not None and info.has_metadata:
                reqs = _requires_from_metadata(d.url + ".metadata", client)
            dists.append(replace(d, requires_dist=reqs))
    return Catalog.from_distributions(dists, source=index)


def _project_page(index: str, name: NormalizedName, client: httpx.Client) -> tuple[bytes, str, str] | None:
    json_type = "application/vnd.pypi.simple.v1+json"
    if "://" not in index or index.startswith("file://"):
        root = Path(index.removeprefix("file://"))
        if not root.is_dir():
            raise UsageError(f"--index {index}: no such folder (give a folder made by "
                             "`spacy-index build`, a file:// URL or an http(s):// index)")
        for folder in (root / "simple" / name, root / name):
            if (folder / "index.json").is_file():
                return (folder / "index.json").read_bytes(), json_type, folder.as_uri() + "/"
            if (folder / "index.html").is_file():
                return (folder / "index.html").read_bytes(), "text/html", folder.as_uri() + "/"
        return None
    base = index if index.endswith("/") else index + "/"
    url = urljoin(base, f"{name}/")
    try:
        resp = client.get(url, headers={"Accept": f"{json_type}, text/html;q=0.1"})
    except httpx.TransportError as e:
        raise UpstreamUnreachable(f"the index {redact_url(index)}", describe_error(e, url)) from None
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise SpacyIndexError(f"the index {index} answered HTTP {resp.status_code} for {name!r}")
    ctype = resp.headers.get("content-type", "text/html").split(";")[0].strip().lower()
    return resp.content, ctype, str(resp.url)


def _requires_from_metadata(url: str, client: httpx.Client) -> tuple[str, ...] | None:
    try:
        resp = client.get(url)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    headers = BytesHeaderParser().parsebytes(resp.content)
    return tuple(headers.get_all("Requires-Dist") or ())


# --------------------------------------------------------------------------- download + install
def download(choice: Choice, cache_dir: Path, *, progress: bool = True,
             transport: httpx.AsyncBaseTransport | None = None,
             ca_bundle: str | None = None) -> tuple[Path, bool]:
    """The verified wheel in the user cache; ``(path, downloaded?)``."""
    from spacy_index.cache import FileCache, Upstream

    d = choice.dist
    assert d.sha256 is not None
    if d.url.startswith("file://"):  # a local index (a mirror folder): verify, use in place
        import hashlib

        from spacy_index.errors import DigestMismatch

        local = Path(httpx.URL(d.url).path)
        h = hashlib.sha256()
        with open(local, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != d.sha256:
            raise DigestMismatch(d.filename, d.sha256, h.hexdigest())
        return local, False
    up = Upstream(url=d.url, filename=d.filename, sha256=d.sha256, size=d.size)

    async def run() -> tuple[Path, bool]:
        async with make_async_client(transport=transport, ca_bundle=ca_bundle,
                                     timeout=httpx.Timeout(60.0, connect=10.0)) as client:
            cache = FileCache(cache_dir, client)
            try:
                stream = cache.open(up)
                async with stream:
                    if stream.hit and stream.path is not None:
                        return stream.path, False
                    with _progress(d.filename, stream.size, enabled=progress) as advance:
                        async for chunk in stream:
                            advance(len(chunk))
                return cache.path(d.sha256), True
            finally:
                await cache.aclose()

    from spacy_index.cache import UpstreamFileError

    try:
        return asyncio.run(run())
    except httpx.TransportError as e:
        raise UpstreamUnreachable(
            f"the download of {d.filename}", describe_error(e, d.url),
            "nothing is cached for it yet; check the network",
        ) from None
    except UpstreamFileError as e:
        if e.status is not None:
            raise
        raise UpstreamUnreachable(
            f"the download of {d.filename}", e.detail or "connection failed",
            "nothing is cached for it yet; check the network",
        ) from None


class _progress:
    """A rich progress bar (size, speed, ETA) on stderr; silent when not a terminal."""

    def __init__(self, name: str, total: int | None, *, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False, disable=not enabled,
        )
        self._task = self._progress.add_task(name, total=total)

    def __enter__(self) -> Callable[[int], None]:
        self._progress.start()
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


def pip_install(choice: Choice, wheel: Path, env: Environment, extra: Sequence[str]) -> None:
    """Install the cached file with its hash pinned (pip, else ``uv pip``), then whatever
    else the pipeline requires (normally nothing: spaCy is already there)."""
    d = choice.dist
    with tempfile.TemporaryDirectory(prefix="spacy-index-") as tmp:
        named = Path(tmp) / d.filename
        try:
            os.link(wheel, named)
        except OSError:
            shutil.copyfile(wheel, named)
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{d.project} @ {named.as_uri()} --hash=sha256:{d.sha256}\n")
        if env.has_pip:
            base = [env.python, "-m", "pip", "install", "--disable-pip-version-check"]
        else:
            uv = shutil.which("uv")
            if uv is None:
                raise UsageError(f"neither pip nor uv is available for {env.python}")
            base = [uv, "pip", "install", "--python", env.python]
        _run([*base, "--no-deps", "--require-hashes", "-r", str(req), *extra])
        needed = [r for r in (d.requires_dist or ()) if not _satisfied(r, env)]
        if needed:
            _run([*base, *needed, *extra])


def _satisfied(requirement: str, env: Environment) -> bool:
    name, spec = split_requirement(requirement)
    have = env.installed.get(name)
    if have is None:
        return False
    try:
        return spec is None or SpecifierSet(str(spec)).contains(Version(have), prereleases=True)
    except InvalidVersion:
        return False


def _run(cmd: Sequence[str]) -> None:
    """Run the installer in its own session, so Ctrl-C reaches only us: we stop it quietly
    (no pip traceback) and say what is left, once."""
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
        raise
    if proc.returncode != 0:
        raise SpacyIndexError(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} failed (exit {proc.returncode})")


# --------------------------------------------------------------------------- catalog cache
def cached_catalog(cache_dir: Path, *, fetch: Callable[[], Catalog], max_age: float,
                   refresh: bool, api_url: str = "https://api.github.com") -> tuple[Catalog, str]:
    """The catalog for install/list: a cached copy if fresh, else ``fetch()`` (stored), else
    the last cached copy, or when offline the bundled snapshot, which (one rule for every
    command) only stands in for github.com, never for another ``GITHUB_API_URL``."""
    from spacy_index.sources import snapshot as snapshots

    default = api_url.rstrip("/") == "https://api.github.com"
    suffix = "" if default else "-" + hashlib.sha256(api_url.encode()).hexdigest()[:12]
    path = cache_dir / f"catalog{suffix}.json"
    if not refresh and path.is_file() and time.time() - path.stat().st_mtime < max_age:
        try:
            return snapshots.catalog_from_json(json.loads(path.read_text())), "cached catalog"
        except (ValueError, KeyError, SpacyIndexError):
            pass
    try:
        catalog = fetch()
    except UpstreamUnreachable:
        if path.is_file():
            return snapshots.catalog_from_json(json.loads(path.read_text())), "cached catalog (offline)"
        if not default:
            raise
        from spacy_index.api import fetch_catalog

        return fetch_catalog(offline=True).catalog, "bundled snapshot (offline)"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(snapshots.catalog_to_json(catalog)))
    os.replace(tmp, path)
    return catalog, "live catalog"
