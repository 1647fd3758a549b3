"""Optional client authentication for ``spacy-index serve`` (the ``[auth]`` table).

Off unless ``[auth]`` names an htpasswd file, a tokens file or a tokens variable
(:attr:`AuthConfig.enabled`). Then every request needs credentials, except ``/health`` and
``/ready`` (the Kubernetes probes); ``/metrics`` needs them too.

Accepted:

* ``Authorization: Basic`` with a user of the htpasswd file and its password (bcrypt hashes
  only: ``htpasswd -B``; ``$2y$``, ``$2b$`` and ``$2a$``), checked with the ``bcrypt``
  library in a worker thread;
* a bearer token (``tokens_file``: one per line; ``tokens_env``): as ``Authorization:
  Bearer <token>``, or as the *password* of Basic auth with any user name (``__token__``, as
  PyPI does), or as the user name with an empty password. pip, uv, poetry and pdm only send
  Basic auth, so tokens work with all of them.

Missing or wrong credentials get ``401`` with ``WWW-Authenticate: Basic realm="…"``, which is
what makes pip's netrc/keyring lookup, uv's ``UV_INDEX_<NAME>_USERNAME/PASSWORD``, poetry's
``http-basic`` and pdm's source credentials kick in. Wrong credentials (not missing ones)
count against the client's address: after ``max_failures`` within ``window`` seconds, new
credentials from that address get ``429`` with ``Retry-After`` for ``block`` seconds.
Credentials already verified keep working meanwhile (a typo behind a shared NAT address does
not lock out its neighbours).

bcrypt is deliberately slow (~0.1 s at cost 10), and clients send their credentials with every
request: a verified ``Authorization`` value is remembered for ``remember`` seconds under an
HMAC with a per-process random key (never the value itself), and concurrent requests with the
same new value share one check. Tokens are compared as sha256 digests with
``hmac.compare_digest`` against every token (no early exit); an unknown user name costs one
bcrypt check against a dummy hash, like a wrong password. The files are re-read when they
change (checked at most every ``reload_every`` seconds), and that forgets every remembered
value. No credential is ever logged or echoed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from spacy_index.errors import UsageError
from spacy_index.server.config_types import AuthConfig
from spacy_index.server.memory import Bounds
from spacy_index.singleflight import SingleFlight

log = logging.getLogger("spacy_index.server")

#: paths that never need credentials (probes)
EXEMPT = frozenset({"/health", "/ready"})
_BCRYPT = re.compile(rb"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
#: verdicts of :meth:`Authenticator.authenticate`
OK, MISSING, BAD, BLOCKED = "ok", "missing", "bad", "blocked"


def _quoted(realm: str) -> str:
    """``realm`` as the inside of a quoted-string (no control characters, quotes escaped)."""
    clean = re.sub(r"[\x00-\x1f\x7f]", "", realm)
    return clean.replace("\\", "\\\\").replace('"', '\\"')


def _read_bytes(where: str, path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"{where}: cannot read it ({e.strerror or e})") from None


def _read_htpasswd(path: Path) -> dict[bytes, bytes]:
    """user -> bcrypt hash; a line that is not ``user:bcrypt`` stops ``serve`` with its number."""
    where = f"[auth] htpasswd {str(path)!r}"
    users: dict[bytes, bytes] = {}
    for number, raw in enumerate(_read_bytes(where, path).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        if not sep or not user:
            raise UsageError(f"{where}, line {number}: not a 'user:hash' line")
        if not _BCRYPT.match(hashed):
            shown = user.decode("utf-8", "replace")
            raise UsageError(f"{where}, line {number}: the password of user {shown!r} "
                             "is not a bcrypt hash; set it again with `htpasswd -B`")
        users[user] = hashed
    if not users:
        raise UsageError(f"{where} holds no user")
    return users


def _read_tokens(path: Path) -> list[str]:
    where = f"[auth] tokens_file {str(path)!r}"
    found = [line.strip() for line in _read_bytes(where, path).splitlines()]
    found = [t for t in found if t and not t.startswith(b"#")]
    if not found:
        raise UsageError(f"{where} holds no token")
    return [t.decode("utf-8", "surrogateescape") for t in found]


class Authenticator:
    """Checks ``Authorization`` headers against ``config`` and rate-limits failures per
    client address. Built once per server (reading the files, so a bad file stops ``serve``
    at start with one line); used from the event loop only."""

    def __init__(self, config: AuthConfig, *, metrics: Any = None,
                 clock: Callable[[], float] = time.monotonic, max_failures: int = 10,
                 window: float = 60.0, block: float = 60.0, remember: float = 300.0,
                 reload_every: float = 5.0, max_clients: int = Bounds.auth_clients) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.block = block
        self.remember = remember
        self.reload_every = reload_every
        self.max_clients = max_clients
        self.challenge = f'Basic realm="{_quoted(config.realm)}", charset="UTF-8"'
        self._key = secrets.token_bytes(32)
        self._users, self._tokens = self._read()
        self._stamps = self._stat()
        self._checked = clock()
        self._dummy = self._dummy_hash()
        self._verified: dict[bytes, float] = {}
        #: one check per distinct header at a time, shared by the requests that sent it
        self._pending: SingleFlight[bytes, bool] = SingleFlight()
        self._failures: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}
        self._bcrypt_slots: asyncio.Semaphore | None = None

    # -- the files ------------------------------------------------------------ #
    def _read(self) -> tuple[dict[bytes, bytes], tuple[bytes, ...]]:
        cfg = self.config
        users = _read_htpasswd(cfg.htpasswd) if cfg.htpasswd is not None else {}
        tokens = list(cfg.tokens)
        if cfg.tokens_file is not None:
            tokens.extend(_read_tokens(cfg.tokens_file))
        short = sum(1 for t in tokens if len(t) < 16)
        if short:
            log.warning("[auth]: %d bearer token(s) shorter than 16 characters; use longer "
                        "random ones (e.g. `openssl rand -hex 32`)", short)
        digests = tuple(hashlib.sha256(t.encode("utf-8", "surrogateescape")).digest()
                        for t in tokens)
        return users, digests

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps = []
        for path in (self.config.htpasswd, self.config.tokens_file):
            if path is None:
                continue
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _dummy_hash(self) -> bytes:
        """A hash of the users' cost, for unknown user names (the same work as a wrong password)."""
        if not self._users:
            return b""
        cost = int(_BCRYPT.match(next(iter(self._users.values()))).group(1))  # type: ignore[union-attr]
        return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=max(4, min(cost, 31))))

    def _maybe_reload(self, now: float) -> None:
        if now - self._checked < self.reload_every:
            return
        self._checked = now
        stamps = self._stat()
        if stamps == self._stamps:
            return
        self._stamps = stamps
        try:
            users, tokens = self._read()
        except UsageError as e:
            log.warning("%s; keeping the credentials read before", e)
            return
        self._users, self._tokens = users, tokens
        self._dummy = self._dummy_hash()
        self._verified.clear()
        log.info("[auth]: credentials read again (%d users, %d tokens)", len(users), len(tokens))

    # -- checking ------------------------------------------------------------- #
    def _token_ok(self, candidate: bytes) -> bool:
        digest = hashlib.sha256(candidate).digest()
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(digest, token)
        return found

    async def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        if self._bcrypt_slots is None:
            self._bcrypt_slots = asyncio.Semaphore(max(2, os.cpu_count() or 1))
        async with self._bcrypt_slots:
            # bcrypt uses the first 72 bytes (as htpasswd does); bcrypt >= 5 refuses more
            return await asyncio.to_thread(bcrypt.checkpw, password[:72], hashed)

    async def _check(self, header: bytes) -> bool:
        try:
            scheme, _, value = header.strip().partition(b" ")
            scheme = scheme.lower()
            value = value.strip()
            if scheme == b"bearer":
                return bool(value) and self._token_ok(value)
            if scheme != b"basic":
                return False
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            user, sep, password = decoded.partition(b":")
            if not sep:
                return False
            if self._tokens and (self._token_ok(password) or (not password and self._token_ok(user))):
                return True
            hashed = self._users.get(user)
            if hashed is not None:
                return await self._bcrypt(password, hashed)
            if self._users:
                await self._bcrypt(password, self._dummy)  # as long as a wrong password
            return False
        except Exception:  # never let a malformed header become a 500
            log.debug("auth check failed", exc_info=True)
            return False

    async def authenticate(self, header: bytes | None, client: str) -> tuple[str, float]:
        """``(verdict, retry_after)``: :data:`OK`, :data:`MISSING` (no credentials),
        :data:`BAD` (wrong ones, counted) or :data:`BLOCKED` (429 for ``retry_after`` s)."""
        now = self._clock()
        self._maybe_reload(now)
        key = b""
        if header is not None:
            key = hmac.digest(self._key, header, "sha256")
            until = self._verified.get(key)
            if until is not None:
                if until > now:
                    return OK, 0.0
                del self._verified[key]
        wait = self.blocked_for(client, now)
        if wait > 0:
            self._count("blocked")
            return BLOCKED, wait
        if header is None:
            return MISSING, 0.0
        ok = await self._pending.run(key, lambda: self._check(header))
        now = self._clock()
        if ok:
            if len(self._verified) >= self.max_clients:
                self._verified.clear()
            self._verified[key] = now + self.remember
            return OK, 0.0
        self._count("bad")
        if self._fail(client, now):
            return BLOCKED, self.block
        return BAD, 0.0

    # -- rate limiting -------------------------------------------------------- #
    def blocked_for(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may try new credentials again (0: it may)."""
        until = self._blocked.get(client)
        if until is None:
            return 0.0
        now = self._clock() if now is None else now
        if until <= now:
            del self._blocked[client]
            return 0.0
        return until - now

    def _fail(self, client: str, now: float) -> bool:
        """Record a failure; True when it blocks ``client``."""
        failures = self._failures.get(client)
        if failures is None:
            if len(self._failures) >= self.max_clients:
                self._prune(now)
            failures = self._failures[client] = deque()
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.max_failures:
            return False
        del self._failures[client]
        if len(self._blocked) >= self.max_clients:
            for gone in [c for c, until in self._blocked.items() if until <= now]:
                del self._blocked[gone]
            if len(self._blocked) >= self.max_clients:
                self._blocked.pop(next(iter(self._blocked)))
        self._blocked[client] = now + self.block
        log.warning("auth: %d failed logins from %s within %g s; new credentials from it get "
                    "429 for %g s", self.max_failures, client or "an unknown address",
                    self.window, self.block)
        return True

    def _prune(self, now: float) -> None:
        for client in [c for c, q in self._failures.items() if not q or q[-1] <= now - self.window]:
            del self._failures[client]
        while len(self._failures) >= self.max_clients:
            self._failures.pop(next(iter(self._failures)))

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.auth_failures.labels(reason).inc()

    # -- answers -------------------------------------------------------------- #
    def refusal(self, verdict: str, wait: float) -> PlainTextResponse:
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        if verdict == BLOCKED:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return PlainTextResponse("too many failed logins from this address; retry later\n",
                                     status_code=429, headers=headers)
        headers["WWW-Authenticate"] = self.challenge
        text = "authentication required\n" if verdict == MISSING else "wrong credentials\n"
        return PlainTextResponse(text, status_code=401, headers=headers)


class AuthMiddleware:
    """ASGI middleware: only authenticated requests reach ``app`` (``exempt`` paths always)."""

    def __init__(self, app: ASGIApp, auth: Authenticator, *, exempt: frozenset[str] = EXEMPT) -> None:
        self.app = app
        self.auth = auth
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        header = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                header = value
                break
        client = scope.get("client")
        verdict, wait = await self.auth.authenticate(header, client[0] if client else "")
        if verdict == OK:
            await self.app(scope, receive, _private(send))
            return
        await self.auth.refusal(verdict, wait)(scope, receive, send)


def _private(send: Send) -> Send:
    """An authenticated answer may not be kept by a shared cache for others: ``public`` in
    Cache-Control becomes ``private`` (``no-store`` and the rest stay)."""

    async def wrapped(message):  # type: ignore[no-untyped-def]
        if message["type"] == "http.response.start":
            message["headers"] = [
                (k, v.replace(b"public", b"private")) if k.lower() == b"cache-control" else (k, v)
                for k, v in message.get("headers", [])]
        await send(message)

    return wrapped


__all__ = ["BAD", "BLOCKED", "EXEMPT", "MISSING", "OK", "AuthMiddleware", "Authenticator"]
