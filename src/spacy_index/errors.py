"""The exception hierarchy.

Every exception a user can cause derives from :class:`SpacyIndexError`. Its ``str()`` is one
line that says what happened and what to do; the CLI prints exactly that line and exits
non-zero, with no traceback. Exceptions carry their data as attributes so callers and tests
never parse messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path


class SpacyIndexError(Exception):
    """Base class: an expected failure with a one-line, user-facing message."""

    exit_code: int = 1


class InvalidFilename(SpacyIndexError):
    """A file name is not a valid wheel or sdist name for its project."""

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = filename
        self.reason = reason
        super().__init__(f"not a valid wheel or sdist filename ({reason}): {filename!r}")


class UpstreamError(SpacyIndexError):
    """An upstream (GitHub, an index) failed in a way we could not work around."""


class UpstreamUnreachable(UpstreamError):
    """The network path to an upstream does not work at all."""

    def __init__(self, what: str, detail: str, hint: str = "") -> None:
        self.what = what
        self.detail = detail
        msg = f"cannot reach {what}: {detail}"
        super().__init__(msg + (f"; {hint}" if hint else ""))


class RateLimited(UpstreamError):
    """GitHub's rate limit is exhausted and the wait would exceed ``--max-wait``."""

    def __init__(self, what: str, reset: datetime | None, wait: float | None, max_wait: float) -> None:
        self.what = what
        self.reset = reset
        self.wait = wait
        self.max_wait = max_wait
        when = (
            f"it resets at {reset.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
            if reset
            else "GitHub gave no reset time"
        )
        super().__init__(
            f"{what}: GitHub rate limit reached; {when}, beyond --max-wait={max_wait:g}s. "
            "Set GITHUB_TOKEN, raise --max-wait, or use --offline"
        )


class IncompleteListing(UpstreamError):
    """The upstream listing could not be fetched completely."""


class DigestMismatch(SpacyIndexError):
    """Bytes did not hash to what the index promised."""

    def __init__(self, filename: str, expected: str, actual: str) -> None:
        self.filename = filename
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"sha256 mismatch for {filename!r}: expected {expected}, got {actual}"
        )


class PublishError(SpacyIndexError):
    """The output could not be written; the previous output is untouched."""


class OutputLocked(PublishError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"another build is writing {path!r}; wait for it to finish and retry")


class ShrinkRefused(PublishError):
    def __init__(self, before: int, after: int) -> None:
        self.before = before
        self.after = after
        super().__init__(
            f"refusing to shrink the index from {before} to {after} files (more than 10%); "
            "check the upstream, or pass --allow-shrink if this is intended"
        )


class SnapshotError(SpacyIndexError):
    """A catalog snapshot is missing, unreadable or for another source."""


class UsageError(SpacyIndexError):
    exit_code = 2


# ---- cache
class InvalidDigest(SpacyIndexError, ValueError):
    """A cache key is not a sha256 hex digest (checked before any path is built)."""

    def __init__(self, value: object) -> None:
        self.value = value
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        super().__init__(f"not a sha256 digest (64 lower-case hex digits): {shown}")


class CacheError(SpacyIndexError):
    """The download cache itself failed."""


class CacheWriteError(CacheError):
    """The cache could not be written (disk full, permissions); existing entries are intact."""

    def __init__(self, root: Path, detail: str) -> None:
        self.root = root
        self.detail = detail
        super().__init__(
            f"cannot write to the download cache {str(root)!r}: {detail}; "
            "free some space or use another cache directory"
        )


class UpstreamFileError(UpstreamError):
    """A file could not be downloaded (an HTTP error, or the connection kept failing)."""

    def __init__(self, filename: str, status: int | None, url: str, detail: str = "") -> None:
        self.filename = filename
        self.status = status
        self.url = url  # already redacted
        self.detail = detail
        if status is not None:
            msg = f"cannot download {filename!r}: HTTP {status} from {url}"
        else:
            msg = f"cannot download {filename!r} from {url}: {detail}"
        super().__init__(msg)


