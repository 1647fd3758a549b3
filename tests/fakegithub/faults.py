"""What the fake records of each request, and the misbehaviours a test queues on it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl

Origin = Literal["api", "web", "objects"]
#: ``match(origin, method, path, query) -> bool``
Matcher = Callable[[str, str, str, str], bool]


@dataclass
class RecordedRequest:
    """One request as the fake saw it (appended before the response is sent)."""

    origin: str  # "api" | "web" | "objects"
    method: str
    path: str  # raw path, without the query string
    query: str  # raw query string ("" if none)
    headers: dict[str, str]  # lower-cased header names
    status: int = 0
    bytes_sent: int = 0  # body bytes written (headers excluded)

    @property
    def params(self) -> dict[str, str]:
        """The query string parsed into a dict (last value wins)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))


def _match(
    origin: str | None = None,
    method: str | None = None,
    path_contains: str | None = None,
    query_contains: str | None = None,
    page: int | None = None,
    paginated_only: bool = False,
) -> Matcher:
    def match(o: str, m: str, p: str, q: str) -> bool:
        if origin is not None and o != origin:
            return False
        if method is not None and m != method:
            return False
        if path_contains is not None and path_contains not in p:
            return False
        if query_contains is not None and query_contains not in q:
            return False
        if paginated_only and ("/git/" in p or not re.search(r"/(releases|tags)/?$", p)):
            return False
        return page is None or _int_param(q, "page", 1) == page

    return match


@dataclass
class Fault:
    """A queued misbehaviour; applies to the next ``times`` matching requests.

    Build one with the class-method constructors; ``match`` receives
    ``(origin, method, path, query)``. ``times`` counts down as the fault fires
    (0 = used up and removed). API faults match the ``api`` origin (``status``
    takes ``origin="web"``/``"objects"``/None); transfer faults match ``objects``.
    Rejections (rate/secondary limits, 5xx) are not charged to the rate limit.
    """

    kind: str
    times: int = 1
    match: Matcher = field(default_factory=_match)
    code: int = 0
    seconds: float = 0.0
    after_bytes: int = 0

    # API-level faults ----------------------------------------------------- #
    @classmethod
    def rate_limited(cls, reset_in: float = 2, *, status: int = 403, times: int = 1,
                     path_contains: str | None = None, query_contains: str | None = None) -> Fault:
        """Primary rate limit: ``status`` with ``X-RateLimit-Remaining: 0`` and a reset
        ``reset_in`` seconds from now."""
        return cls("rate_limited", times, _match("api", None, path_contains, query_contains),
                   code=status, seconds=reset_in)

    @classmethod
    def retry_after(cls, seconds: float = 1, status: int = 429, *, times: int = 1,
                    path_contains: str | None = None, query_contains: str | None = None) -> Fault:
        """``status`` (429 or 403) with a ``Retry-After`` header."""
        return cls("retry_after", times, _match("api", None, path_contains, query_contains),
                   code=status, seconds=seconds)

    @classmethod
    def secondary_limit(cls, *, times: int = 1, path_contains: str | None = None,
                        query_contains: str | None = None) -> Fault:
        """403 "secondary rate limit" with no rate headers and no ``Retry-After``."""
        return cls("secondary_limit", times, _match("api", None, path_contains, query_contains),
                   code=403)

    @classmethod
    def status(cls, code: int, *, path_contains: str | None = None,
               query_contains: str | None = None, origin: str | None = "api",
               method: str | None = None, times: int = 1) -> Fault:
        """Answer ``code`` with a short body (JSON on the API, text elsewhere)."""
        return cls("status", times, _match(origin, method, path_contains, query_contains), code=code)

    @classmethod
    def truncated_json(cls, *, path_contains: str | None = None,
                       query_contains: str | None = None, times: int = 1) -> Fault:
        """A 200 JSON response whose body is cut in half (Content-Length matches the
        cut body; the ETag is the one of the full body)."""
        return cls("truncated_json", times, _match("api", "GET", path_contains, query_contains))

    @classmethod
    def empty_page(cls, page: int = 3, *, path_contains: str | None = None,
                   times: int = 1) -> Fault:
        """That page of a paginated list answers ``[]`` but keeps its Link header."""
        return cls("empty_page", times,
                   _match("api", "GET", path_contains, None, page, paginated_only=True))

    @classmethod
    def no_link_header(cls, page: int | None = None, *, path_contains: str | None = None,
                       times: int = 1) -> Fault:
        """Omit the Link header of a paginated list (any page if ``page`` is None)."""
        return cls("no_link_header", times,
                   _match("api", "GET", path_contains, None, page, paginated_only=True))

    # objects-origin transfer faults --------------------------------------- #
    @classmethod
    def reset_connection(cls, after_bytes: int = 1024, *, path_contains: str | None = None,
                         times: int = 1) -> Fault:
        """Objects download: send ``after_bytes`` body bytes, then close the connection
        (the client sees an incomplete body)."""
        return cls("reset_connection", times, _match("objects", "GET", path_contains),
                   after_bytes=after_bytes)

    @classmethod
    def expire_mid_transfer(cls, after_bytes: int = 1024, *, path_contains: str | None = None,
                            times: int = 1) -> Fault:
        """Like ``reset_connection``, and that signed URL answers 403 (expired) from
        then on, so the client must get a fresh one from the web URL."""
        return cls("expire_mid_transfer", times, _match("objects", "GET", path_contains),
                   after_bytes=after_bytes)


def _int_param(query: str, name: str, default: int) -> int:
    value = dict(parse_qsl(query, keep_blank_values=True)).get(name, "")
    try:
        return int(value)
    except ValueError:
        return default
