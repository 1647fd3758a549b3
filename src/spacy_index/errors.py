"""The exception hierarchy.

Every exception a user can cause derives from :class:`SpacyIndexError`. Its ``str()`` is one
line that says what happened and what to do; the CLI prints exactly that line and exits
non-zero, with no traceback. Exceptions carry their data as attributes so callers and tests
never parse messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone


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
