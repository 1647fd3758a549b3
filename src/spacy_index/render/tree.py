"""Lay out a whole static index as ``{relative path: bytes}``. Pure and deterministic."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from packaging.utils import canonicalize_name

from spacy_index.catalog import Catalog
from spacy_index.model import Distribution
from spacy_index.render import html, pep691
from spacy_index.render.catalogue import catalogue_files
from spacy_index.render.json_api import dumps, pypi_project_document

MARKER = ".spacy-index.json"
#: the URL of ``dist`` as written into the page at relative path ``page`` of the tree
Linker = Callable[[Distribution, str], str]


def origin_links(dist: Distribution, page: str) -> str:
    """Link to where the file lives upstream (GitHub): the default static index."""
    return dist.url


def mirror_links(base_url: str | None = None) -> Linker:
    """Link to ``files/<filename>`` inside the tree: relative to each page, or absolute under
    ``base_url`` when given (pip-tools matches PyPI-style JSON URLs literally)."""

    def link(dist: Distribution, page: str) -> str:
        target = f"files/{quote(dist.filename)}"
        if base_url:
            return base_url.rstrip("/") + "/" + target
        return posixpath.relpath(target, posixpath.dirname(page) or ".")

    return link


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
    catalog: Catalog, links: Linker = origin_links, *, pypi_json: bool = True
) -> dict[str, bytes]:
    """Every file of the static index: PEP 503 HTML and PEP 691 JSON side by side
    (``index.html``/``index.json``), the PyPI-style JSON documents, ``find-links.html``, and
    the catalogue page (``index.html`` at the root, see :mod:`spacy_index.render.catalogue`)."""
    out: dict[str, bytes] = {}
    all_files: list[dict[str, Any]] = []
    for name, project in catalog.projects.items():
        page = f"simple/{name}/index.html"
        doc = pep691.project_dict(project, lambda d, page=page: links(d, page))
        out[page] = html.project_page(doc, project.display_name).encode()
        out[f"simple/{name}/index.json"] = dumps(doc).encode()
        all_files.extend(pep691.file_dict(d, lambda d: links(d, "find-links.html")) for d in project.files)
        if pypi_json:
            for path in pypi_json_paths(project.display_name):
                body = pypi_project_document(project, lambda d, path=path: links(d, path))
                out[path] = dumps(body).encode()
    root = pep691.root_dict(catalog)
    out["simple/index.html"] = html.root_page(root).encode()
    out["simple/index.json"] = dumps(root).encode()
    out["find-links.html"] = html.find_links_page(all_files).encode()
    # the catalogue people read: index.html, catalogue.js/.css, catalogue/<name>.html
    out.update(catalogue_files(catalog, links))
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
