"""sha256 primitives: a file's digest (one loop for everyone who verifies or names a file by
it) and the check that a string is a digest before a path is built from it."""

from __future__ import annotations

import hashlib
import os

from spacy_index.errors import InvalidDigest
from spacy_index.model import is_sha256

__all__ = ["check_sha256", "file_sha256"]

#: one read per MiB: large enough that the syscalls vanish next to the hashing
BLOCK = 1 << 20


def file_sha256(path: str | os.PathLike[str], block: int = BLOCK) -> str:
    """The lower-case hex sha256 of the file's bytes. Blocking: async code runs it in a
    thread. Reads into one reused buffer, so memory stays flat whatever the file size."""
    hasher = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            hasher.update(view[:n])
    return hasher.hexdigest()


def check_sha256(value: object) -> str:
    """``value`` if it is a lower-case hex sha256 digest, else :class:`InvalidDigest`."""
    if not isinstance(value, str) or not is_sha256(value):
        raise InvalidDigest(value)
    return value
