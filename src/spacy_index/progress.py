"""The rich progress display of downloads (install, ``build --mirror``): bytes, speed, ETA on
stderr. Imported only when a terminal shows it (rich is not loaded at start-up)."""

from __future__ import annotations

from typing import Any


def transfer_progress(lead: str = "{task.description}", tail: str | None = None) -> Any:
    """A ``rich.progress.Progress``: ``lead`` text, a bar, bytes, speed, time left, then
    ``tail`` text if given (column templates use rich's ``{task.…}`` fields)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [TextColumn(lead), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn()]
    if tail is not None:
        columns.append(TextColumn(tail))
    return Progress(*columns, console=Console(stderr=True), transient=False)
