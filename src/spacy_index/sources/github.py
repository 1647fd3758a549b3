"""GitHub releases as a source of distributions.

Completeness is the point: GitHub lists at most 1,000 releases (page 11 of 100 answers 422
"Only the first 1000 results are available."), and explosion/spacy-models has 1,099. So the
listing is always checked against the repository's tag refs, and every tag that the listing
missed is fetched by tag. The same check repairs pages that came back short or empty.

Every GET is conditional (``If-None-Match`` from :class:`~spacy_index.http.ConditionalStore`),
so a run against an unchanged upstream is answered with 304s, which spend no rate limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from spacy_index.errors import IncompleteListing, RateLimited, UpstreamError, UpstreamUnreachable
from spacy_index.http import ConditionalStore, StoredResponse, describe_error, origin, redact_url
from spacy_index.model import Release, ReleaseAsset, parse_timestamp

DEFAULT_API_URL = "https://api.github.com"
RESULT_CAP = 1000
PER_PAGE = 100
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


@dataclass
class Listing:
    releases: dict[str, Release] = field(default_factory=dict)
    capped: bool = False
    tags_without_release: list[str] = field(default_factory=list)


def parse_release(data: dict[str, Any]) -> Release | None:
    """GitHub's release JSON to a :class:`Release`; drafts give ``None``."""
    if data.get("draft"):
        return None
    assets = []
    for a in data.get("assets") or ():
        if a.get("state", "uploaded") != "uploaded":
            continue
        digest = a.get("digest") or ""
        sha = digest.removeprefix("sha256:").lower() if digest.startswith("sha256:") else None
        size = a.get("size")
        assets.append(
            ReleaseAsset(
                name=str(a["name"]),
                url=str(a["browser_download_url"]),
                size=size if isinstance(size, int) and size >= 0 else None,
                upload_time=parse_timestamp(a.get("created_at")),
                digest_sha256=sha,
            )
        )
    return Release(
        tag=str(data["tag_name"]),
        assets=tuple(sorted(assets, key=lambda x: x.name)),
        prerelease=bool(data.get("prerelease")),
        release_id=data.get("id"),
    )


