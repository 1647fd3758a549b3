"""Genuine spaCy pipeline packages (wheels / sdists) for tests and benchmarks.

:func:`build_model_package` makes a blank pipeline (``spacy.blank`` plus a
``sentencizer``), packages it with spaCy's own packaging code
(``spacy.cli.package.package``, i.e. what ``python -m spacy package`` runs:
same ``setup.py`` template, same ``meta.json``/README, ``Requires-Dist:
spacy...``) and builds the artifacts with ``python -m build``.

Build backend: by default (``backend="auto"``) the package directory is built
by calling setuptools' PEP 517 hooks (``setuptools.build_meta.build_wheel`` /
``build_sdist``, what ``python -m build --no-isolation`` calls) in a
subprocess, with the setuptools installed next to the tests: no network,
~1 s per wheel.  ``backend="cli"`` runs
literally ``python -m spacy package <pipeline> <out> --build wheel[,sdist]
--force`` (isolated build: pip fetches setuptools from whatever index the
environment is configured with, so it needs the network or a pip config
providing setuptools).  ``auto`` falls back to ``cli`` when ``build`` or
``setuptools`` is not importable.

Padding: ``pad_bytes=N`` adds an incompressible file of N bytes
(``random.Random(seed).randbytes``, deterministic) inside the pipeline data
directory (``<project>/<project>-<version>/padding.bin``); ``spacy.load``
ignores it.  The wheel is then ``N`` plus ~10 KB.  zlib deflates random data at
only ~30 MB/s here, so a 450 MB wheel takes ~20 s to build: use the
session cache (:func:`session_model_cache` / the ``model_wheels`` fixture).
"""

from __future__ import annotations

import gc
import hashlib
import html
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:  # packaging is a spaCy dependency
    from packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover

    def canonicalize_name(name: str) -> str:  # type: ignore[misc]
        return re.sub(r"[-_.]+", "-", name).lower()


#: SOURCE_DATE_EPOCH used for builds (zip timestamps), 1980-01-02.
SOURCE_DATE_EPOCH = "315619200"
PADDING_FILE = "padding.bin"
_CHUNK = 16 << 20


def default_spacy_version() -> str:
    """``>=X.Y.0,<X.(Y+1).0`` for the installed spaCy (so the package
    installs next to it and ``spacy.load`` does not warn)."""
    spacy = require_spacy()

    major, minor = (int(p) for p in spacy.__version__.split(".")[:2])
    return f">={major}.{minor}.0,<{major}.{minor + 1}.0"


@dataclass(frozen=True)
class ModelPackage:
    """A built spaCy pipeline package."""

    wheel: Path
    sdist: Path | None
    project: str  #: e.g. ``en_core_web_sm`` (import name / spaCy model name)
    version: str
    sha256: str  #: hex sha256 of the wheel
    sdist_sha256: str | None
    metadata: bytes  #: exact bytes of the wheel's ``*.dist-info/METADATA``
    spacy_version: str = ""  #: the meta's ``spacy_version`` range

    @property
    def normalized_name(self) -> str:
        """PEP 503 name, e.g. ``en-core-web-sm``."""
        return canonicalize_name(self.project)

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.wheel, self.sdist) if p is not None]

    def sha256_of(self, path: Path) -> str:
        if path == self.wheel:
            return self.sha256
        if path == self.sdist and self.sdist_sha256 is not None:
            return self.sdist_sha256
        raise ValueError(f"{path} is not an artifact of {self.project}")


