"""Tests for the GitHub fake in tests/fakegithub/."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.fakegithub import RELEASES_FIXTURE, FakeGitHub, Fault

REPO = "/repos/explosion/spacy-models"
SM = "en_core_web_sm-3.7.1"
SM_WHL = f"{SM}-py3-none-any.whl"


@pytest.fixture(scope="module")
def fixture_tags() -> list[str]:
    return [r["tag_name"] for r in json.loads(gzip.decompress(RELEASES_FIXTURE.read_bytes()))]


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        yield fake


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def link_rels(resp: httpx.Response) -> dict[str, int]:
    """rel → page number of a Link header."""
    return {rel: int(parse_qs(urlsplit(str(info["url"])).query)["page"][0])
            for rel, info in resp.links.items()}


# --------------------------------------------------------------------------- #
# Releases listing
# --------------------------------------------------------------------------- #
def test_release_pages_follow_link_until_the_1000_cap(
        gh: FakeGitHub, client: httpx.Client, fixture_tags: list[str]) -> None:
    url: str | None = f"{gh.api_url}{REPO}/releases?per_page=100"
    first = client.get(url)
    base = f"{gh.api_url}{REPO}/releases?per_page=100"
    assert first.headers["link"] == (
        f'<{base}&page=2>; rel="next", <{base}&page=11>; rel="last"')
    assert first.headers["content-type"] == "application/json; charset=utf-8"

    seen: list[str] = []
    responses = []
    while url:
        resp = client.get(url)
        responses.append(resp)
        if resp.status_code != 200:
            break
        seen += [r["tag_name"] for r in resp.json()]
        url = resp.links.get("next", {}).get("url")
    assert [r.status_code for r in responses] == [200] * 10 + [422]
    assert seen == fixture_tags[:1000]
    # Like the live API, page 10 still advertises page 11 (and a naive client hits the 422).
    assert link_rels(responses[9]) == {"prev": 9, "next": 11, "last": 11, "first": 1}
    assert link_rels(responses[4]) == {"prev": 4, "next": 6, "last": 11, "first": 1}
    assert list(responses[4].links) == ["prev", "next", "last", "first"]
    assert responses[10].json() == {
        "message": "Only the first 1000 results are available.",
        "documentation_url": "https://docs.github.com/rest/releases/releases#list-releases",
        "status": "422"}
    # beyond the cap with other page sizes
    assert client.get(f"{gh.api_url}{REPO}/releases?per_page=50&page=21").status_code == 422
    assert client.get(f"{gh.api_url}{REPO}/releases?per_page=50&page=20").status_code == 200


def test_cap_links_option_stops_links_at_the_cap(client: httpx.Client) -> None:
    with FakeGitHub(cap_links=True) as gh:
        first = client.get(f"{gh.api_url}{REPO}/releases", params={"per_page": 100})
        assert link_rels(first) == {"next": 2, "last": 10}
        tenth = client.get(f"{gh.api_url}{REPO}/releases", params={"per_page": 100, "page": 10})
        assert link_rels(tenth) == {"prev": 9, "first": 1}


def test_release_list_defaults_and_clamping(
        gh: FakeGitHub, client: httpx.Client, fixture_tags: list[str]) -> None:
    resp = client.get(f"{gh.api_url}{REPO}/releases")
    assert [r["tag_name"] for r in resp.json()] == fixture_tags[:30]
    assert link_rels(resp) == {"next": 2, "last": 37}
    assert resp.links["next"]["url"] == f"{gh.api_url}{REPO}/releases?page=2"
    assert len(client.get(f"{gh.api_url}{REPO}/releases?per_page=500").json()) == 100
    with FakeGitHub(link_style="repositories") as gh2:
        resp = client.get(f"{gh2.api_url}{REPO}/releases?per_page=100")
        nxt = resp.links["next"]["url"]
        assert nxt == f"{gh2.api_url}/repositories/{gh2.repo_id}/releases?per_page=100&page=2"
        assert client.get(nxt).json()[0]["tag_name"] == fixture_tags[100]


def test_small_repo_has_no_link_header(client: httpx.Client) -> None:
    with FakeGitHub(releases=[{"tag_name": "a-1.0"}, {"tag_name": "a-0.9"}]) as gh:
        resp = client.get(f"{gh.api_url}{REPO}/releases")
        assert [r["tag_name"] for r in resp.json()] == ["a-1.0", "a-0.9"]
        assert "link" not in resp.headers
    with FakeGitHub(load_fixture=False) as gh:
        assert client.get(f"{gh.api_url}{REPO}/releases").json() == []


def test_release_shape_urls_and_null_digests(gh: FakeGitHub, client: httpx.Client) -> None:
    rel = client.get(f"{gh.api_url}{REPO}/releases/tags/{SM}").json()
    assert "x_model_meta" not in rel
    assert rel["url"] == f"{gh.api_url}{REPO}/releases/{rel['id']}"
    names = {a["name"]: a for a in rel["assets"]}
    whl = names[SM_WHL]
    assert whl["browser_download_url"] == (
        f"{gh.web_url}/explosion/spacy-models/releases/download/{SM}/{SM_WHL}")
    assert whl["url"] == f"{gh.api_url}{REPO}/releases/assets/{whl['id']}"
    every = client.get(f"{gh.api_url}{REPO}/releases?per_page=100&page=3").json()
    assert all(a["digest"] is None for r in every for a in r["assets"])
    with FakeGitHub(keep_digests=True) as gh2:
        rel = client.get(f"{gh2.api_url}{REPO}/releases/tags/{SM}").json()
        assert all(a["digest"].startswith("sha256:") for a in rel["assets"])


def test_single_release_endpoints(gh: FakeGitHub, client: httpx.Client,
                                  fixture_tags: list[str]) -> None:
    rel = client.get(f"{gh.api_url}{REPO}/releases/tags/{SM}").json()
    assert client.get(f"{gh.api_url}{REPO}/releases/{rel['id']}").json() == rel
    missing = client.get(f"{gh.api_url}{REPO}/releases/tags/nope-1.0")
    assert missing.status_code == 404 and missing.json()["message"] == "Not Found"
    latest = client.get(f"{gh.api_url}{REPO}/releases/latest").json()
    assert latest["tag_name"] == fixture_tags[0] and not latest["prerelease"]
    assert client.get(f"{gh.api_url}/repos/explosion/other/releases").status_code == 404
    tags = client.get(f"{gh.api_url}{REPO}/tags?per_page=100")
    assert len(tags.json()) == 100 and link_rels(tags)["last"] == 11


# --------------------------------------------------------------------------- #
# Refs
# --------------------------------------------------------------------------- #
def test_matching_refs_returns_every_tag(gh: FakeGitHub, client: httpx.Client,
                                         fixture_tags: list[str]) -> None:
    resp = client.get(f"{gh.api_url}{REPO}/git/matching-refs/tags")
    refs = resp.json()
    assert len(refs) == 1099 and "link" not in resp.headers
    assert {r["ref"] for r in refs} == {f"refs/tags/{t}" for t in fixture_tags}
    assert refs == sorted(refs, key=lambda r: r["ref"])
    assert refs[0]["object"]["type"] == "commit" and len(refs[0]["object"]["sha"]) == 40
    # like the live API, per_page/page are ignored
    paged = client.get(f"{gh.api_url}{REPO}/git/matching-refs/tags?per_page=100&page=2")
    assert len(paged.json()) == 1099
    sm = client.get(f"{gh.api_url}{REPO}/git/matching-refs/tags/en_core_web_sm-").json()
    assert SM in {r["ref"].removeprefix("refs/tags/") for r in sm}
    assert all(r["ref"].startswith("refs/tags/en_core_web_sm-") for r in sm)
    assert client.get(f"{gh.api_url}{REPO}/git/matching-refs/tags/zz").json() == []

    gh.extra_tags.append("not-a-release-1.0")
    assert len(client.get(f"{gh.api_url}{REPO}/git/matching-refs/tags").json()) == 1100
    gh.remove_release(SM)  # the git tag survives its release
    assert len(client.get(f"{gh.api_url}{REPO}/git/matching-refs/tags").json()) == 1100


def test_matching_refs_pagination_option(client: httpx.Client) -> None:
    with FakeGitHub(paginate_matching_refs=True) as gh:
        resp = client.get(f"{gh.api_url}{REPO}/git/matching-refs/tags?per_page=100")
        assert len(resp.json()) == 100 and link_rels(resp) == {"next": 2, "last": 11}


# --------------------------------------------------------------------------- #
# ETag, rate limit, auth
# --------------------------------------------------------------------------- #
def test_etag_304_does_not_count_and_mutation_changes_etag(
        gh: FakeGitHub, client: httpx.Client) -> None:
    url = f"{gh.api_url}{REPO}/releases?per_page=100"
    first = client.get(url)
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    assert first.headers["cache-control"] == "private, max-age=60, s-maxage=60"
    assert int(first.headers["x-ratelimit-remaining"]) == 4999 == gh.rate_remaining
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["x-ratelimit-remaining"] == "4999" and gh.rate_remaining == 4999
    assert again.headers["etag"] == etag
    page2 = client.get(f"{gh.api_url}{REPO}/releases?per_page=100&page=2")

    gh.add_asset(first.json()[0]["tag_name"], "extra.txt", b"hi")
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    unaffected = client.get(page2.request.url, headers={"If-None-Match": page2.headers["etag"]})
    assert unaffected.status_code == 304
    assert gh.rate_remaining == 4997


def test_rate_limit_exhaustion(client: httpx.Client) -> None:
    with FakeGitHub(rate_limit=3) as gh:
        statuses = [client.get(f"{gh.api_url}{REPO}/releases/latest") for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 403]
        assert [r.headers["x-ratelimit-remaining"] for r in statuses] == ["2", "1", "0", "0"]
        blocked = statuses[-1]
        assert blocked.json()["message"].startswith("API rate limit exceeded for 127.0.0.1.")
        for name in ("limit", "reset", "used", "resource"):
            assert f"x-ratelimit-{name}" in blocked.headers
        assert blocked.headers["x-ratelimit-used"] == "3"
        assert int(blocked.headers["x-ratelimit-reset"]) > time.time()
        assert "x-github-request-id" in blocked.headers
        rl = client.get(f"{gh.api_url}/rate_limit").json()  # does not count
        assert rl["resources"]["core"]["remaining"] == 0 and rl["rate"]["limit"] == 3
        gh.rate_remaining = 1
        assert client.get(f"{gh.api_url}{REPO}/releases/latest").status_code == 200


def test_token_and_user_agent(client: httpx.Client) -> None:
    with FakeGitHub(token="s3cret") as gh:
        url = f"{gh.api_url}{REPO}/releases/latest"
        bad = client.get(url, headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
        assert client.get(url, headers={"Authorization": "token s3cret"}).status_code == 200
        assert client.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get(url).status_code == 200  # anonymous is fine
        assert send_without_user_agent(client, url).status_code == 403
    with FakeGitHub(require_user_agent=False) as gh:
        assert send_without_user_agent(client, f"{gh.api_url}{REPO}/releases/latest") \
            .status_code == 200


def send_without_user_agent(client: httpx.Client, url: str) -> httpx.Response:
    request = client.build_request("GET", url)
    del request.headers["User-Agent"]
    return client.send(request)


def test_token_only_reaches_the_api_origin(client: httpx.Client) -> None:
    with FakeGitHub(token="s3cret") as gh:
        gh.set_asset_content(SM, SM_WHL, b"wheel-bytes")
        auth = {"Authorization": "Bearer s3cret"}
        rel = client.get(f"{gh.api_url}{REPO}/releases/tags/{SM}", headers=auth).json()
        asset = next(a for a in rel["assets"] if a["name"] == SM_WHL)
        got = client.get(asset["browser_download_url"], follow_redirects=True)
        assert got.content == b"wheel-bytes"
        via_api = client.get(asset["url"], follow_redirects=True,
                             headers={**auth, "Accept": "application/octet-stream"})
        assert via_api.content == b"wheel-bytes"
        origins = {r.origin for r in gh.requests}
        assert origins == {"api", "web", "objects"}
        for req in gh.requests:
            assert ("s3cret" in req.headers.get("authorization", "")) == (req.origin == "api")
        assert all(r.origin == "api" for r in gh.api_requests())
        assert [r.status for r in gh.requests if r.origin != "api"] == [302, 200, 200]


# --------------------------------------------------------------------------- #
# Downloads
# --------------------------------------------------------------------------- #
def test_download_redirect_and_ranges(gh: FakeGitHub, client: httpx.Client) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    gh.set_asset_content(SM, SM_WHL, data)
    web = f"{gh.web_url}/explosion/spacy-models/releases/download/{SM}/{SM_WHL}"
    hop = client.get(web)
    assert hop.status_code == 302
    loc = hop.headers["location"]
    assert loc.startswith(f"{gh.objects_url}/blob/") and "sig=" in loc and "exp=" in loc
    assert int(parse_qs(urlsplit(loc).query)["exp"][0]) > time.time() + 250

    full = client.get(loc)
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-length"] == str(len(data))
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-type"] == "application/octet-stream"
    etag = full.headers["etag"]
    assert etag.startswith('"') and "last-modified" in full.headers

    part = client.get(loc, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = client.get(loc, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == data[-100:]
    rest = client.get(loc, headers={"Range": "bytes=10000-"})
    assert rest.content == data[10000:]
    assert rest.headers["content-range"] == f"bytes 10000-10239/{len(data)}"
    bad = client.get(loc, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    ok_if = client.get(loc, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert ok_if.status_code == 206 and ok_if.content == data[:10]
    stale = client.get(loc, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data

    head = client.head(web, follow_redirects=True)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    assert head.content == b""

    tampered = loc.replace("sig=", "sig=0")
    assert client.get(tampered).status_code == 403
    fixture_only = f"{gh.web_url}/explosion/spacy-models/releases/download/{SM}/{SM}.tar.gz"
    assert client.get(fixture_only).status_code == 404  # no content set
    assert client.get(f"{gh.web_url}/explosion/spacy-models/releases/download/x/y").status_code \
        == 404


def test_signed_urls_expire(client: httpx.Client) -> None:
    with FakeGitHub(signed_url_ttl=0) as gh:
        gh.set_asset_content(SM, SM_WHL, b"abc")
        web = f"{gh.web_url}/explosion/spacy-models/releases/download/{SM}/{SM_WHL}"
        loc = client.get(web).headers["location"]
        exp = int(parse_qs(urlsplit(loc).query)["exp"][0])
        time.sleep(max(0.0, exp - time.time()) + 0.05)
        expired = client.get(loc)
        assert expired.status_code == 403
        assert b"AuthenticationFailed" in expired.content
        assert b"Request has expired" in expired.content


def test_large_download_streams(gh: FakeGitHub, client: httpx.Client) -> None:
    data = hashlib.sha256(b"seed").digest() * (1 << 20)  # 32 MiB
    gh.set_asset_content(SM, SM_WHL, data)
    web = f"{gh.web_url}/explosion/spacy-models/releases/download/{SM}/{SM_WHL}"
    digest = hashlib.sha256()
    with client.stream("GET", web, follow_redirects=True) as resp:
        for chunk in resp.iter_bytes():
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(data).digest()
    assert gh.requests[-1].bytes_sent == len(data)


def test_add_release_and_digest(gh: FakeGitHub, client: httpx.Client) -> None:
    rel = gh.add_release("xx_new_model-1.0.0", {"xx_new_model-1.0.0.tar.gz": b"sdist"},
                         digest=True)
    assert rel["assets"][0]["digest"] == "sha256:" + hashlib.sha256(b"sdist").hexdigest()
    first = client.get(f"{gh.api_url}{REPO}/releases?per_page=1").json()[0]
    assert first["tag_name"] == "xx_new_model-1.0.0"
    got = client.get(rel["assets"][0]["browser_download_url"], follow_redirects=True)
    assert got.content == b"sdist"
    gh.add_release("xx_old-0.1", {"a.whl": b"a"}, newest=False, prerelease=True)
    assert gh.releases[-1]["tag_name"] == "xx_old-0.1"
    assert gh.releases[-1]["assets"][0]["digest"] is None
    gh.remove_release("xx_new_model-1.0.0")
    assert client.get(f"{gh.api_url}{REPO}/releases/tags/xx_new_model-1.0.0").status_code == 404
    assert client.get(rel["assets"][0]["browser_download_url"]).status_code == 404


# --------------------------------------------------------------------------- #
# Archives
# --------------------------------------------------------------------------- #
def test_tarball_and_zipball(gh: FakeGitHub, client: httpx.Client) -> None:
    hop = client.get(f"{gh.api_url}{REPO}/tarball")
    assert hop.status_code == 302
    assert hop.headers["location"] == (
        f"{gh.web_url}/explosion/spacy-models/legacy.tar.gz/refs/heads/master")
    resp = client.get(hop.headers["location"])
    assert resp.status_code == 200
    prefix = gh.archive_prefix
    assert prefix.startswith("explosion-spacy-models-") and len(prefix) == 30
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        names = tar.getnames()
        assert {n.split("/")[0] for n in names} == {prefix}
        meta = tar.extractfile(f"{prefix}/meta/{SM}.json")
        assert meta is not None and json.load(meta)["version"] == "3.7.1"
        assert f"{prefix}/compatibility.json" in names
    zipped = client.get(f"{gh.api_url}{REPO}/zipball/main", follow_redirects=True)
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        assert f"{prefix}/meta/{SM}.json" in zf.namelist()


def test_archive_override(client: httpx.Client) -> None:
    with FakeGitHub(archive=b"not really a tarball", load_fixture=False) as gh:
        resp = client.get(f"{gh.api_url}{REPO}/tarball", follow_redirects=True)
        assert resp.content == b"not really a tarball"


# --------------------------------------------------------------------------- #
# Faults
# --------------------------------------------------------------------------- #
def test_fault_rate_limited(gh: FakeGitHub, client: httpx.Client) -> None:
    gh.inject(Fault.rate_limited(reset_in=2))
    resp = client.get(f"{gh.api_url}{REPO}/releases")
    assert resp.status_code == 403
    assert resp.headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(resp.headers["x-ratelimit-reset"]) - time.time() <= 3
    assert "rate limit exceeded" in resp.json()["message"]
    assert client.get(f"{gh.api_url}{REPO}/releases").status_code == 200


def test_fault_retry_after_and_secondary(gh: FakeGitHub, client: httpx.Client) -> None:
    gh.inject(Fault.retry_after(seconds=1))
    gh.inject(Fault.retry_after(seconds=3, status=403))
    gh.inject(Fault.secondary_limit())
    url = f"{gh.api_url}{REPO}/releases/latest"
    first, second, third = client.get(url), client.get(url), client.get(url)
    assert (first.status_code, first.headers["retry-after"]) == (429, "1")
    assert (second.status_code, second.headers["retry-after"]) == (403, "3")
    assert third.status_code == 403
    assert third.json()["message"].startswith("You have exceeded a secondary rate limit")
    assert "retry-after" not in third.headers
    assert not any(h.startswith("x-ratelimit") for h in third.headers)
    assert client.get(url).status_code == 200
    assert gh.rate_remaining == 4999  # rejected requests were not charged


def test_fault_status_on_one_page(gh: FakeGitHub, client: httpx.Client) -> None:
    fault = Fault.status(502, path_contains="/releases", query_contains="page=3", times=2)
    gh.inject(fault)
    url = f"{gh.api_url}{REPO}/releases?per_page=100"
    assert client.get(url).status_code == 200
    assert client.get(f"{url}&page=3").status_code == 502
    assert client.get(f"{url}&page=3").status_code == 502
    assert fault.times == 0
    assert client.get(f"{url}&page=3").status_code == 200


def test_fault_truncated_json(gh: FakeGitHub, client: httpx.Client) -> None:
    gh.inject(Fault.truncated_json(path_contains="/releases"))
    url = f"{gh.api_url}{REPO}/releases"
    cut = client.get(url)
    assert cut.status_code == 200
    assert int(cut.headers["content-length"]) == len(cut.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)
    whole = client.get(url)
    assert len(cut.content) == len(whole.content) // 2
    assert whole.content.startswith(cut.content)


def test_fault_empty_page_and_no_link(gh: FakeGitHub, client: httpx.Client) -> None:
    gh.inject(Fault.empty_page(page=3))
    gh.inject(Fault.no_link_header(page=2))
    url = f"{gh.api_url}{REPO}/releases?per_page=100"
    page2 = client.get(f"{url}&page=2")
    assert len(page2.json()) == 100 and "link" not in page2.headers
    page3 = client.get(f"{url}&page=3")
    assert page3.json() == [] and link_rels(page3)["next"] == 4
    assert len(client.get(f"{url}&page=3").json()) == 100


def test_fault_reset_connection(gh: FakeGitHub, client: httpx.Client) -> None:
    data = b"z" * 100_000
    gh.set_asset_content(SM, SM_WHL, data)
    gh.inject(Fault.reset_connection(after_bytes=1000))
    web = f"{gh.web_url}/explosion/spacy-models/releases/download/{SM}/{SM_WHL}"
    loc = client.get(web).headers["location"]
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", loc) as resp:
        assert resp.headers["content-length"] == str(len(data))
        for chunk in resp.iter_raw():
            got += chunk
    assert len(got) == 1000
    assert gh.requests[-1].bytes_sent == 1000
    resumed = client.get(loc, headers={"Range": f"bytes={len(got)}-"})  # same URL still works
    assert resumed.status_code == 206 and bytes(got) + resumed.content == data


def test_fault_expire_mid_transfer(gh: FakeGitHub, client: httpx.Client) -> None:
    data = b"q" * 50_000
    gh.set_asset_content(SM, SM_WHL, data)
    gh.inject(Fault.expire_mid_transfer(after_bytes=4096))
    web = f"{gh.web_url}/explosion/spacy-models/releases/download/{SM}/{SM_WHL}"
    loc = client.get(web).headers["location"]
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", loc) as resp:
        for chunk in resp.iter_raw():
            got += chunk
    assert len(got) == 4096
    again = client.get(loc, headers={"Range": "bytes=4096-"})
    assert again.status_code == 403 and b"Request has expired" in again.content
    fresh = client.get(web).headers["location"]
    assert fresh != loc
    rest = client.get(fresh, headers={"Range": "bytes=4096-"})
    assert rest.status_code == 206 and bytes(got) + rest.content == data


# --------------------------------------------------------------------------- #
# Lifecycle
# --------------------------------------------------------------------------- #
def test_exit_really_stops(client: httpx.Client) -> None:
    before = threading.active_count()
    with FakeGitHub() as gh:
        # leave a keep-alive connection open on each origin
        client.get(f"{gh.api_url}/rate_limit")
        client.get(f"{gh.web_url}/")
        client.get(f"{gh.objects_url}/")
        ports = [int(urlsplit(u).port or 0) for u in (gh.api_url, gh.web_url, gh.objects_url)]
        assert len(set(ports)) == 3
        assert threading.active_count() >= before + 3
    assert threading.active_count() == before
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
