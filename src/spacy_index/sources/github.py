"""GitHub releases as a source of distributions.

Completeness is the point: GitHub lists at most 1,000 releases (page 11 of 100 answers 422
"Only the first 1000 results are available."), and explosion/spacy-models has 1,099. So the
listing is always checked against the repository's tag refs, and every tag that the listing
missed is fetched by tag. The same check repairs pages that came back short or empty.

The requests themselves (conditional GETs, retries, rate-limit waits) are :mod:`.github_api`.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from spacy_index.errors import IncompleteListing, UpstreamError
from spacy_index.model import Release, ReleaseAsset, parse_timestamp
from spacy_index.sources.github_api import GitHubAPI

RESULT_CAP = 1000
PER_PAGE = 100


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


class GitHubReleases(GitHubAPI):
    """Reads every release of one repository from a GitHub (or GitHub Enterprise) API."""

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


def _page_of(url: str) -> tuple[int | None, int | None]:
    query = parse_qs(urlsplit(url).query)
    try:
        page = int(query.get("page", ["1"])[0])
        per_page = int(query.get("per_page", ["30"])[0])
    except ValueError:
        return None, None
    return page, per_page
