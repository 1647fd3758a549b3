"""HTTP plumbing: one client factory (system trust store, proxies), origin-bound auth, URL redaction, and a small
sqlite store of ETags and bodies for conditional requests."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sqlite3
import ssl
import threading
from base64 import b64encode
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlunsplit

import httpx

from spacy_index._version import __version__
from spacy_index.errors import UsageError
from spacy_index.urls import split_userinfo

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
    parts, userinfo, host = split_userinfo(text)
    if userinfo is None:
        return text
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


class _OriginAuth(httpx.Auth):
    """An ``Authorization`` header for requests to one origin only.

    Redirects to another origin (GitHub's signed download URLs, codeload, a CDN) never see
    it. The secret is kept out of ``repr`` so it cannot leak through logging of the object.
    """

    def __init__(self, authorization: str, allowed_origin: str) -> None:
        self._authorization = authorization
        self._origin = origin(allowed_origin)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self._origin:
            request.headers["Authorization"] = self._authorization
        else:
            request.headers.pop("Authorization", None)
        yield request


class OriginBearerAuth(_OriginAuth):
    """``Authorization: Bearer <token>`` for one origin (the GitHub API)."""

    def __init__(self, token: str, allowed_origin: str) -> None:
        super().__init__(f"Bearer {token}", allowed_origin)

    def __repr__(self) -> str:
        return f"OriginBearerAuth(origin={self._origin!r}, token=***)"


class OriginBasicAuth(_OriginAuth):
    """HTTP basic auth for one origin (a private index); the same header as httpx's."""

    def __init__(self, username: str, password: str, allowed_origin: str) -> None:
        token = b64encode(f"{username}:{password}".encode()).decode()
        super().__init__(f"Basic {token}", allowed_origin)

    def __repr__(self) -> str:
        return f"OriginBasicAuth(origin={self._origin!r}, credentials=***)"


def ssl_context(ca_bundle: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The TLS context every HTTPS client verifies with, the way pip does.

    ``ca_bundle`` (a PEM file or a folder of hashed certificates) wins; then the standard
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``; otherwise the operating system's trust store through
    :mod:`truststore` (so a company's inspecting proxy, whose CA sits in the system store,
    just works). One context per setting, made on first use, never at import.
    """
    env = os.environ
    key = (str(ca_bundle) if ca_bundle else None, env.get("SSL_CERT_FILE") or None,
           env.get("SSL_CERT_DIR") or None)
    return _ssl_context(*key)


@functools.lru_cache(maxsize=8)
def _ssl_context(ca_bundle: str | None, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    chosen = ca_bundle or cert_file or cert_dir
    if chosen:
        where = "ca_bundle" if ca_bundle else ("SSL_CERT_FILE" if cert_file else "SSL_CERT_DIR")
        path = Path(chosen)
        try:
            if path.is_dir():
                return ssl.create_default_context(capath=str(path))
            return ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"cannot load the CA certificates in {where} {chosen!r}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
    try:
        import truststore
    except ImportError:  # pragma: no cover - truststore is a dependency
        return ssl.create_default_context()
    return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _client_kwargs(
    *, auth: httpx.Auth | None, transport: Any, timeout: httpx.Timeout, follow_redirects: bool,
    ca_bundle: str | None, proxy: str | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "auth": auth,
        "timeout": timeout,
        "follow_redirects": follow_redirects,
        "headers": {"User-Agent": USER_AGENT},
        # HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY, as pip and uv; httpx reads no
        # .netrc (credentials stay explicit: see ``credentials = "netrc"``)
        "trust_env": True,
    }
    if transport is not None:
        kwargs["transport"] = transport
    else:
        kwargs["verify"] = ssl_context(ca_bundle)
        if proxy:
            kwargs["proxy"] = proxy
    return kwargs


def make_client(
    *,
    auth: httpx.Auth | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    follow_redirects: bool = True,
    ca_bundle: str | None = None,
    proxy: str | None = None,
) -> httpx.Client:
    """The one place blocking HTTP clients are made; tests inject ``transport``."""
    return httpx.Client(**_client_kwargs(
        auth=auth, transport=transport, timeout=timeout, follow_redirects=follow_redirects,
        ca_bundle=ca_bundle, proxy=proxy))


def make_async_client(
    *,
    auth: httpx.Auth | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    follow_redirects: bool = True,
    ca_bundle: str | None = None,
    proxy: str | None = None,
    limits: httpx.Limits | None = None,
    wrap_transport: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
) -> httpx.AsyncClient:
    """The one place async HTTP clients are made (serve's sources, the file cache, install,
    mirror); the same trust store, proxies and User-Agent as :func:`make_client`.

    ``wrap_transport``: every transport the client sends through (its own, and those httpx
    mounts for proxies) is passed through it, e.g. to meter upstream requests."""
    kwargs = _client_kwargs(auth=auth, transport=transport, timeout=timeout,
                            follow_redirects=follow_redirects, ca_bundle=ca_bundle, proxy=proxy)
    if limits is not None:
        kwargs["limits"] = limits
    client = httpx.AsyncClient(**kwargs)
    if wrap_transport is not None:
        wrap_transports(client, wrap_transport)
    return client


def wrap_transports(client: httpx.AsyncClient,
                    wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]) -> bool:
    """Pass the transports of an existing ``client`` through ``wrap`` (what
    ``make_async_client(wrap_transport=...)`` does); False, changing nothing, where this httpx
    keeps them elsewhere."""
    transport = getattr(client, "_transport", None)
    mounts = getattr(client, "_mounts", None)
    if not isinstance(transport, httpx.AsyncBaseTransport) or not isinstance(mounts, dict):
        return False
    client._transport = wrap(transport)
    client._mounts = {pattern: None if t is None else wrap(t) for pattern, t in mounts.items()}
    return True


def describe_error(exc: BaseException, url: str | httpx.URL | None = None) -> str:
    """One line for a transport failure, naming the host and the cause.

    A TLS failure says which certificate check failed and how to fix it
    (``certificate verify failed: self-signed certificate in certificate chain for
    pypi.org; set SSL_CERT_FILE or ca_bundle``), never a bare ``ConnectError``.
    """
    host = None
    if url is not None:
        with contextlib.suppress(Exception):
            host = httpx.URL(str(url)).host
    if host is None and isinstance(exc, httpx.RequestError):
        with contextlib.suppress(RuntimeError):
            host = exc.request.url.host
    where = f" for {host}" if host else ""
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "certificate verify failed"
            return (f"certificate verify failed: {reason}{where}; "
                    "set SSL_CERT_FILE or ca_bundle (--ca-bundle) to the CA that signs it")
        if isinstance(cause, ssl.SSLError):
            return f"TLS error{where}: {cause.reason or cause}"
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    text = str(exc).strip()
    if isinstance(exc, httpx.ProxyError):
        return f"proxy error{where}: {text or type(exc).__name__}; check HTTPS_PROXY / proxy"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connection timed out{where}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out{where} ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {host or 'the server'}: {text or 'connection failed'}"
    return f"{type(exc).__name__}{where}" + (f": {text}" if text else "")


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*/(\d+)\s*")


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """A 206's ``Content-Range: bytes first-last/total`` as (first, last, total), total None
    for ``*``; None for anything else, including a range that ends before it starts."""
    m = _CONTENT_RANGE.fullmatch(value or "")
    if m is None or int(m.group(2)) < int(m.group(1)):
        return None
    return int(m.group(1)), int(m.group(2)), (None if m.group(3) == "*" else int(m.group(3)))


def unsatisfied_range_length(value: str | None) -> int | None:
    """The complete length a 416 reports (``Content-Range: bytes */length``), else None."""
    m = _UNSATISFIED_RANGE.fullmatch(value or "")
    return None if m is None else int(m.group(1))


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

    def __init__(self, path: Path | None, notify: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = self._open(path)
        except (sqlite3.OperationalError, OSError) as e:
            # cannot open or create it (a read-only or missing cache folder): work in memory
            if notify is not None:
                notify(f"warning: cannot use the ETag cache {str(path)!r} "
                       f"({getattr(e, 'strerror', None) or e}); this run keeps ETags in memory")
            self._db = self._open(None)
        except sqlite3.DatabaseError as e:
            # it is a cache: a corrupt or foreign file is discarded and rebuilt, once, loudly
            assert path is not None
            for extra in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{path}{extra}").unlink()
            if notify is not None:
                notify(f"warning: the ETag cache {str(path)!r} was unreadable ({e}); "
                       "discarded it, the next run is a full one")
            self._db = self._open(path)

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False,
                             isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, etag TEXT NOT NULL, body BLOB NOT NULL, link TEXT NOT NULL)"
            )
            db.execute("SELECT key, etag, body, link FROM responses LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

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
