"""What the file cache holds, and keeping it under a bound: least recently used goes first.

The content-addressed cache (:mod:`spacy_index.cache.store`) keeps files at ``files/<sha[:2]>/<sha>``
and ``serve`` keeps PEP 658 metadata at ``metadata/<sha>.metadata``. This index (one sqlite
file, ``index.sqlite`` beside them) records for each entry its file name, project, size, hit
count and last use, so that

- ``serve --cache-max-size`` / ``[cache] max_size`` can evict the least recently used files
  and metadata, never a pinned project's (``[cache] pin``) nor one this process is reading;
- ``spacy-index cache stats | prune | verify | rm | warm`` can show and manage it.

Several ``serve`` processes may share one folder: sqlite serialises writers (WAL, a busy
timeout), eviction runs under an exclusive ``flock`` on ``.evict.lock``, and removing a file
is one ``unlink`` (a reader that has it open keeps reading it: only its space is freed late,
which is why the bound holds within one file's size). Entries found on disk but not in the
index (a cache written before the index existed) are adopted by :meth:`CacheIndex.scan` with
their modification time as last use.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spacy_index.hashing import file_sha256
from spacy_index.model import is_sha256, name_matches

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FILES, METADATA = "file", "metadata"


@dataclass(frozen=True)
class Entry:
    kind: str
    sha256: str
    filename: str
    project: str
    size: int
    hits: int
    last_used: float


def _path(root: Path, kind: str, sha: str) -> Path:
    if kind == FILES:
        return root / "files" / sha[:2] / sha
    return root / "metadata" / f"{sha}.metadata"


class CacheIndex:
    """The sqlite index of one cache folder. Thread-safe; every call is one transaction."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.root / "index.sqlite"), timeout=30,
                                   check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (kind TEXT NOT NULL, sha TEXT NOT NULL,"
                " filename TEXT NOT NULL, project TEXT NOT NULL, size INTEGER NOT NULL,"
                " hits INTEGER NOT NULL DEFAULT 0, last_used REAL NOT NULL,"
                " PRIMARY KEY (kind, sha))")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error), self._lock:
            self._db.close()

    # -- recording ---------------------------------------------------------- #
    def stored(self, kind: str, sha: str, filename: str, project: str, size: int) -> None:
        """A new entry (or one written again)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO entries (kind, sha, filename, project, size, hits, last_used)"
                " VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT (kind, sha) DO UPDATE SET"
                " size = excluded.size, last_used = excluded.last_used,"
                " filename = CASE WHEN excluded.filename != '' THEN excluded.filename ELSE filename END,"
                " project = CASE WHEN excluded.project != '' THEN excluded.project ELSE project END",
                (kind, sha, filename, project, size, time.time()))

    def used(self, kind: str, sha: str, filename: str = "", project: str = "") -> None:
        """One hit: counted, and the entry becomes the most recently used."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE entries SET hits = hits + 1, last_used = ? WHERE kind = ? AND sha = ?",
                (time.time(), kind, sha))
        if cur.rowcount == 0:  # on disk before the index knew it
            path = _path(self.root, kind, sha)
            with contextlib.suppress(OSError):
                self.stored(kind, sha, filename, project, path.stat().st_size)
                self.used(kind, sha)

    # -- reading ------------------------------------------------------------ #
    def entries(self) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, sha, filename, project, size, hits, last_used FROM entries"
                " ORDER BY last_used").fetchall()
        return [Entry(*row) for row in rows]

    def total(self) -> int:
        with self._lock:
            (size,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
        return int(size)

    def scan(self) -> int:
        """Adopt entries on disk the index does not know, and forget ones that are gone;
        returns how many were adopted."""
        known = {(e.kind, e.sha256) for e in self.entries()}
        seen: set[tuple[str, str]] = set()
        adopted = 0
        for kind, sha, path in self._on_disk():
            seen.add((kind, sha))
            if (kind, sha) not in known:
                with contextlib.suppress(OSError):
                    st = path.stat()
                    with self._lock:
                        self._db.execute(
                            "INSERT OR IGNORE INTO entries VALUES (?, ?, '', '', ?, 0, ?)",
                            (kind, sha, st.st_size, st.st_mtime))
                    adopted += 1
        for kind, sha in known - seen:
            self._forget(kind, sha)
        return adopted

    def _on_disk(self) -> Iterator[tuple[str, str, Path]]:
        with contextlib.suppress(OSError):
            for sub in (self.root / "files").iterdir():
                with contextlib.suppress(OSError):
                    for f in sub.iterdir():
                        if is_sha256(f.name):
                            yield FILES, f.name, f
        with contextlib.suppress(OSError):
            for f in (self.root / "metadata").iterdir():
                sha = f.name.removesuffix(".metadata")
                if f.name.endswith(".metadata") and is_sha256(sha):
                    yield METADATA, sha, f

    # -- removing ----------------------------------------------------------- #
    def _forget(self, kind: str, sha: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM entries WHERE kind = ? AND sha = ?", (kind, sha))

    def remove(self, entry: Entry) -> bool:
        """Unlink the entry's file and forget it; False if it was already gone."""
        path = _path(self.root, entry.kind, entry.sha256)
        try:
            path.unlink()
            gone = True
        except FileNotFoundError:
            gone = False
        self._forget(entry.kind, entry.sha256)
        return gone

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        fd = os.open(self.root / ".evict.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def evict(self, max_size: int, *, pin: Iterable[str] = (),
              in_use: Callable[[str], bool] = lambda sha: False) -> list[Entry]:
        """Remove least recently used entries until the total is at most ``max_size``.

        Pinned projects' entries (and their metadata) and entries ``in_use`` stay, even if
        the bound cannot be met then. Returns what was removed.
        """
        pins = tuple(pin)
        removed: list[Entry] = []
        with self._exclusive():
            entries = self.entries()
            total = sum(e.size for e in entries)
            for e in entries:  # oldest first
                if total <= max_size:
                    break
                if (pins and e.project and name_matches(e.project, pins)) or in_use(e.sha256):
                    continue
                if self.remove(e):
                    removed.append(e)
                total -= e.size
        return removed

    def verify(self, notify: Callable[[str], None] = lambda m: None) -> tuple[int, list[Entry]]:
        """Re-hash every cached file; remove those whose content is not their name.
        Returns (files checked, entries removed). Metadata is named by its wheel's hash, so it
        cannot be checked this way and is left alone."""
        self.scan()
        checked, bad = 0, []
        for e in self.entries():
            if e.kind != FILES:
                continue
            path = _path(self.root, e.kind, e.sha256)
            try:
                actual = file_sha256(path)
            except FileNotFoundError:
                self._forget(e.kind, e.sha256)
                continue
            checked += 1
            if actual != e.sha256:
                notify(f"removed {e.filename or e.sha256}: its content hashes to {actual}")
                self.remove(e)
                bad.append(e)
        return checked, bad


__all__ = ["FILES", "METADATA", "CacheIndex", "Entry"]
