"""Write a rendered index to a folder, atomically.

The whole new tree is staged in a sibling folder, then swapped in with one atomic
``renameat2(RENAME_EXCHANGE)`` (Linux), so a reader sees the whole old tree or the whole new
one, never a mix. If anything fails before the swap the previous output is byte-identical; if
nothing changed, nothing is written at all (not even a timestamp).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from spacy_index.errors import OutputLocked, PublishError
from spacy_index.hashing import file_sha256
from spacy_index.publish.guard import check_relative_path, check_shrink, marker_file_count
from spacy_index.publish.report import Content, PublishReport
from spacy_index.render.tree import MARKER


def list_tree(root: Path) -> list[str]:
    """Relative posix paths of every regular file under ``root`` (nothing is read)."""
    return sorted(
        Path(dirpath, name).relative_to(root).as_posix()
        for dirpath, _dirs, names in os.walk(root)
        for name in names
    )


def same_content(existing: Path, new: Content) -> bool:
    """Whether ``existing`` already holds ``new`` (cheap for hard links and size changes)."""
    try:
        st = existing.stat()
    except OSError:
        return False
    if isinstance(new, bytes):
        return st.st_size == len(new) and existing.read_bytes() == new
    if os.path.samefile(existing, new):
        return True
    return st.st_size == new.stat().st_size and file_sha256(existing) == file_sha256(new)


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` as ``{relative posix path: bytes}``."""
    tree: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = Path(dirpath, name)
            tree[full.relative_to(root).as_posix()] = full.read_bytes()
    return tree


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``out``'s parent folder itself (``flock`` works on
    a directory's descriptor): a second build there fails fast, and no lock file is left
    behind in the user's working folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise OutputLocked(str(out)) from e
        yield
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE). False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def publish_folder(
    files: Mapping[str, Content], out: Path, *, allow_shrink: bool = False
) -> PublishReport:
    """Make ``out`` contain exactly ``files``; see the module docstring for the guarantees."""
    for path in files:
        check_relative_path(path)
    out = out.absolute()
    try:
        with output_lock(out):
            return _publish_locked(files, out, allow_shrink=allow_shrink)
    except OSError as e:
        raise PublishError(
            f"cannot write the index to {str(out)!r}: {e.strerror or e}; "
            "the previous output is unchanged"
        ) from e


def _publish_locked(files: Mapping[str, Content], out: Path, *, allow_shrink: bool) -> PublishReport:
    for stale in out.parent.glob(f".{out.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    existing: list[str] = []
    if out.exists():
        if not out.is_dir():
            raise PublishError(f"output {str(out)!r} exists and is not a folder")
        existing = list_tree(out)
        if existing and MARKER not in existing:
            raise PublishError(
                f"refusing to replace {str(out)!r}: it is not empty and was not written by "
                "spacy-index; choose a new or empty folder"
            )
    changed = sorted(set(existing) ^ set(files)) + [
        rel for rel in sorted(set(existing) & set(files)) if not same_content(out / rel, files[rel])
    ]
    if not changed:
        return PublishReport(out, changed=False, files_written=0, bytes_written=0, files_changed=0)
    check_shrink(marker_file_count(out / MARKER if MARKER in existing else None),
                 marker_file_count(files.get(MARKER)), allow_shrink=allow_shrink)

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        written = 0
        for rel, data in sorted(files.items()):
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                target.write_bytes(data)
                written += len(data)
            else:
                _link_or_copy(data, target)
                written += target.stat().st_size
        os.chmod(staging, 0o755)
        created = not out.exists()
        if created:
            os.rename(staging, out)
        elif _exchange(staging, out):
            shutil.rmtree(staging)
        else:  # no atomic exchange: keep the window as small as two renames
            old = out.parent / f".{out.name}.staging-old"
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PublishReport(
        out, changed=True, files_written=len(files), bytes_written=written,
        files_changed=len(changed), created=created,
    )


def _link_or_copy(src: Path, target: Path) -> None:
    """A hard link (instant, no space) when on the same filesystem, else a copy."""
    try:
        os.link(src, target)
    except OSError:
        shutil.copyfile(src, target)
    os.chmod(target, 0o644)
