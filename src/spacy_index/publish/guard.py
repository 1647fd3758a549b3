"""The checks every target makes before it writes anything: each path stays inside the
output, and an index does not silently lose more than :data:`SHRINK_LIMIT` of its files (an
upstream that answers with half a listing must not take half the index down)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from spacy_index.errors import PublishError, ShrinkRefused

SHRINK_LIMIT = 0.10


def check_relative_path(path: str) -> PurePosixPath:
    """Reject anything that could land outside the output root."""
    p = PurePosixPath(path)
    if (
        not path
        or p.is_absolute()
        or "\\" in path
        or "\x00" in path
        or any(part in {"", ".", ".."} for part in path.split("/"))
    ):
        raise PublishError(f"refusing to write a path outside the output folder: {path!r}")
    return p


def marker_file_count(data: bytes | Path | None) -> int | None:
    """The ``files`` count of a ``.spacy-index.json`` marker; ``None`` when there is none or
    it is unreadable (then the shrink check is skipped rather than guessed)."""
    try:
        raw = data.read_bytes() if isinstance(data, Path) else data
        return int(json.loads(raw or b"")["files"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def check_shrink(before: int | None, after: int | None, *, allow_shrink: bool) -> None:
    """Raise :class:`ShrinkRefused` when going from ``before`` to ``after`` files drops more
    than :data:`SHRINK_LIMIT` of them, unless ``allow_shrink``."""
    if not allow_shrink and before and after is not None and after < before * (1 - SHRINK_LIMIT):
        raise ShrinkRefused(before, after)
