"""The CLI's two consoles, the one-line error and the Ctrl-C line they print."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported where it is used: `install` of what is there needs none
    from rich.console import Console


#: what Ctrl-C leaves behind, per command
INTERRUPTED = {
    "build": "interrupted; the previous output is unchanged (with --mirror: the files "
             "downloaded stay in the cache and a partial one resumes next time)",
    "snapshot": "interrupted; no snapshot was written",
    "install": "interrupted; verified downloads stay in the cache and a partial one resumes "
               "next time; if the installer had started, run the same command again to finish",
    "download": "interrupted; verified downloads stay in the cache and a partial one resumes "
                "next time; if the installer had started, run the same command again to finish",
    "list": "interrupted",
    "serve": "stopped",
    "cache": "interrupted; the cache is consistent (a partial download resumes next time)",
}


class LazyConsole:
    """The CLI's stdout or stderr: a plain line is written as it is, without importing rich
    (~0.1 s); anything else (tables, JSON, styled text) goes to a rich Console made on first
    use with the same settings."""

    def __init__(self, **settings: object) -> None:
        self._settings = settings
        self._rich: Console | None = None

    @property
    def file(self):
        return sys.stderr if self._settings.get("stderr") else sys.stdout

    @property
    def is_terminal(self) -> bool:
        if self._rich is not None:
            return self._rich.is_terminal
        try:
            return self.file.isatty()
        except (AttributeError, ValueError):
            return False

    def print(self, *objects: object, **options: object) -> None:
        if (self._rich is None and len(objects) == 1 and isinstance(objects[0], str)
                and not options.get("markup") and set(options) <= {"markup", "highlight"}):
            self.file.write(objects[0] + "\n")
            self.file.flush()
            return
        self.rich.print(*objects, **options)  # type: ignore[arg-type]

    @property
    def rich(self) -> Console:
        if self._rich is None:
            from rich.console import Console

            self._rich = Console(**self._settings)  # type: ignore[arg-type]
        return self._rich

    def __getattr__(self, name: str):
        return getattr(self.rich, name)


def error_line(err: Console, message: str) -> None:
    """``error: <message>`` on stderr; the message is plain text, never rich markup."""
    from rich.text import Text

    line = Text("error: ", style="bold red")
    line.append(message)
    err.print(line, highlight=False)


def notifier(err: Console, quiet: bool):
    def notify(message: str) -> None:
        if not quiet:
            err.print(message, markup=False, highlight=False)

    return notify
