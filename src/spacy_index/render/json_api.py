"""Serialise the PEP 691 dicts, and the PyPI-style JSON document pip-tools reads hashes from."""

from __future__ import annotations

import json
from typing import Any

from spacy_index.model import Distribution, Project, upload_time_text
from spacy_index.render.pep691 import UrlFor, _origin_url


def dumps(doc: dict[str, Any]) -> str:
    """Deterministic, compact JSON (sorted keys, ASCII-escaped)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"


def pypi_project_document(project: Project, url_for: UrlFor = _origin_url) -> dict[str, Any]:
    """The subset of PyPI's ``/pypi/<name>/json`` that pip-tools and others read.

    pip-tools maps ``releases[version][*].url`` to ``digests.sha256`` and matches that URL
    against the link pip found, *fragment included*: ``…whl#sha256=…`` from an HTML page,
    ``…whl`` from a PEP 691 JSON page. So each hashed file is listed under both spellings of
    its URL. pip-tools drops *all* hashes of a document when one listed file lacks a sha256,
    so files without a known hash are left out (pip-tools then hashes just those itself).
    """
    releases: dict[str, list[dict[str, Any]]] = {str(v): [] for v in project.versions}
    for d in project.files:
        if d.sha256:
            entry = _release_file(d, url_for)
            releases[str(d.version)].append(entry)
            releases[str(d.version)].append(
                {**entry, "url": f"{entry['url'].split('#')[0]}#sha256={d.sha256}"}
            )
    latest = project.latest() or project.latest(prereleases=True)
    newest = [d for d in project.files if d.version == latest]
    info: dict[str, Any] = {
        "name": project.display_name,
        "version": str(latest) if latest else None,
        "requires_dist": list(newest[-1].requires_dist or []) if newest else [],
        "requires_python": next((d.requires_python for d in newest if d.requires_python), None),
    }
    return {
        "info": info,
        "releases": releases,
        "urls": [_release_file(d, url_for) for d in newest if d.sha256],
    }


def _release_file(d: Distribution, url_for: UrlFor) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": d.filename,
        "url": url_for(d),
        "digests": {"sha256": d.sha256},
        "packagetype": "bdist_wheel" if d.kind == "wheel" else "sdist",
        "requires_python": d.requires_python,
        "yanked": d.yanked is not None,
        "yanked_reason": d.yanked or None,
    }
    if d.size is not None:
        entry["size"] = d.size
    if d.upload_time is not None:
        entry["upload_time_iso_8601"] = upload_time_text(d.upload_time)
    return entry