class GitHubReleases:
    """Reads every release of one repository from a GitHub (or GitHub Enterprise) API."""

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

    # ------------------------------------------------------------------ requests
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
            try:
                resp = self.client.get(url, headers=headers)
            except httpx.TransportError as e:
                # a refused or unresolvable connection is retried once, not with full backoff
                limit = min(self.retries, 1) if isinstance(e, httpx.ConnectError) else self.retries
                if attempt <= limit:
                    self._backoff(attempt, f"{what}: {describe_error(e, url)}")
                    continue
                raise UpstreamUnreachable(
                    f"GitHub at {redact_url(self.api_url)}",
                    f"{describe_error(e, url)} while fetching {what}",
                    "check the network and GITHUB_API_URL (the bundled snapshot, used by "
                    "build --offline and as a fallback, covers github.com only)",
                ) from e
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
            data: Any = resp.content
            if parse_json:
                try:
                    data = json.loads(resp.content)
                except ValueError:
                    if attempt <= self.retries:
                        self._backoff(attempt, f"{what}: truncated or invalid JSON")
                        continue
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

    # ------------------------------------------------------------------ listing
    def list_pages(self, *, max_pages: int | None = None) -> tuple[list[Release], bool]:
        """Follow ``Link: rel="next"`` from page 1 (per_page=100) up to GitHub's cap.

        Returns the releases and whether the listing stopped at the 1,000-result cap. A page
        that keeps failing with 5xx is retried as two half-size pages before giving up.
        """
        releases: list[Release] = []
        url: str | None = self._url("releases", per_page=PER_PAGE, page=1)
        pages = 0
        while url:
            page, per_page = _page_of(url)
            if page and per_page and (page - 1) * per_page >= RESULT_CAP:
                return releases, True  # don't spend a request on the known 422
            answer = self.get(url, what=f"releases page {page or '?'}")
            if answer.status == 422 and "1000" in answer.message:
                return releases, True
            if answer.status >= 500 and page and per_page and per_page > 1:
                smaller = self._halved_page(page, per_page)
                releases.extend(smaller)
                url = self._url("releases", per_page=per_page, page=page + 1)
                pages += 1
                if max_pages is not None and pages >= max_pages:
                    break
                continue
            if answer.status != 200:
                raise IncompleteListing(
                    f"GitHub answered HTTP {answer.status} for releases page {page}: "
                    f"{answer.message or 'no message'}; the index was not changed"
                )
            releases.extend(r for r in map(parse_release, answer.data) if r)
            pages += 1
            if max_pages is not None and pages >= max_pages:
                break
            url = answer.next_url
        return releases, False

    def _halved_page(self, page: int, per_page: int) -> list[Release]:
        half = per_page // 2
        out: list[Release] = []
        for p in (2 * page - 1, 2 * page):
            answer = self.get(
                self._url("releases", per_page=half, page=p), what=f"releases page {p} of {half}"
            )
            if answer.status != 200:
                raise IncompleteListing(
                    f"GitHub keeps failing on releases page {page} (HTTP {answer.status}), even "
                    "in smaller pages; try again later. The index was not changed"
                )
            out.extend(r for r in map(parse_release, answer.data) if r)
        return out

    def tags(self) -> list[str]:
        """Every tag name, from the git refs API (not capped like the releases list)."""
        url: str | None = self._url("git/matching-refs/tags")
        tags: list[str] = []
        while url:
            answer = self.get(url, what="tag refs")
            if answer.status == 404 or (answer.status == 409):  # no refs / empty repository
                return tags
            if answer.status != 200:
                raise IncompleteListing(
                    f"GitHub answered HTTP {answer.status} for the tag refs of {self.repo}: "
                    f"{answer.message or 'no message'}"
                )
            for ref in answer.data:
                name = str(ref.get("ref", ""))
                if name.startswith("refs/tags/"):
                    tags.append(name.removeprefix("refs/tags/"))
            url = answer.next_url
        return tags

    def release_by_tag(self, tag: str) -> Release | None:
        answer = self.get(
            self._url(f"releases/tags/{quote(tag, safe='')}"), what=f"release {tag!r}"
        )
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise IncompleteListing(
                f"GitHub answered HTTP {answer.status} for release {tag!r}: {answer.message}"
            )
        return parse_release(answer.data)

    def fill_from_tags(
        self, releases: dict[str, Release], tags: Iterable[str], known: Iterable[str] = ()
    ) -> list[str]:
        """Fetch, by tag, every tag's release not already in ``releases`` or ``known``.

        Returns the tags that exist but have no (published) release.
        """
        skip = set(releases) | set(known)
        missing = sorted(t for t in tags if t not in skip)
        if missing:
            self.notify(
                f"{len(missing)} release(s) beyond the listing (GitHub lists at most "
                f"{RESULT_CAP}); fetching them by tag"
            )
        without: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            for tag, release in zip(missing, pool.map(self.release_by_tag, missing), strict=True):
                if release is None:
                    without.append(tag)
                else:
                    releases[tag] = release
        return without

    def listing(self) -> Listing:
        """Every release: the paged list, completed from the tag refs."""
        pages, capped = self.list_pages()
        releases = {r.tag: r for r in pages}
        without = self.fill_from_tags(releases, self.tags())
        return Listing(releases=releases, capped=capped, tags_without_release=without)

    def archive(self) -> bytes:
        """The default branch as a tarball (one request, redirected to codeload)."""
        url = f"{self.api_url}/repos/{self.repo}/tarball"
        answer = self.get(url, what="repository archive", parse_json=False)
        if answer.status != 200:
            raise UpstreamError(
                f"could not download the archive of {self.repo} (HTTP {answer.status}): "
                f"{answer.message or 'no message'}"
            )
        return bytes(answer.data)


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


def _page_of(url: str) -> tuple[int | None, int | None]:
    query = parse_qs(urlsplit(url).query)
    try:
        page = int(query.get("page", ["1"])[0])
        per_page = int(query.get("per_page", ["30"])[0])
    except ValueError:
        return None, None
    return page, per_page


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
