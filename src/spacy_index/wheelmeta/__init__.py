"""Core metadata (PEP 658 / PEP 714) of wheels: the bytes of ``<name>-<version>.dist-info/METADATA``.

Two ways to get them:

* :func:`metadata_from_wheel_file` (:mod:`.local`) reads a wheel on disk with :mod:`zipfile`.
* :func:`metadata_from_remote_wheel` (:mod:`.remote`) reads a wheel on an HTTP server *without
  downloading it*, with one to three ``Range`` requests driven by the sans-I/O plan of
  :mod:`.ranges` (:func:`metadata_plan`).

Both let :mod:`zipfile` do the ZIP parsing, and both refuse, before zipfile reads it, a central
directory over :data:`MAX_CENTRAL_DIRECTORY` and a METADATA member over
:data:`MAX_METADATA_SIZE` (:mod:`.member`). Their errors are :class:`~spacy_index.errors.MetadataError`
and its subclasses.
"""

from spacy_index.wheelmeta.local import metadata_from_wheel_file
from spacy_index.wheelmeta.member import (
    MAX_CENTRAL_DIRECTORY,
    MAX_METADATA_SIZE,
    select_metadata_name,
)
from spacy_index.wheelmeta.ranges import NeedMoreData, metadata_plan
from spacy_index.wheelmeta.remote import DEFAULT_TAIL, RemoteMetadata, metadata_from_remote_wheel

__all__ = [
    "DEFAULT_TAIL",
    "MAX_CENTRAL_DIRECTORY",
    "MAX_METADATA_SIZE",
    "NeedMoreData",
    "RemoteMetadata",
    "metadata_from_remote_wheel",
    "metadata_from_wheel_file",
    "metadata_plan",
    "select_metadata_name",
]
