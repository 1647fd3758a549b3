"""What is installed for the target interpreter: its ``*.dist-info`` folders listed (in this
process when it is this interpreter, else one short subprocess whose answer is kept)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.errors import UsageError


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

