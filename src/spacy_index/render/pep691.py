"""Build the PEP 691 (+ PEP 700, PEP 714) dicts that every other rendering derives from."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from spacy_index.catalog import Catalog
from spacy_index.model import Distribution, Project, upload_time_text

JSON_CONTENT_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_CONTENT_TYPE = "application/vnd.pypi.simple.v1+html"

UrlFor = Callable[[Distribution], str]


def origin_url(dist: Distribution) -> str:
    """Where the file lives upstream: the link every rendering uses unless told otherwise."""
    return dist.url


def api_version(files: Iterable[Distribution], *, status: bool = False) -> str:
    """``1.1`` (PEP 700) only when every file's size is known, since 1.1 makes ``size``
    mandatory; otherwise ``1.0``. We never invent a size. With sizes, ``1.3`` when a file
    carries a PEP 740 provenance and ``1.4`` with a PEP 792 project status."""
    files = list(files)
    if not all(d.size is not None for d in files):
        return "1.0"
    if status:
        return "1.4"
    return "1.3" if any(d.provenance for d in files) else "1.1"


def file_dict(dist: Distribution, url_for: UrlFor = origin_url) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": dist.filename,
        "url": url_for(dist),
        "hashes": {"sha256": dist.sha256} if dist.sha256 else {},
    }
    if dist.requires_python:
        entry["requires-python"] = dist.requires_python
    if dist.core_metadata_sha256:
        # PEP 714: JSON carries only the new key (pip crashed on the old one, pip#12042).
        entry["core-metadata"] = {"sha256": dist.core_metadata_sha256}
    elif dist.has_core_metadata:
        entry["core-metadata"] = True
    if dist.yanked is not None:
        entry["yanked"] = dist.yanked or True
    if dist.size is not None:
        entry["size"] = dist.size
    if dist.upload_time is not None:
        entry["upload-time"] = upload_time_text(dist.upload_time)
    if dist.provenance:
        entry["provenance"] = dist.provenance
    return entry


def project_dict(project: Project, url_for: UrlFor = origin_url) -> dict[str, Any]:
    """The PEP 691 project detail document."""
    doc = project_shell(project)
    doc["files"] = [file_dict(d, url_for) for d in project.files]
    return doc


def project_shell(project: Project) -> dict[str, Any]:
    """:func:`project_dict` with an empty ``files`` list (everything else as it would be:
    the API version still follows every file), for renderers that write the files apart."""
    doc: dict[str, Any] = {
        "meta": {"api-version": api_version(project.files, status=project.status is not None)},
        "name": project.name,
        "versions": project.version_strings(),
        "files": [],
    }
    if project.status is not None:
        status, reason = project.status
        doc["project-status"] = {"status": status, **({"reason": reason} if reason else {})}
    return doc


def root_dict(catalog: Catalog) -> dict[str, Any]:
    """The PEP 691 project list."""
    return {
        "meta": {"api-version": api_version(catalog.files)},
        "projects": [{"name": p.display_name} for p in catalog.projects.values()],
    }
