"""The partial file of a download: opened and locked, taken up again, written and compared.

Everything here but :func:`in_thread` blocks; the flight runs it in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from spacy_index.cache.download import Flight

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "first_difference",
    "in_thread",
    "open_partial",
    "partial_path",
    "resume_from_disk",
    "strerror",
    "write_and_hash",
]

_T = TypeVar("_T")
O_BINARY = getattr(os, "O_BINARY", 0)


def _pwrite_all(fd: int, data: Any, pos: int) -> None:
    """Write all of ``data`` at ``pos``. (Module level so tests can inject ENOSPC.)"""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def write_and_hash(fd: int, hasher: Any, buf: bytearray, skip: int, pos: int) -> None:
    data = memoryview(buf)[skip:]
    _pwrite_all(fd, data, pos)
    hasher.update(data)


def first_difference(fd: int, buf: bytearray, n: int, pos: int) -> int | None:
    """Index of the first of ``buf[:n]`` that differs from the file at ``pos``, or None."""
    disk = os.pread(fd, n, pos)
    new = memoryview(buf)[:n]
    if len(disk) == n and new == disk:
        return None
    for i in range(min(n, len(disk))):
        if new[i] != disk[i]:
            return i
    return min(n, len(disk))


async def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in the default executor. If we are cancelled meanwhile, wait for the
    worker to finish before re-raising, so no one closes a descriptor it still uses."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        raise


def strerror(exc: OSError) -> str:
    return exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))


def partial_path(root: Path, sha: str) -> Path:
    """Where the download of ``sha`` is written (by the one process that holds its lock)."""
    return root / "partial" / f"{sha}.partial"


def open_partial(root: Path, sha: str, resume: bool) -> tuple[int, Path, bool]:
    """Open (``flock``-ed) the partial file of ``sha`` under ``root``: its descriptor, its
    path, and whether it is the shared ``<sha>.partial`` (True) rather than a private name
    because another process is downloading the same file."""
    path = partial_path(root, sha)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | O_BINARY
    for _ in range(5):
        fd = os.open(path, flags, 0o644)
        if fcntl is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process downloads it: keep out of its way
            os.close(fd)
            path = folder / f"{sha}.{os.getpid()}-{secrets.token_hex(4)}.partial"
            flags |= os.O_EXCL
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else its owner just renamed or removed it; start over
            break
        os.close(fd)
    else:  # pragma: no cover - pathological contention
        raise OSError(errno.EBUSY, "partial file is busy")
    canonical = path.name == f"{sha}.partial"
    if resume and canonical:
        return fd, path, True  # an earlier run's bytes, re-hashed by the flight
    try:
        # a stale partial of a crashed run; never a new (empty) file: on ext4 a truncate
        # to 0 makes the last close flush the whole file (190 ms for 400 MiB, on the loop)
        if os.fstat(fd).st_size:
            os.ftruncate(fd, 0)
    except OSError:
        os.close(fd)
        raise
    return fd, path, canonical


def resume_from_disk(fl: Flight, chunk_size: int) -> None:
    """Take up an earlier run's partial file: hash its bytes, continue after them."""
    size = os.fstat(fl.fd).st_size
    limit = fl.up.size
    if size <= 0 or (limit is not None and size > limit):
        os.ftruncate(fl.fd, 0)
        return
    pos = 0
    while pos < size:
        block = os.pread(fl.fd, min(1 << 20, size - pos), pos)
        if not block:
            break
        fl.hasher.update(block)
        pos += len(block)
    os.ftruncate(fl.fd, pos)
    fl.written = fl.resumed_from = pos
    fl.published = max(0, pos - chunk_size)
