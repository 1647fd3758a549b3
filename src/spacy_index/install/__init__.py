"""``spacy-index install`` (and ``download``, its spaCy-shaped alias): a ``spacy download``
that picks the pipeline compatible with the spaCy it installs for, keeps each wheel once in a
verified user cache, and installs it with its hash pinned: with ``uv pip install`` (files
linked from uv's cache) where uv is available, else with pip.

Fast by construction, so that an already-installed pipeline answers in well under 0.15 s:

- choosing is pure (:mod:`.target`; the spaCy rule is :func:`spacy_index.model_spacy.spacy_compatible`);
- the environment is probed by listing the ``*.dist-info`` folders on the target's
  ``sys.path`` (:mod:`.environment`: in this process when the target is this interpreter,
  else one short subprocess), no metadata parsed;
- the catalog is read from its cached JSON and only the requested projects become objects
  (:mod:`.catalog_cache`);
- a wheel verified once is trusted again while its inode, size and times are unchanged
  (:mod:`.fetch`), and installers get it at a stable path, which keeps uv's cache warm
  (:mod:`.installer`);
- nothing here imports an HTTP library, asyncio or rich until a download or an index needs it.
"""

from spacy_index.install.environment import Environment
from spacy_index.install.fetch import download
from spacy_index.install.target import (
           KNOWN_SPACY_MINORS,
           SpacyTarget,
           choose,
           resolve_spacy,
           split_model,
)

__all__ = ["KNOWN_SPACY_MINORS", "Environment", "SpacyTarget", "choose", "download",
           "resolve_spacy", "split_model"]
