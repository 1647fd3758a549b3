"""The old import path of :mod:`spacy_index.cache.index`, only for ``server/app.py`` until its
rewrite (issue 12) imports ``spacy_index.cache.index``; then this file goes."""

from spacy_index.cache.index import FILES, METADATA, CacheIndex

__all__ = ["FILES", "METADATA", "CacheIndex"]
