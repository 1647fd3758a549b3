"""What a publish is given and what it reports, whatever the target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spacy_index.s3 import S3Location

#: a file's content: bytes (pages), or a local file to link/copy in (mirrored wheels)
Content = bytes | Path


@dataclass(frozen=True)
class PublishReport:
    #: the folder, or the bucket and prefix
    path: Path | S3Location
    changed: bool
    files_written: int
    bytes_written: int
    files_changed: int
    #: the folder did not exist before this publish
    created: bool = False
