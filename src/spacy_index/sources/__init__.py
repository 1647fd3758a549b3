"""Sources of distributions: GitHub releases, spacy-models metadata, catalog snapshots.

These modules (with :mod:`spacy_index.http`) are where network and file input happen.
"""
