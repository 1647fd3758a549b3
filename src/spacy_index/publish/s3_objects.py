"""What :mod:`spacy_index.publish.s3` puts into a bucket: each object's headers and place in
the upload order, the entries (content hashed once), and the manifest that records them."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spacy_index.errors import PublishError
from spacy_index.publish.guard import check_relative_path
from spacy_index.publish.report import Content
from spacy_index.render.tree import MARKER

MANIFEST = ".spacy-index-manifest.json"
LOCK = ".spacy-index.lock"
#: Written last (in this order), after everything they link to.
ROOTS = ("simple/index.html", "simple/index.json", "find-links.html", MARKER)
PAGE_CACHE_CONTROL = "max-age=600"
FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
SHA256_METADATA = "sha256"  # x-amz-meta-sha256 on every object we write

_HASH_BLOCK = 1 << 20


# --------------------------------------------------------------------------- #
# Object headers and order
# --------------------------------------------------------------------------- #
def is_file_object(path: str) -> bool:
    """Immutable payloads (uploaded first, cached forever) as opposed to pages."""
    return path.startswith("files/") or path.endswith(".metadata")


def content_type(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".html"):
        return "text/html; charset=utf-8"
    if path.startswith("simple/") and name == "index.json":
        return "application/vnd.pypi.simple.v1+json"
    if name in ("json",) or name.endswith(".json"):
        return "application/json"
    if name.endswith((".whl", ".zip")):
        return "application/zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "application/gzip"
    if name.endswith(".metadata"):
        return "text/plain"
    return "application/octet-stream"


def cache_control(path: str) -> str:
    return FILE_CACHE_CONTROL if is_file_object(path) else PAGE_CACHE_CONTROL


def phase(path: str) -> tuple[int, int, str]:
    """Upload order: files, then pages, then the roots (in ROOTS order)."""
    if path in ROOTS:
        return (2, ROOTS.index(path), path)
    if is_file_object(path):
        return (0, 0, path)
    return (1, 0, path)


# --------------------------------------------------------------------------- #
# Entries and the manifest
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Entry:
    path: str
    sha256: str
    size: int
    source: Content
    mtime_ns: int = 0


Record = tuple[str, int, str]  #: (sha256, size, ETag without quotes)


def etag(value: object) -> str:
    return str(value or "").strip('"')


def _hash_file(path: Path) -> tuple[str, int, int]:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        while block := fh.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest(), st.st_size, st.st_mtime_ns


def entries(files: Mapping[str, Content]) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for path, source in files.items():
        check_relative_path(path)
        if path in (MANIFEST, LOCK):
            raise PublishError(f"refusing to publish {path!r}: the name is reserved for spacy-index")
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            out[path] = Entry(path, hashlib.sha256(data).hexdigest(), len(data), data)
        elif isinstance(source, Path):
            try:
                sha, size, mtime = _hash_file(source)
            except OSError as exc:
                raise PublishError(
                    f"cannot read {str(source)!r} for {path!r}: {exc.strerror or exc}; "
                    "nothing was uploaded"
                ) from None
            out[path] = Entry(path, sha, size, source, mtime)
        else:
            raise TypeError(f"{path!r}: expected bytes or a Path, not {type(source).__name__}")
    return out


def records(entries: Mapping[str, Entry], etags: Mapping[str, str]) -> dict[str, Record]:
    return {p: (e.sha256, e.size, etags[p]) for p, e in entries.items()}


def manifest_body(records: Mapping[str, Record]) -> bytes:
    doc = {
        "generator": "spacy-index",
        "version": 1,
        "files": {p: {"sha256": sha, "size": size, "etag": etag}
                  for p, (sha, size, etag) in sorted(records.items())},
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def parse_manifest(body: bytes) -> dict[str, Record]:
    """The manifest's files; ``{}`` for anything unreadable (then nothing is deleted)."""
    try:
        files = json.loads(body)["files"]
        return {str(p): (str(v["sha256"]), int(v["size"]), etag(v.get("etag")))
                for p, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
