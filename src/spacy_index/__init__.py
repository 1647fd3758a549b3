"""spacy-index: spaCy's trained pipelines as ordinary, lockable, hashed Python packages.

The public API lives in :mod:`spacy_index.api`; the most used names are re-exported here.
Importing this package reads no configuration and creates no client.
"""

from __future__ import annotations

__version__ = "0.1.0"

from spacy_index.api import (
    BuildResult,
    build_index,
    fetch_catalog,
    render_find_links,
    render_index_files,
)
from spacy_index.catalog import Catalog
from spacy_index.model import Distribution, Project

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
