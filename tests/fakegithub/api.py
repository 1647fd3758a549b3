"""The API origin (like ``https://api.github.com``): rate limit, ETags, faults, pagination
and the routes a client of the releases API uses. A mixin of :class:`FakeGitHub`: the state
it reads lives there."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from tests.fakegithub.data import _etag_matches
from tests.fakegithub.faults import Fault, RecordedRequest, _int_param
from tests.fakegithub.server import _Response

RESULT_CAP = 1000
_DOCS = "https://docs.github.com/rest"
_JSON = "application/json; charset=utf-8"


class ApiOrigin:
    """``FakeGitHub._respond`` for ``rec.origin == "api"``: :meth:`_api`."""

    def _rate_headers(self) -> list[tuple[str, str]]:
        return [("X-RateLimit-Limit", str(self.rate_limit)),
                ("X-RateLimit-Remaining", str(self._remaining)),
                ("X-RateLimit-Reset", str(self._reset)),
                ("X-RateLimit-Used", str(self.rate_limit - self._remaining)),
                ("X-RateLimit-Resource", "core")]

    def _request_id(self) -> str:
        n = next(self._req_ids)
        return f"C0DE:{n:04X}:{n * 7919 % 0xFFFFFF:X}:{n * 104729 % 0xFFFFFF:X}:{int(time.time()):X}"

    def _json(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None,
              *, rate: bool = True) -> _Response:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        hdrs = [("Content-Type", _JSON), ("X-GitHub-Media-Type", "github.v3; format=json"),
                ("X-GitHub-Api-Version-Selected", "2022-11-28")]
        hdrs += headers or []
        if rate:
            hdrs += self._rate_headers()
        hdrs.append(("X-GitHub-Request-Id", self._request_id()))
        return _Response(status, hdrs, body)

    def _error(self, status: int, message: str, headers: list[tuple[str, str]] | None = None,
               *, rate: bool = True) -> _Response:
        return self._json(status, {"message": message, "documentation_url": _DOCS,
                                   "status": str(status)}, headers, rate=rate)

    def _api(self, rec: RecordedRequest) -> _Response:
        if self.require_user_agent and not rec.headers.get("user-agent"):
            return _Response(403, [("Content-Type", "text/plain; charset=utf-8")], (
                b"Request forbidden by administrative rules. Please make sure your request "
                b"has a User-Agent header (https://docs.github.com/en/rest/overview/"
                b"resources-in-the-rest-api#user-agent-required). "
                b"Check https://developer.github.com for other possible causes.\n"))
        with self._lock:
            self._maybe_reset()
            fault = self._take_fault(
                rec, ("rate_limited", "retry_after", "secondary_limit", "status"))
            if fault is not None:
                return self._api_fault(fault)

            auth = rec.headers.get("authorization", "")
            scheme, _, cred = auth.partition(" ")
            authed = bool(auth) and scheme.lower() in ("bearer", "token")
            if auth and self.token is not None and (not authed or cred.strip() != self.token):
                return self._error(401, "Bad credentials")

            if rec.path == "/rate_limit":
                core = {"limit": self.rate_limit, "used": self.rate_limit - self._remaining,
                        "remaining": self._remaining, "reset": self._reset, "resource": "core"}
                return self._json(200, {"resources": {"core": core}, "rate": core})

            if self._remaining <= 0:
                who = "user ID 1" if authed else "127.0.0.1"
                return self._error(403, (
                    f"API rate limit exceeded for {who}. (But here's the good news: "
                    "Authenticated requests get a higher rate limit. Check out the "
                    "documentation for more details.)"))

            resp, etag_body = self._api_route(rec)
            if resp.status == 200 and etag_body is not None:
                etag = 'W/"' + hashlib.sha256(etag_body).hexdigest() + '"'
                resp.headers += [("ETag", etag),
                                 ("Cache-Control", "private, max-age=60, s-maxage=60"),
                                 ("Vary", "Accept, Authorization, Cookie, X-GitHub-OTP")]
                inm = rec.headers.get("if-none-match")
                if inm and _etag_matches(inm, etag):
                    keep = ("etag", "cache-control", "vary", "link", "x-github-request-id")
                    hdrs = [(k, v) for k, v in resp.headers if k.lower() in keep]
                    return _Response(304, hdrs + self._rate_headers())
            self._remaining -= 1
            # rate headers reflect this request
            resp.headers = [(k, v) for k, v in resp.headers
                            if not k.lower().startswith("x-ratelimit-")] + self._rate_headers()
            return resp

    def _api_fault(self, fault: Fault) -> _Response:
        secondary = ("You have exceeded a secondary rate limit. Please wait a few minutes "
                     "before you try again. If you reach out to GitHub Support for help, "
                     "please include the request ID.")
        if fault.kind == "rate_limited":
            reset = math.ceil(time.time() + fault.seconds)
            hdrs = [("X-RateLimit-Limit", str(self.rate_limit)), ("X-RateLimit-Remaining", "0"),
                    ("X-RateLimit-Reset", str(reset)), ("X-RateLimit-Used", str(self.rate_limit)),
                    ("X-RateLimit-Resource", "core")]
            return self._error(fault.code, "API rate limit exceeded for 127.0.0.1.", hdrs,
                               rate=False)
        if fault.kind == "retry_after":
            return self._error(fault.code, secondary,
                               [("Retry-After", str(math.ceil(fault.seconds)))])
        if fault.kind == "secondary_limit":
            return self._error(403, secondary, rate=False)
        try:
            phrase = HTTPStatus(fault.code).phrase
        except ValueError:
            phrase = "Error"
        if fault.code < 500:  # a 4xx is charged like any answered request; a 5xx is not
            self._remaining = max(0, self._remaining - 1)
        return self._error(fault.code, phrase, rate=fault.code < 500)

    _API_ROUTES: tuple[tuple[str, str], ...] = (
        (r"/releases", "releases"),
        (r"/releases/latest", "latest"),
        (r"/releases/tags/(?P<tag>.+)", "release_tag"),
        (r"/releases/(?P<rid>\d+)", "release_id"),
        (r"/releases/assets/(?P<aid>\d+)", "asset"),
        (r"/git/matching-refs/(?P<ref>.+)", "matching_refs"),
        (r"/git/ref/(?P<ref>.+)", "ref"),
        (r"/tags", "tags"),
        (r"/(?P<kind>tarball|zipball)(?:/(?P<ref>.+))?", "archive"),
    )

    def _api_route(self, rec: RecordedRequest) -> tuple[_Response, bytes | None]:
        """Returns the response and, for 200 JSON, the body that the ETag covers."""
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)?", rec.path) or \
            re.fullmatch(r"/repositories/(\d+)()(/.*)?", rec.path)
        if m is None:
            return self._error(404, "Not Found"), None
        if m.group(2):
            ok = (m.group(1).lower(), m.group(2).lower()) == (self.owner.lower(), self.repo.lower())
        else:
            ok = m.group(1) == str(self.repo_id)
        rest = m.group(3) or ""
        if not rest.startswith("/git/matching-refs/"):  # there a trailing "/" is part of the prefix
            rest = rest.rstrip("/")
        if not ok or rec.method not in ("GET", "HEAD"):
            return self._error(404, "Not Found"), None
        for pattern, name in self._API_ROUTES:
            rm = re.fullmatch(pattern, rest)
            if rm:
                return getattr(self, f"_api_{name}")(rec, **{k: unquote(v) if v else v
                                                            for k, v in rm.groupdict().items()})
        return self._error(404, "Not Found"), None

    def _ok(self, rec: RecordedRequest, payload: Any, link: str | None = None
            ) -> tuple[_Response, bytes | None]:
        """A 200 JSON response, after the body-altering faults that match."""
        if isinstance(payload, list):
            if self._take_fault(rec, ("empty_page",)):
                payload = []
            if link and self._take_fault(rec, ("no_link_header",)):
                link = None
        resp = self._json(200, payload, [("Link", link)] if link else None)
        etag_body = resp.body
        if self._take_fault(rec, ("truncated_json",)):
            resp.body = resp.body[: len(resp.body) // 2]
        return resp, etag_body

    def _paginate(self, rec: RecordedRequest, items: list[Any], *, cap: int | None,
                  view: Callable[[Any], Any] | None = None, default_per_page: int = 30
                  ) -> tuple[_Response, bytes | None]:
        per_page = _int_param(rec.query, "per_page", default_per_page)
        per_page = default_per_page if per_page < 1 else min(per_page, 100)
        page = max(1, _int_param(rec.query, "page", 1))
        if cap is not None and (page - 1) * per_page >= cap:
            return self._json(422, {
                "message": f"Only the first {cap} results are available.",
                "documentation_url": "https://docs.github.com/rest/releases/releases#list-releases",
                "status": "422"}), None
        counted = min(len(items), cap) if (cap is not None and self.cap_links) else len(items)
        last = max(1, math.ceil(counted / per_page))
        rels: list[tuple[int, str]] = []
        if page > 1:
            rels.append((page - 1, "prev"))
        if page < last:
            rels += [(page + 1, "next"), (last, "last")]
        if page > 1:
            rels.append((1, "first"))
        link = ", ".join(f'<{self._page_url(rec, n)}>; rel="{r}"' for n, r in rels) or None
        start = (page - 1) * per_page
        chunk = items[start:start + per_page]
        return self._ok(rec, [view(i) for i in chunk] if view else chunk, link)

    def _page_url(self, rec: RecordedRequest, page: int) -> str:
        params = parse_qsl(rec.query, keep_blank_values=True)
        if any(k == "page" for k, _ in params):
            params = [(k, str(page) if k == "page" else v) for k, v in params]
        else:
            params.append(("page", str(page)))
        path = rec.path
        if self.link_style == "repositories":
            path = re.sub(r"^/repos/[^/]+/[^/]+", f"/repositories/{self.repo_id}", path)
        return f"{self.api_url}{path}?{urlencode(params, safe='/:')}"

    def _api_releases(self, rec: RecordedRequest) -> tuple[_Response, bytes | None]:
        return self._paginate(rec, self._releases, cap=RESULT_CAP, view=self._release_view)

    def _api_latest(self, rec: RecordedRequest) -> tuple[_Response, bytes | None]:
        for rel in self._releases:
            if not rel.get("prerelease") and not rel.get("draft"):
                return self._ok(rec, self._release_view(rel))
        return self._error(404, "Not Found"), None

    def _api_release_tag(self, rec: RecordedRequest, tag: str) -> tuple[_Response, bytes | None]:
        try:
            return self._ok(rec, self._release_view(self._find(tag)))
        except KeyError:
            return self._error(404, "Not Found"), None

    def _api_release_id(self, rec: RecordedRequest, rid: str) -> tuple[_Response, bytes | None]:
        for rel in self._releases:
            if str(rel["id"]) == rid:
                return self._ok(rec, self._release_view(rel))
        return self._error(404, "Not Found"), None

    def _api_asset(self, rec: RecordedRequest, aid: str) -> tuple[_Response, bytes | None]:
        for rel in self._releases:
            for asset in rel["assets"]:
                if str(asset["id"]) == aid:
                    if "application/octet-stream" in rec.headers.get("accept", ""):
                        if asset["id"] not in self._blobs:
                            return self._error(404, "Not Found"), None
                        location = self._sign(asset["id"])
                        return _Response(302, [("Location", location), *self._rate_headers()]), None
                    return self._ok(rec, self._asset_view(rel, asset))
        return self._error(404, "Not Found"), None

    def _api_matching_refs(self, rec: RecordedRequest, ref: str) -> tuple[_Response, bytes | None]:
        prefix = "refs/" + ref
        refs = [self._ref_view(r, sha) for r, sha in self._refs() if r.startswith(prefix)]
        if self.paginate_matching_refs and "per_page" in rec.query:
            return self._paginate(rec, refs, cap=None)
        return self._ok(rec, refs)

    def _api_ref(self, rec: RecordedRequest, ref: str) -> tuple[_Response, bytes | None]:
        for name, sha in self._refs():
            if name == "refs/" + ref:
                return self._ok(rec, self._ref_view(name, sha))
        return self._error(404, "Not Found"), None

    def _api_tags(self, rec: RecordedRequest) -> tuple[_Response, bytes | None]:
        tags = [
            {"name": name[len("refs/tags/"):],
             "zipball_url": f"{self._repo_api}/zipball/refs/{quote(name[5:])}",
             "tarball_url": f"{self._repo_api}/tarball/refs/{quote(name[5:])}",
             "commit": {"sha": sha, "url": f"{self._repo_api}/commits/{sha}"},
             "node_id": "REF_" + hashlib.sha1(name.encode()).hexdigest()[:20]}
            for name, sha in reversed(self._refs()) if name.startswith("refs/tags/")]
        return self._paginate(rec, tags, cap=None)

    def _api_archive(self, rec: RecordedRequest, kind: str, ref: str | None
                     ) -> tuple[_Response, bytes | None]:
        ext = "tar.gz" if kind == "tarball" else "zip"
        target = ref or "refs/heads/master"
        location = f"{self.web_url}/{self.owner}/{self.repo}/legacy.{ext}/{quote(target)}"
        headers = [("Location", location), ("Content-Type", "text/html;charset=utf-8"),
                   ("X-GitHub-Request-Id", self._request_id()), *self._rate_headers()]
        return _Response(302, headers), None
