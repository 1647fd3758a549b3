"""Serialise the PEP 691 dicts, and the PyPI-style JSON document pip-tools reads hashes from."""

from __future__ import annotations

import json
from typing import Any

from spacy_index.model import Distribution, Project, upload_time_text
from spacy_index.render.pep691 import UrlFor, origin_url

#: list items or dict entries encoded per call of the C encoder (see :func:`dumps`)
_CHUNK = 500


#: one encoder for every call (``json.dumps`` with options builds a new one per call, a
#: quarter of the time of encoding one file's entry); it keeps no state between calls
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _encode(value: Any) -> str:
    return _ENCODER.encode(value)


def _encode_in_chunks(value: Any) -> str:
    """``_encode(value)``, a big list or dict ``_CHUNK`` members per encoder call."""
    if isinstance(value, list) and len(value) > _CHUNK:
        inner = (_encode(value[i:i + _CHUNK])[1:-1] for i in range(0, len(value), _CHUNK))
        return "[" + ",".join(inner) + "]"
    if isinstance(value, dict) and len(value) > _CHUNK:
        keys = sorted(value)
        inner = (_encode({k: value[k] for k in keys[i:i + _CHUNK]})[1:-1]
                 for i in range(0, len(keys), _CHUNK))
        return "{" + ",".join(inner) + "}"
    return _encode(value)


def dumps(doc: dict[str, Any]) -> str:
    """Deterministic, compact JSON (sorted keys, ASCII-escaped).

    The same bytes as one ``json.dumps`` call, but the big members of the document (a
    project's files, a PyPI document's releases) are encoded a few hundred at a time: one
    C call over 50,000 files holds the GIL for 100 ms and more, stalling a server's event
    loop while a worker thread renders."""
    if not any(isinstance(v, (list, dict)) and len(v) > _CHUNK for v in doc.values()):
        return _encode(doc) + "\n"
    members = (_encode(k) + ":" + _encode_in_chunks(doc[k]) for k in sorted(doc))
    return "{" + ",".join(members) + "}\n"


def dumps_value(value: Any) -> str:
    """One value as :func:`dumps` writes it inside a document (no newline): a list's items
    encoded one by one and joined with ``,`` are the bytes of the whole list."""
    return _encode(value)


def pypi_project_document(project: Project, url_for: UrlFor = origin_url) -> dict[str, Any]:
    """The subset of PyPI's ``/pypi/<name>/json`` that pip-tools and others read.

    pip-tools maps ``releases[version][*].url`` to ``digests.sha256`` and matches that URL
    against the link pip found, *fragment included*: ``…whl#sha256=…`` from an HTML page,
    ``…whl`` from a PEP 691 JSON page. So each hashed file is listed under both spellings of
    its URL. pip-tools drops *all* hashes of a document when one listed file lacks a sha256,
    so files without a known hash are left out (pip-tools then hashes just those itself).
    """
    releases: dict[str, list[dict[str, Any]]] = {v: [] for v in project.version_strings()}
    for d in project.files:
        if d.sha256:
            entry = _release_file(d, url_for)
            # keyed by the file's own release: PyPI lists ``1.0`` and ``1.0.0`` apart, and legacy
            # versions that are not PEP 440 at all
            files = releases.setdefault(d.release, [])
            files.append(entry)
            files.append({**entry, "url": f"{entry['url'].split('#')[0]}#sha256={d.sha256}"})
    latest = project.latest() or project.latest(prereleases=True)
    newest = [d for d in project.files if latest is not None and d.version == latest]
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


_LEGACY_TYPES = ((".egg", "bdist_egg"), (".exe", "bdist_wininst"), (".msi", "bdist_msi"),
                 (".rpm", "bdist_rpm"), (".dmg", "bdist_dmg"))


def _packagetype(d: Distribution) -> str:
    if d.kind == "wheel":
        return "bdist_wheel"
    if d.kind == "sdist":
        return "sdist"
    lower = d.filename.lower()
    return next((t for suffix, t in _LEGACY_TYPES if lower.endswith(suffix)),
                "bdist_wheel" if lower.endswith(".whl") else "sdist" if "." in lower else "bdist_dumb")


def _release_file(d: Distribution, url_for: UrlFor) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": d.filename,
        "url": url_for(d),
        "digests": {"sha256": d.sha256},
        "packagetype": _packagetype(d),
        "requires_python": d.requires_python,
        "yanked": d.yanked is not None,
        "yanked_reason": d.yanked or None,
    }
    if d.size is not None:
        entry["size"] = d.size
    if d.upload_time is not None:
        entry["upload_time_iso_8601"] = upload_time_text(d.upload_time)
    return entry
