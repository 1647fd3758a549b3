"""Lay out a whole static index as ``{relative path: bytes}``. Pure and deterministic."""

from __future__ import annotations

import json
from typing import Any

from packaging.utils import canonicalize_name

from spacy_index.catalog import Catalog
from spacy_index.render import html, pep691
from spacy_index.render.json_api import dumps, pypi_project_document
from spacy_index.render.pep691 import UrlFor, _origin_url

MARKER = ".spacy-index.json"


def pypi_json_paths(name: str) -> list[str]:
    """Where pip-tools looks for the PyPI-style ``<name>/json`` given ``…/simple`` or
    ``…/simple/`` as the index URL.

    pip-tools < 7.5 used ``urljoin(index_url, "pypi")``: ``/pypi/`` for ``…/simple`` and
    ``/simple/pypi/`` for ``…/simple/``. pip-tools 7.5+ strips the ``simple`` segment and
    asks for ``/<normalized name>/json`` (seen with 7.6.2).
    """
    norm = canonicalize_name(name)
    return [f"pypi/{norm}/json", f"simple/pypi/{norm}/json", f"{norm}/json"]


def index_files(
    catalog: Catalog, url_for: UrlFor = _origin_url, *, pypi_json: bool = True
) -> dict[str, bytes]:
    """Every file of the static index: PEP 503 HTML and PEP 691 JSON side by side
    (``index.html``/``index.json``), the PyPI-style JSON documents, and ``find-links.html``."""
    out: dict[str, bytes] = {}
    all_files: list[dict[str, Any]] = []
    for name, project in catalog.projects.items():
        doc = pep691.project_dict(project, url_for)
        out[f"simple/{name}/index.html"] = html.project_page(doc, project.display_name).encode()
        out[f"simple/{name}/index.json"] = dumps(doc).encode()
        all_files.extend(doc["files"])
        if pypi_json:
            body = dumps(pypi_project_document(project, url_for)).encode()
            for path in pypi_json_paths(project.display_name):
                out[path] = body
    root = pep691.root_dict(catalog)
    out["simple/index.html"] = html.root_page(root).encode()
    out["simple/index.json"] = dumps(root).encode()
    out["find-links.html"] = html.find_links_page(all_files).encode()
    projects, files, hashed = catalog.counts()
    marker = {
        "generator": "spacy-index",
        "source": catalog.source,
        "snapshot_date": catalog.snapshot_date,
        "projects": projects,
        "files": files,
        "files_with_sha256": hashed,
    }
    out[MARKER] = (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode()
    return out
