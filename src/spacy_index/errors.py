"""The exception hierarchy.

Every exception a user can cause derives from :class:`SpacyIndexError`. Its ``str()`` is one
line that says what happened and what to do; the CLI prints exactly that line and exits
non-zero, with no traceback. Exceptions carry their data as attributes so callers and tests
never parse messages.
"""

from __future__ import annotations

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


# ---- server config/metrics
class Refused(Exception):
    """A request head over a limit (server/limits.py): answered with ``status`` and closed.
    Not a SpacyIndexError: it never leaves the connection it was raised on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
