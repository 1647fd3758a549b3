"""The GitHub REST API as the release reader uses it: conditional GETs with retries,
rate-limit waits, one-line failures, and a count of what a run cost.

Every GET is conditional (``If-None-Match`` from :class:`~spacy_index.http.ConditionalStore`),
so a run against an unchanged upstream is answered with 304s, which spend no rate limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from spacy_index.config import DEFAULT_API_URL
from spacy_index.errors import RateLimited, UpstreamError, UpstreamUnreachable
from spacy_index.http import ConditionalStore, StoredResponse, describe_error, origin, redact_url

SECONDARY_LIMIT_WAIT = 60.0
Notify = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class RequestStats:
    """What a run cost upstream.

    ``requests`` counts API requests (304s included); ``rate_limit_spent`` the API answers
    other than 304; ``other_requests`` the hops to other origins (archive downloads).
    """

    requests: int = 0
    not_modified: int = 0
    rate_limit_spent: int = 0
    other_requests: int = 0
    waited_seconds: float = 0.0

    def add(self, status: int, *, api: bool) -> None:
        if not api:
            self.other_requests += 1
            return
        self.requests += 1
        if status == 304:
            self.not_modified += 1
        else:
            self.rate_limit_spent += 1


@dataclass(frozen=True)
class Answer:
    status: int
    data: Any = None
    next_url: str | None = None
    message: str = ""
    not_modified: bool = False


class GitHubAPI:
    """Requests to one repository of a GitHub (or GitHub Enterprise) API."""

    def __init__(
        self,
        repo: str,
        *,
        client: httpx.Client,
        store: ConditionalStore,
        api_url: str = DEFAULT_API_URL,
        authenticated: bool = False,
        max_wait: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        secondary_wait: float = SECONDARY_LIMIT_WAIT,
        workers: int = 8,
        notify: Notify = _quiet,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        owner, _, name = repo.partition("/")
        if not owner or not name or "/" in name:
            raise UpstreamError(f"--repo must look like OWNER/NAME, got {repo!r}")
        self.repo = repo
        self.api_url = api_url.rstrip("/")
        self.client = client
        self.store = store
        self.authenticated = authenticated
        self.max_wait = max_wait
        self.retries = retries
        self.backoff = backoff
        self.secondary_wait = secondary_wait
        self.workers = workers
        self.notify = notify
        self.sleep = sleep
        self.stats = RequestStats()
        self._api_origin = origin(self.api_url)

    def _url(self, path: str, **query: int) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.api_url}/repos/{self.repo}/{path}" + (f"?{q}" if q else "")

    def get(self, url: str, *, what: str, parse_json: bool = True) -> Answer:
        """A conditional GET with retries, rate-limit waits and one-line failures."""
        stored = self.store.get(url, self.authenticated)
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if stored:
            headers["If-None-Match"] = stored.etag
        attempt = 0
        while True:
            attempt += 1
            resp = self._send(url, headers, what, attempt)
            if resp is None:
                continue
            for hop in (*resp.history, resp):
                self.stats.add(hop.status_code, api=origin(hop.url) == self._api_origin)
            if resp.status_code == 304 and stored is not None:
                return self._answer_from(stored, what, parse_json=parse_json)
            wait = self._rate_limit_wait(resp)
            if wait is not None:
                self._wait_for_limit(resp, wait, what)
                continue
            if resp.status_code >= 500 and attempt <= self.retries:
                self._backoff(attempt, f"{what}: HTTP {resp.status_code}")
                continue
            if resp.status_code == 401:
                raise UpstreamError(
                    f"GitHub rejected the token (401) while fetching {what}: "
                    "check GITHUB_TOKEN, or unset it to read anonymously"
                )
            if resp.status_code != 200:
                return Answer(resp.status_code, message=_message(resp))
            answer = self._fresh_answer(url, resp, what, attempt, parse_json=parse_json)
            if answer is not None:
                return answer

    def _send(self, url: str, headers: dict[str, str], what: str, attempt: int) -> httpx.Response | None:
        """One request; ``None`` when a transport error is worth another attempt (after the
        backoff)."""
        try:
            return self.client.get(url, headers=headers)
        except httpx.TransportError as e:
            # a refused or unresolvable connection is retried once, not with full backoff
            limit = min(self.retries, 1) if isinstance(e, httpx.ConnectError) else self.retries
            if attempt <= limit:
                self._backoff(attempt, f"{what}: {describe_error(e, url)}")
                return None
            raise UpstreamUnreachable(
                f"GitHub at {redact_url(self.api_url)}",
                f"{describe_error(e, url)} while fetching {what}",
                "check the network and GITHUB_API_URL (the bundled snapshot, used by "
                "build --offline and as a fallback, covers github.com only)",
            ) from e

    def _fresh_answer(
        self, url: str, resp: httpx.Response, what: str, attempt: int, *, parse_json: bool
    ) -> Answer | None:
        """A 200's answer, its ETag stored; ``None`` when its JSON is broken and worth another
        attempt (after the backoff)."""
        data: Any = resp.content
        if parse_json:
            try:
                data = json.loads(resp.content)
            except ValueError:
                if attempt <= self.retries:
                    self._backoff(attempt, f"{what}: truncated or invalid JSON")
                    return None
                raise UpstreamError(
                    f"GitHub sent invalid JSON for {what} {self.retries + 1} times; "
                    "try again later"
                ) from None
        etag = resp.headers.get("ETag")
        if etag:
            self.store.put(
                url,
                self.authenticated,
                StoredResponse(etag, resp.content, resp.headers.get("Link", "")),
            )
        return Answer(200, data=data, next_url=_next_link(resp.headers.get("Link", "")))

    def _answer_from(self, stored: StoredResponse, what: str, *, parse_json: bool) -> Answer:
        if not parse_json:
            return Answer(200, data=stored.body, not_modified=True)
        try:
            data = json.loads(stored.body)
        except ValueError as e:  # a damaged store entry: never trust it
            raise UpstreamError(
                f"the local ETag store holds a damaged copy of {what}; delete "
                f"{self.store.path} and retry"
            ) from e
        return Answer(200, data=data, next_url=_next_link(stored.link), not_modified=True)

    def _backoff(self, attempt: int, why: str) -> None:
        delay = self.backoff * 2 ** (attempt - 1)
        self.notify(f"retrying in {delay:.1f}s after {why} (attempt {attempt}/{self.retries})")
        self.sleep(delay)

    def _rate_limit_wait(self, resp: httpx.Response) -> float | None:
        """Seconds to wait if ``resp`` is a rate-limit answer, else ``None``."""
        if resp.status_code not in (403, 429):
            return None
        h = resp.headers
        retry_after = h.get("Retry-After")
        if retry_after:
            return _retry_after_seconds(retry_after)
        if h.get("X-RateLimit-Remaining") == "0" and h.get("X-RateLimit-Reset"):
            try:
                return max(0.0, float(h["X-RateLimit-Reset"]) - time.time()) + 1.0
            except ValueError:
                return self.secondary_wait
        if resp.status_code == 429 or "rate limit" in _message(resp).lower():
            return self.secondary_wait  # GitHub: wait at least a minute when no header says
        return None

    def _wait_for_limit(self, resp: httpx.Response, wait: float, what: str) -> None:
        reset = _reset_time(resp, wait)
        if wait > self.max_wait or self.stats.waited_seconds + wait > self.max_wait:
            raise RateLimited(f"fetching {what}", reset, wait, self.max_wait)
        self.notify(
            f"GitHub rate limit reached (HTTP {resp.status_code}); waiting {wait:.0f}s, "
            f"until {reset:%H:%M:%S} UTC (--max-wait {self.max_wait:g}s)"
        )
        self.stats.waited_seconds += wait
        self.sleep(wait)


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return ""
    return str(data.get("message", "")) if isinstance(data, dict) else ""


def _next_link(link_header: str) -> str | None:
    if not link_header:
        return None
    links = httpx.Response(200, headers={"Link": link_header}).links
    return links.get("next", {}).get("url")


def _retry_after_seconds(value: str) -> float:
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return SECONDARY_LIMIT_WAIT
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _reset_time(resp: httpx.Response, wait: float) -> datetime:
    reset = resp.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return datetime.fromtimestamp(float(reset), timezone.utc)
        except (ValueError, OverflowError):
            pass
    return datetime.fromtimestamp(time.time() + wait, timezone.utc)
