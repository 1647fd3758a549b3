"""An upstream index's project page (PEP 691 JSON, PEP 503 HTML or a flat find-links page)
as distributions, in the upstream's order, under a time budget. Pure: bytes in, data out."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from packaging.utils import NormalizedName

from spacy_index.errors import InvalidFilename, OverBudget
from spacy_index.model import (
    Distribution,
    ListedFilename,
    WheelMemo,
    is_sha256,
    parse_filename,
    parse_listed_filename,
    parse_timestamp,
)
from spacy_index.urls import without_userinfo


class _Anchors(HTMLParser):
    def __init__(self, budget: _Budget) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[dict[str, str | None]] = []
        self.meta: dict[str, str] = {}
        self.budget = budget

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.budget.check()
        if tag == "a":
            self.links.append(dict(attrs))
        elif tag == "meta":
            found = dict(attrs)
            if found.get("name") and found.get("content") is not None:
                self.meta[str(found["name"])] = str(found["content"])


def _metadata_flag(value: Any) -> tuple[bool, str | None]:
    """PEP 658/714 ``core-metadata`` value → (available, sha256 or None)."""
    if isinstance(value, dict):
        sha = value.get("sha256")
        return True, sha.lower() if isinstance(sha, str) and is_sha256(sha.lower()) else None
    if isinstance(value, str):
        if value.startswith("sha256="):
            sha = value.removeprefix("sha256=").lower()
            return True, sha if is_sha256(sha) else None
        return value.lower() == "true", None
    return bool(value), None


@dataclass(frozen=True)
class UpstreamFile:
    """What the server knows of a file beyond the Distribution: upstream metadata."""

    has_metadata: bool
    metadata_sha256: str | None


@dataclass(frozen=True)
class ParsedPage:
    """A project page (or flat page) from an upstream index, every listed file kept."""

    dists: list[Distribution]
    files: dict[str, UpstreamFile]
    #: PEP 700 ``versions``, where the page gives them
    versions: tuple[str, ...] | None = None
    #: PEP 792 ``(status, reason)``, where the page gives one
    status: tuple[str, str | None] | None = None
    #: files left out because their names are unsafe as paths, with the reason
    refused: tuple[str, ...] = ()


class _Budget:
    """A deadline, checked once per JSON object, HTML tag and file while a page is parsed.

    Called as json.loads's ``object_hook``, it also makes a Python call per JSON object,
    where another thread can take the GIL: one C call over a 9 MB page would hold it for
    100-500 ms and stall the event loop."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.deadline = math.inf if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise OverBudget(f"parsing took over {self.seconds:g} s")

    def __call__(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.check()
        return obj


def _json_entries(body: bytes, budget: _Budget) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    doc = json.loads(body, object_hook=budget)
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise ValueError("not a PEP 691 project page")
    entries = []
    for f in doc["files"]:
        if not isinstance(f, dict):
            raise ValueError("a PEP 691 file entry is not an object")
        hashes = f.get("hashes")
        if not isinstance(hashes, dict):
            raise ValueError("a PEP 691 file entry has no hashes object")
        entries.append({
            "filename": f.get("filename"), "url": f.get("url"),
            "sha256": hashes.get("sha256"),
            "requires_python": f.get("requires-python"),
            "metadata": f.get("core-metadata", f.get("dist-info-metadata", False)),
            "yanked": f.get("yanked"), "size": f.get("size"),
            "upload_time": f.get("upload-time"), "provenance": f.get("provenance"),
        })
    return entries, doc


def _html_entries(body: bytes, budget: _Budget) -> tuple[list[dict[str, Any]], dict[str, str]]:
    parser = _Anchors(budget)
    parser.feed(body.decode("utf-8", errors="replace"))
    entries = []
    for a in parser.links:
        href = a.get("href") or ""
        base, _, fragment = href.partition("#")
        sha = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        yanked = a.get("data-yanked")
        path = urlsplit(base).path
        entries.append({
            # the file is what the URL's path names (as pip reads it), unquoted, no query
            "filename": unquote(path.rsplit("/", 1)[-1]), "url": base, "sha256": sha,
            "requires_python": a.get("data-requires-python"),
            "metadata": a.get("data-core-metadata", a.get("data-dist-info-metadata")) or False,
            "yanked": (yanked or True) if yanked is not None else None,
            "size": None, "upload_time": a.get("data-upload-time"),
            "provenance": a.get("data-provenance"),
        })
    return entries, parser.meta


def _status(value: Any, reason: Any) -> tuple[str, str | None] | None:
    if not isinstance(value, str) or not value:
        return None
    return value, reason if isinstance(reason, str) else None


def _entries(body: bytes, content_type: str, clock: _Budget) -> tuple[
        list[dict[str, Any]], tuple[str, ...] | None, tuple[str, str | None] | None]:
    """The page's file entries (one shape for both formats), PEP 700 versions, PEP 792 status."""
    versions = status = None
    if content_type.startswith("application/vnd.pypi.simple.v1+json"):
        entries, doc = _json_entries(body, clock)
        listed = doc.get("versions")
        if isinstance(listed, list) and all(isinstance(v, str) for v in listed):
            versions = tuple(listed)
        ps = doc.get("project-status")
        if isinstance(ps, dict):
            status = _status(ps.get("status"), ps.get("reason"))
    else:
        entries, meta = _html_entries(body, clock)
        status = _status(meta.get("pypi:project-status"), meta.get("pypi:project-status-reason"))
    return entries, versions, status


def _distribution(e: dict[str, Any], name: NormalizedName, listed_file: ListedFilename,
                  page_url: str) -> Distribution:
    """One entry whose filename was accepted; every field the page gives in the wrong type
    is left out, not an error."""
    sha = e["sha256"].lower() if isinstance(e["sha256"], str) else None
    size = e["size"] if isinstance(e["size"], int) and not isinstance(e["size"], bool) and e["size"] >= 0 else None
    yanked = e["yanked"]
    url = e["url"] if e["url"].startswith(("https://", "http://")) else urljoin(page_url, e["url"])
    url = without_userinfo(url)[0]  # auth is per origin, never in URLs
    provenance = e["provenance"] if isinstance(e["provenance"], str) and e["provenance"] else None
    return Distribution(
        project=name, filename=e["filename"], url=url,
        version=listed_file.version, kind=listed_file.kind,
        version_text=None if listed_file.version is not None else listed_file.version_text,
        sha256=sha if sha and is_sha256(sha) else None, size=size,
        upload_time=parse_timestamp(e["upload_time"]) if isinstance(e["upload_time"], str) else None,
        requires_python=e["requires_python"] if isinstance(e["requires_python"], str) else None,
        yanked=(yanked if isinstance(yanked, str) else "") if yanked not in (None, False) else None,
        provenance=urljoin(page_url, provenance) if provenance else None,
    )


def parse_page(
    body: bytes, content_type: str, page_url: str, project: NormalizedName | None,
    *, budget: float | None = None,
) -> ParsedPage:
    """Parse a PEP 691 JSON or PEP 503 HTML page (or a flat find-links page when ``project``
    is None) into distributions, in the upstream's order.

    Every file the page lists is kept, whatever its format or version spelling (``.egg``,
    ``.exe``, ``.tar.bz2``, legacy versions): pip and uv skip what they cannot use. Only names
    that are unsafe as a path are refused. On a flat page (no project), only wheels and sdists
    can say which project they belong to, so only those are kept.

    ``budget``: seconds the parse may take, else :class:`OverBudget` (a ``ValueError``).
    """
    clock = _Budget(budget)
    entries, versions, status = _entries(body, content_type, clock)
    dists: list[Distribution] = []
    extra: dict[str, UpstreamFile] = {}
    refused: list[str] = []
    memo: WheelMemo = {}
    for e in entries:
        clock.check()
        filename = e["filename"]
        if not isinstance(filename, str) or not isinstance(e["url"], str):
            continue
        try:
            if project is None:
                strict = parse_filename(filename)
                name, listed_file = strict.name, ListedFilename(strict.version, str(strict.version), strict.kind)
            else:
                name, listed_file = project, parse_listed_filename(filename, project, memo)
        except InvalidFilename as exc:
            if project is not None:
                refused.append(f"{filename!r}: {exc.reason}")
            continue
        has_meta, meta_sha = _metadata_flag(e["metadata"])
        dists.append(_distribution(e, name, listed_file, page_url))
        extra[filename] = UpstreamFile(has_meta and listed_file.kind == "wheel", meta_sha)
    return ParsedPage(dists, extra, versions, status, tuple(refused))
