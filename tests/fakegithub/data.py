"""The fixture (real releases and repository data of explosion/spacy-models), loaded once per
process, and the byte-level helpers the origins share."""

from __future__ import annotations

import copy
import functools
import gzip
import io
import re
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Literal

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "data" / "spacy-models"
RELEASES_FIXTURE = FIXTURE_DIR / "releases.json.gz"
REPO_DATA_FIXTURE = FIXTURE_DIR / "repo-data.tar.gz"


@functools.cache
def _fixture_releases_text() -> str:
    return gzip.decompress(RELEASES_FIXTURE.read_bytes()).decode("utf-8")


@functools.cache
def _fixture_repo_data() -> bytes:
    return REPO_DATA_FIXTURE.read_bytes()


@functools.cache
def _packed_archive(source: bytes, prefix: str, sha: str) -> bytes:
    """Re-pack a tar.gz under one top-level folder, like ``git archive``."""
    out = io.BytesIO()
    mtime = 1716768000  # stable bytes → stable ETag
    raw = gzip.decompress(source) if source[:2] == b"\x1f\x8b" else source
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as src, \
            gzip.GzipFile(fileobj=out, mode="wb", mtime=mtime, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT,
                         pax_headers={"comment": sha}) as dst:
        top = tarfile.TarInfo(prefix)
        top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o775, mtime
        dst.addfile(top)
        for member in src.getmembers():
            name = member.name.lstrip("./")
            if not name:
                continue
            info = copy.copy(member)
            info.name = f"{prefix}/{name}".rstrip("/")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            dst.addfile(info, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def _tar_to_zip(archive: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for member in src.getmembers():
            if member.isdir():
                dst.writestr(member.name.rstrip("/") + "/", b"")
            elif member.isfile():
                fh = src.extractfile(member)
                dst.writestr(member.name, fh.read() if fh else b"")
    return out.getvalue()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison as used for If-None-Match."""
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in header.split(","))


def _parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """A single ``bytes=`` range → (first, last); None means "ignore, send 200"."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        if start >= size:
            return "unsatisfiable"
        end = int(m.group(2)) if m.group(2) else size - 1
        if end < start:
            return None  # syntactically invalid → ignored
        return start, min(end, size - 1)
    suffix = int(m.group(2))
    if suffix == 0 or size == 0:
        return "unsatisfiable"
    return max(0, size - suffix), size - 1