class SizeMismatch(UpstreamError):
    """Upstream's size for a file is not the size the index promised."""

    def __init__(self, filename: str, expected: int, actual: int, *, at_least: bool = False) -> None:
        self.filename = filename
        self.expected = expected
        self.actual = actual
        self.at_least = at_least
        got = f"at least {actual}" if at_least else str(actual)
        super().__init__(f"size mismatch for {filename!r}: expected {expected} bytes, upstream has {got}")


class UpstreamChanged(UpstreamError):
    """The upstream file changed while it was being downloaded; a retry starts afresh."""

    def __init__(self, filename: str, detail: str) -> None:
        self.filename = filename
        self.detail = detail
        super().__init__(f"{filename!r} changed upstream during the download ({detail}); retry")
# ---- server sources
class TooLarge(UpstreamError):
    """An upstream body over its cap (compressed or decoded): refused, never stored."""


class OverBudget(ValueError):
    """Parsing a page took longer than its time budget."""


# ---- build/publish
class MetadataError(UpstreamError):
    """The core metadata of a wheel could not be read.

    ``source`` is where the wheel was read from (a URL with any userinfo redacted, or a path);
    ``reason`` says what went wrong; ``status`` is the HTTP status when one caused it.
    """

    def __init__(
        self,
        reason: str,
        *,
        filename: str | None = None,
        source: str | None = None,
        status: int | None = None,
    ) -> None:
        self.reason = reason
        self.filename = filename
        self.source = source
        self.status = status
        super().__init__(self._message())

    def _message(self) -> str:
        what = f"the METADATA of {self.filename!r}" if self.filename else "a wheel's METADATA"
        where = f" from {self.source}" if self.source else ""
        return f"cannot read {what}{where}: {self.reason}"

    def with_context(self, *, filename: str | None = None, source: str | None = None) -> MetadataError:
        """A copy that names ``filename``/``source`` where this one does not yet."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.filename = self.filename or filename
        new.source = self.source or source
        new.args = (new._message(),)
        return new


class CorruptWheel(MetadataError):
    """The file is not a readable ZIP archive, or the METADATA member fails its CRC check."""


class BadRangeResponse(MetadataError):
    """The server answered a range request with the wrong range, size or encoding."""


class RangeNotSupported(MetadataError):
    """The server ignores ``Range`` (answers 200 with the whole file); download it instead.

    The body was not read: the caller can fall back to a full download.
    """

    def __init__(self, url: str, *, filename: str | None = None, status: int = 200) -> None:
        self.url = url  #: with any userinfo already redacted by the reader
        super().__init__(
            f"the server does not support HTTP range requests (HTTP {status} to a Range request); "
            "download the whole file instead",
            filename=filename,
            source=self.url,
            status=status,
        )


# ---- server config/metrics
class Refused(Exception):
    """A request head over a limit (server/limits.py): answered with ``status`` and closed.
    Not a SpacyIndexError: it never leaves the connection it was raised on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# ---- cli/install
class NoSuchModel(UsageError):
    def __init__(self, name: str, suggestions: Sequence[str]) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"no spaCy pipeline named {name!r}{hint} (see `spacy-index list`)")


class NoCompatibleVersion(SpacyIndexError):
    def __init__(self, name: str, spacy: object, have: Sequence[str]) -> None:
        self.name = name
        self.spacy = spacy
        self.have = list(have)
        which = ", ".join(have) if have else "none"
        super().__init__(
            f"no version of {name} works with spaCy {spacy}; spaCy versions that have one: "
            f"{which}. Upgrade or downgrade spaCy, pass --spacy X.Y, or --force to install "
            "it anyway"
        )


class SpacyMissing(SpacyIndexError):
    def __init__(self, python: str) -> None:
        self.python = python
        super().__init__(
            f"spaCy is not installed for {python}; install it first (pip install spacy) "
            "or pass --spacy X.Y to choose for another version"
        )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying one line that says what was kept."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
