"""The ``METADATA`` member of a wheel: which one it is, whether it may be read, and the
caps that keep a hostile archive from making :mod:`zipfile` read hundreds of MB."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.errors import CorruptWheel, InvalidFilename, MetadataError
from spacy_index.model import parse_filename

#: A METADATA member larger than this (compressed or not) is refused.
MAX_METADATA_SIZE = 32 << 20
#: the largest central directory read by HTTP ranges (a 100k-member wheel has about 8 MB),
#: or from a wheel on disk (:mod:`zipfile` would read all of it, whatever it claims)
MAX_CENTRAL_DIRECTORY = 16 << 20

_FLAG_ENCRYPTED = 0x1
#: the compression methods the remote reader accepts for METADATA
_REMOTE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


class TooBig(Exception):
    """A read of ``size`` bytes while zipfile opens an archive: its central directory (the
    only read there that is not a few bytes of the end records) is over the cap."""

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(f"a read of {size} bytes")


def select_metadata_name(names: Iterable[str], filename: str) -> str:
    """The name of the ``METADATA`` member of the wheel ``filename`` among ``names``.

    The ``.dist-info`` directory is the top-level one whose ``<name>-<version>`` matches the
    wheel filename's project and version (normalized as in the wheel spec); if several match,
    the one with a top-level ``METADATA``.
    """
    parsed = parse_filename(filename)
    if parsed.kind != "wheel":
        raise InvalidFilename(filename, "not a wheel")
    names = set(names)
    dirs = {n.split("/", 1)[0] for n in names if "/" in n}
    dist_infos = sorted(d for d in dirs if d.endswith(".dist-info"))
    matching = [d for d in dist_infos if _dist_info_matches(d, parsed.name, parsed.version)]
    with_metadata = [d for d in matching if f"{d}/METADATA" in names]
    if len(with_metadata) == 1:
        return f"{with_metadata[0]}/METADATA"
    if len(matching) == 1:
        raise CorruptWheel(f"{matching[0]}/ has no METADATA")
    if matching:
        raise CorruptWheel(f"ambiguous .dist-info directories: {', '.join(matching)}")
    found = ", ".join(dist_infos) or "none"
    raise CorruptWheel(
        f"no .dist-info directory for {parsed.name} {parsed.version} (found: {found})"
    )


def _dist_info_matches(dirname: str, name: str, version: Version) -> bool:
    stem = dirname.removesuffix(".dist-info")
    for m in re.finditer("-", stem):
        dist, ver = stem[: m.start()], stem[m.end() :]
        if canonicalize_name(dist) != name:
            continue
        try:
            if Version(ver) == version:
                return True
        except InvalidVersion:
            if ver == str(version):
                return True
    return False


def metadata_info(zf: zipfile.ZipFile, filename: str, *, remote: bool) -> zipfile.ZipInfo:
    """The METADATA member of the wheel ``filename`` (see :func:`select_metadata_name`),
    refused when it is encrypted, too large, or (``remote``) compressed other than stored or
    deflated."""
    info = zf.getinfo(select_metadata_name(zf.namelist(), filename))
    if info.flag_bits & _FLAG_ENCRYPTED:
        raise CorruptWheel(f"{info.filename} is encrypted")
    if remote and info.compress_type not in _REMOTE_METHODS:
        raise MetadataError(
            f"{info.filename} uses unsupported compression method {info.compress_type}"
        )
    if max(info.compress_size, info.file_size) > MAX_METADATA_SIZE:
        raise CorruptWheel(f"{info.filename} is implausibly large ({info.file_size} bytes)")
    return info


def zip_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if text == "File is not a zip file":
        return "not a ZIP archive (no end of central directory record)"
    return text


class CappedFile:
    """A binary file for :mod:`zipfile` whose reads of more than ``cap`` bytes raise
    :class:`TooBig` (``cap = None``: no limit)."""

    def __init__(self, raw: Any, cap: int | None) -> None:
        self.raw = raw
        self.cap = cap

    def read(self, n: int = -1) -> bytes:
        if self.cap is not None:
            pos = self.raw.tell()
            want = n if n is not None and n >= 0 else self.raw.seek(0, 2) - pos
            self.raw.seek(pos)
            if want > self.cap:
                raise TooBig(want)
        return self.raw.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True
