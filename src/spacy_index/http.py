"""HTTP plumbing: one client factory, origin-bound auth, URL redaction, and a small
sqlite store of ETags and bodies for conditional requests."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from spacy_index import __version__

USER_AGENT = f"spacy-index/{__version__} (+https://github.com/spacy-index/spacy-index)"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    u = httpx.URL(str(url))
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return (u.scheme, u.host, port)


def redact_url(url: str | httpx.URL) -> str:
    """The URL with any userinfo (``user:password@``) replaced by ``***``."""
    text = str(url)
    if "@" not in text:
        return text
    parts = urlsplit(text)
    if "@" not in parts.netloc:
        return text
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


class OriginBearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <token>`` only to requests for one origin.

    Redirects to another origin (GitHub's signed download URLs, codeload) never see it. The
    token is kept out of ``repr`` so it cannot leak through logging of the object.
    """

    def __init__(self, token: str, allowed_origin: str) -> None:
        self._token = token
        self._origin = origin(allowed_origin)

    def __repr__(self) -> str:
        return f"OriginBearerAuth(origin={self._origin!r}, token=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._token}"
        else:
            request.headers.pop("Authorization", None)
        yield request


def make_client(
    *,
    auth: httpx.Auth | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    follow_redirects: bool = True,
) -> httpx.Client:
    """The one place HTTP clients are made; tests inject ``transport``."""
    return httpx.Client(
        auth=auth,
        transport=transport,
        timeout=timeout,
        follow_redirects=follow_redirects,
        headers={"User-Agent": USER_AGENT},
        trust_env=True,
    )


@dataclass(frozen=True)
class StoredResponse:
    etag: str
    body: bytes
    #: The response's ``Link`` header, so pagination works from a 304 too.
    link: str = ""


class ConditionalStore:
    """ETags and bodies of GET responses, so a re-run sends ``If-None-Match``.

    Keyed by URL (never carrying credentials) plus whether the request was authenticated,
    since GitHub varies responses on ``Authorization``. Thread-safe; writes are single
    transactions, so a killed run never leaves a half-written entry.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(path) if path else ":memory:", check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, etag TEXT NOT NULL, body BLOB NOT NULL, link TEXT NOT NULL)"
            )

    @staticmethod
    def key(url: str, authenticated: bool) -> str:
        return f"{'auth' if authenticated else 'anon'} {redact_url(url)}"

    def get(self, url: str, authenticated: bool) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT etag, body, link FROM responses WHERE key = ?", (self.key(url, authenticated),)
            ).fetchone()
        return StoredResponse(row[0], bytes(row[1]), row[2]) if row else None

    def put(self, url: str, authenticated: bool, stored: StoredResponse) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, etag, body, link) VALUES (?, ?, ?, ?)",
                (self.key(url, authenticated), stored.etag, stored.body, stored.link),
            )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error), self._lock:
            self._db.close()


class RedactingFilter(logging.Filter):
    """Redacts URL userinfo in log records of libraries that log URLs (httpx does, at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                redact_url(str(a)) if isinstance(a, (str, httpx.URL)) and "@" in str(a) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str) and "@" in record.msg:
            record.msg = " ".join(redact_url(w) if "://" in w else w for w in record.msg.split(" "))
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactingFilter` to the loggers of the HTTP libraries (called by the CLI)."""
    for name in ("httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
