"""The old import path of :mod:`spacy_index.cache.s3`, only for ``server/app.py`` until its
rewrite (issue 12) imports ``spacy_index.cache.s3``; then this file goes."""

from spacy_index.cache.s3 import S3FileStore

__all__ = ["S3FileStore"]
