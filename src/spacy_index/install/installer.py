"""Installing the verified wheel with its hash pinned: uv (files linked from its cache)
where it is available, else pip; then the requirements it names that are missing."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from spacy_index.errors import Interrupted, SpacyIndexError, UsageError
from spacy_index.install.environment import Environment
from spacy_index.install.fetch import install_dir
from spacy_index.install.index import IndexLocation
from spacy_index.install.target import Choice
from spacy_index.model import Distribution, split_requirement

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
    folder = install_dir(cache_dir, dist.sha256)
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
    req = install_dir(cache_dir, d.sha256) / "requirements.txt"
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

