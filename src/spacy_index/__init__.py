"""spacy-index: spaCy's trained pipelines as ordinary, lockable, hashed Python packages.

The public API lives in :mod:`spacy_index.api`; the most used names are re-exported here,
lazily (PEP 562): ``import spacy_index`` loads nothing else, so the CLI starts fast, and a
name is imported on first use. Importing this package reads no configuration and creates
no client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spacy_index._version import __version__

#: re-exported name → the module that defines it
_EXPORTS = {
    "BuildResult": "spacy_index.api",
    "build_index": "spacy_index.api",
    "fetch_catalog": "spacy_index.api",
    "render_find_links": "spacy_index.api",
    "render_index_files": "spacy_index.api",
    "Catalog": "spacy_index.catalog",
    "Distribution": "spacy_index.model",
    "Project": "spacy_index.model",
}

if TYPE_CHECKING:
    from spacy_index.api import (
        BuildResult,
        build_index,
        fetch_catalog,
        render_find_links,
        render_index_files,
    )
    from spacy_index.catalog import Catalog
    from spacy_index.model import Distribution, Project


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spacy_index' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BuildResult",
    "Catalog",
    "Distribution",
    "Project",
    "__version__",
    "build_index",
    "fetch_catalog",
    "render_find_links",
    "render_index_files",
]
