"""Where the server's projects come from.

Every source answers ``project(name)`` with a :class:`~spacy_index.model.Project` whose
distributions carry the *upstream* URL; the app rewrites links to ``/files/...`` and streams
through the cache, so clients never see an upstream URL or its credentials.
"""

from spacy_index.server.sources.base import Source
from spacy_index.server.sources.bodies import read_capped
from spacy_index.server.sources.catalog import CatalogSource
from spacy_index.server.sources.clients import FILE_POOL, PAGE_POOL, source_client
from spacy_index.server.sources.folder import FolderSource
from spacy_index.server.sources.index import IndexSource, in_batches

__all__ = [
    "FILE_POOL",
    "PAGE_POOL",
    "CatalogSource",
    "FolderSource",
    "IndexSource",
    "Source",
    "in_batches",
    "read_capped",
    "source_client",
]