def sha256_file(path: os.PathLike[str] | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wheel_metadata(wheel: os.PathLike[str] | str) -> bytes:
    """Exact bytes of the ``<name>.dist-info/METADATA`` member of ``wheel``."""
    with zipfile.ZipFile(wheel) as zf:
        names = [
            n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1
        ]
        if len(names) != 1:
            raise ValueError(f"{wheel}: expected one dist-info/METADATA, got {names}")
        return zf.read(names[0])


def _write_padding(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(_CHUNK, left)
            fh.write(rng.randbytes(n))
            left -= n


def _padding_seed(project: str, version: str, size: int) -> int:
    digest = hashlib.sha256(f"{project}-{version}-{size}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _make_deterministic(pipeline: Path) -> None:
    """The sentencizer serializes its punctuation *set*: order depends on the
    string hash seed.  Sort it so wheels are byte-identical across runs."""
    import srsly

    path = pipeline / "sentencizer.json"
    if path.exists():
        cfg = srsly.read_json(path)
        if isinstance(cfg.get("punct_chars"), list):
            cfg["punct_chars"] = sorted(cfg["punct_chars"])
            srsly.write_json(path, cfg)


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    env["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _can_build_offline() -> bool:
    """setuptools importable here, and able to build wheels (bdist_wheel is
    in setuptools >= 70.1, in the ``wheel`` package before)."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec("setuptools") is None:
        return False
    try:
        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


#: PEP 517 hook call, one process per artifact like ``python -m build``
#: (``build --no-isolation`` spends another ~0.8 s in its own machinery).
_HOOK = (
    "import sys\nfrom setuptools import build_meta\ngetattr(build_meta, sys.argv[1])(sys.argv[2])\n"
)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=_build_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode})\n"
            f"--- stdout ---\n{proc.stdout[-8000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )


def build_model_package(
    out_dir: os.PathLike[str] | str,
    *,
    lang: str = "en",
    name: str = "core_web_sm",
    version: str = "3.8.0",
    spacy_version: str | None = None,
    pad_bytes: int = 0,
    sdist: bool = False,
    sentencizer: bool = True,
    backend: str = "auto",
    keep_build_dir: bool = False,
) -> ModelPackage:
    """Build ``{lang}_{name}-{version}`` into ``out_dir`` (created if needed).

    The wheel (and sdist when ``sdist=True``) end up directly in ``out_dir``;
    intermediate directories are removed unless ``keep_build_dir``.
    ``spacy_version`` defaults to :func:`default_spacy_version`; a range
    that excludes the installed spaCy makes a package pip cannot install
    next to it (useful to test resolution failures).
    """
    spacy = require_spacy()

    if backend not in ("auto", "inprocess", "cli"):
        raise ValueError(f"unknown backend {backend!r}")
    if backend == "auto":
        backend = "inprocess" if _can_build_offline() else "cli"
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    project = f"{lang}_{name}"
    spacy_version = spacy_version or default_spacy_version()
    work = out / f".build-{project}-{version}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        pipeline = work / "pipeline"
        nlp = spacy.blank(lang)
        if sentencizer:
            nlp.add_pipe("sentencizer")
        nlp.meta.update(
            name=name,
            version=version,
            spacy_version=spacy_version,
            description=f"Test pipeline {project} built by tests/wheels.py",
            author="spacy-index tests",
            email="tests@example.invalid",
            url="https://example.invalid/",
            license="MIT",
        )
        nlp.to_disk(pipeline)
        _make_deterministic(pipeline)
        seed = _padding_seed(project, version, pad_bytes)
        pkg_root = work / "pkg"
        pkg_root.mkdir()
        main = pkg_root / f"{project}-{version}"
        formats = ["wheel"] + (["sdist"] if sdist else [])
        if backend == "cli":
            if pad_bytes:
                _write_padding(pipeline / PADDING_FILE, pad_bytes, seed)
            _run(
                [
                    sys.executable,
                    "-m",
                    "spacy",
                    "package",
                    str(pipeline),
                    str(pkg_root),
                    "--build",
                    ",".join(formats),
                    "--force",
                ]
            )
        else:
            from spacy.cli.package import package

            # spaCy's create_file() leaves its file objects to the GC: keep
            # the ResourceWarnings away from `filterwarnings = error`.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                package(
                    pipeline,
                    pkg_root,
                    create_meta=False,
                    create_sdist=False,
                    create_wheel=False,
                    require_parent=True,
                    force=True,
                    silent=True,
                )
                gc.collect()
            if pad_bytes:
                # directly in the package's copy of the pipeline: saves a copy
                _write_padding(
                    main / project / f"{project}-{version}" / PADDING_FILE, pad_bytes, seed
                )
            for fmt in formats:
                _run([sys.executable, "-c", _HOOK, f"build_{fmt}", "dist"], cwd=main)
        dist = main / "dist"
        wheels = sorted(dist.glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel in {dist}, got {wheels}")
        wheel = out / wheels[0].name
        shutil.move(wheels[0], wheel)
        sdist_path = None
        if sdist:
            sdists = sorted(dist.glob("*.tar.gz"))
            if len(sdists) != 1:
                raise RuntimeError(f"expected one sdist in {dist}, got {sdists}")
            sdist_path = out / sdists[0].name
            shutil.move(sdists[0], sdist_path)
    finally:
        if not keep_build_dir:
            shutil.rmtree(work, ignore_errors=True)
    return ModelPackage(
        wheel=wheel,
        sdist=sdist_path,
        project=project,
        version=version,
        sha256=sha256_file(wheel),
        sdist_sha256=sha256_file(sdist_path) if sdist_path else None,
        metadata=wheel_metadata(wheel),
        spacy_version=spacy_version,
    )


def sdist_pkg_info(sdist: os.PathLike[str] | str) -> bytes:
    """Bytes of the top-level ``PKG-INFO`` of an sdist."""
    with tarfile.open(sdist) as tf:
        for member in tf.getmembers():
            if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                fh = tf.extractfile(member)
                assert fh is not None
                return fh.read()
    raise ValueError(f"{sdist}: no PKG-INFO")


# --------------------------------------------------------------------------
# static PEP 503 index


def write_static_index(
    root: os.PathLike[str] | str,
    packages: Iterable[ModelPackage],
    *,
    metadata: bool = False,
    copy: bool = False,
) -> Path:
    """Lay out a static PEP 503 index under ``root``::

        root/simple/index.html
        root/simple/<normalized-name>/index.html   (links ../../files/<file>#sha256=..)
        root/files/<file>                          (hard link, or copy)

    With ``metadata=True`` also ``files/<wheel>.metadata`` and
    ``data-dist-info-metadata``/``data-core-metadata`` attributes (PEP 658/714).
    Returns ``root/simple``.
    """
    root = Path(root)
    files_dir = root / "files"
    simple = root / "simple"
    files_dir.mkdir(parents=True, exist_ok=True)
    simple.mkdir(parents=True, exist_ok=True)
    by_project: dict[str, list[str]] = {}
    for pkg in packages:
        links = by_project.setdefault(pkg.normalized_name, [])
        for path in pkg.files:
            dst = files_dir / path.name
            if not dst.exists():
                if copy:
                    shutil.copy2(path, dst)
                else:
                    try:
                        os.link(path, dst)
                    except OSError:
                        shutil.copy2(path, dst)
            attrs = ""
            if metadata and path == pkg.wheel:
                (files_dir / (path.name + ".metadata")).write_bytes(pkg.metadata)
                mhash = hashlib.sha256(pkg.metadata).hexdigest()
                attrs = (
                    f' data-dist-info-metadata="sha256={mhash}" data-core-metadata="sha256={mhash}"'
                )
            href = f"../../files/{path.name}#sha256={pkg.sha256_of(path)}"
            links.append(f'<a href="{html.escape(href)}"{attrs}>{html.escape(path.name)}</a>')
    for project, links in by_project.items():
        page = simple / project
        page.mkdir(parents=True, exist_ok=True)
        body = "<br/>\n".join(links)
        (page / "index.html").write_text(
            '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" '
            f'content="1.0"><title>Links for {project}</title></head>\n'
            f"<body><h1>Links for {project}</h1>\n{body}\n</body></html>\n"
        )
    index_links = "\n".join(
        f'<a href="{p}/">{p}</a><br/>' for p in sorted(os.listdir(simple)) if (simple / p).is_dir()
    )
    (simple / "index.html").write_text(
        '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" '
        f'content="1.0"><title>Simple index</title></head>\n<body>\n{index_links}\n'
        "</body></html>\n"
    )
    return simple


# --------------------------------------------------------------------------
# session cache + fixtures (import them from conftest.py)


class ModelCache:
    """Builds packages on demand, memoized by arguments, in one base dir."""

    def __init__(self, base_dir: Callable[[str], Path] | os.PathLike[str] | str) -> None:
        self._mkdir = base_dir if callable(base_dir) else self._subdir_factory(Path(base_dir))
        self._built: dict[tuple, ModelPackage] = {}

    @staticmethod
    def _subdir_factory(base: Path) -> Callable[[str], Path]:
        def mk(name: str) -> Path:
            base.mkdir(parents=True, exist_ok=True)
            n = 0
            while (base / f"{name}{n}").exists():
                n += 1
            path = base / f"{name}{n}"
            path.mkdir()
            return path

        return mk

    def __call__(
        self,
        *,
        lang: str = "en",
        name: str = "core_web_sm",
        version: str = "3.8.0",
        spacy_version: str | None = None,
        pad_bytes: int = 0,
        sdist: bool = False,
        sentencizer: bool = True,
    ) -> ModelPackage:
        spacy_version = spacy_version or default_spacy_version()
        key = (lang, name, version, spacy_version, pad_bytes, sdist, sentencizer)
        pkg = self._built.get(key)
        if pkg is None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{lang}_{name}-{version}")
            pkg = build_model_package(
                self._mkdir(f"model-{safe}-"),
                lang=lang,
                name=name,
                version=version,
                spacy_version=spacy_version,
                pad_bytes=pad_bytes,
                sdist=sdist,
                sentencizer=sentencizer,
            )
            self._built[key] = pkg
        return pkg

    def built(self) -> list[ModelPackage]:
        return list(self._built.values())


def session_model_cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    """A :class:`ModelCache` building under ``tmp_path_factory`` directories (the test
    skipped without spaCy)."""
    require_spacy()
    return ModelCache(lambda name: tmp_path_factory.mktemp(name, numbered=True))


@pytest.fixture(scope="session")
def model_wheels(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    """Session-wide memoized builder: ``model_wheels(name="core_web_md",
    version="3.8.0", pad_bytes=50 << 20)`` -> :class:`ModelPackage`. Skips without spaCy."""
    return session_model_cache(tmp_path_factory)


def require_spacy() -> Any:
    """spaCy, or the test skipped (not failed) where it is missing: the pure tests run
    without it; whatever builds a real pipeline or a venv with spaCy calls this."""
    return pytest.importorskip("spacy", reason="needs spaCy (the [test] extra)")


__all__ = [
    "PADDING_FILE",
    "ModelCache",
    "ModelPackage",
    "build_model_package",
    "default_spacy_version",
    "model_wheels",
    "require_spacy",
    "sdist_pkg_info",
    "session_model_cache",
    "sha256_file",
    "wheel_metadata",
    "write_static_index",
]


def meta_archive(packages: Iterable[ModelPackage]) -> bytes:
    """A spacy-models-shaped repository tarball whose ``meta/*.json`` files hold the
    checksums and spaCy range of ``packages`` (for a FakeGitHub ``archive=``)."""
    import io
    import json
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in packages:
            lang, _, name = p.project.partition("_")
            meta = {
                "lang": lang, "name": name, "version": p.version,
                "spacy_version": p.spacy_version, "requirements": [],
                "checksum": p.sdist_sha256, "checksum_whl": p.sha256,
            }
            data = json.dumps(meta).encode()
            info = tarfile.TarInfo(f"explosion-spacy-models-0000000/meta/{p.project}-{p.version}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
