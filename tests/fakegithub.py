"""A local, in-process fake of GitHub for tests.

``FakeGitHub`` runs three HTTP servers on ``127.0.0.1`` (ephemeral ports), one
per origin GitHub uses when a client lists and downloads release assets:

* ``api_url``     -- like ``https://api.github.com`` (JSON REST API)
* ``web_url``     -- like ``https://github.com`` / ``codeload.github.com``
  (``browser_download_url`` redirects, repository archives)
* ``objects_url`` -- like ``objects.githubusercontent.com`` (signed, expiring
  blob URLs with byte-range support)

State comes from ``tests/data/spacy-models`` (1,099 real releases of
``explosion/spacy-models`` and the repository's data files). Tests can mutate it
(``add_release``, ``add_asset``, ``set_asset_content``, ``remove_release``) and
queue faults (``inject(Fault...)``). Every request on every origin is recorded
in ``requests``.

Behaviour follows the live service where it is known:

* ``GET /repos/{o}/{r}/releases`` refuses pages whose offset reaches 1,000 with
  422 ``Only the first 1000 results are available.``, but its ``Link`` header is
  computed from the full count, so page 10 (``per_page=100``) still advertises
  ``rel="next"`` page 11 and ``rel="last"`` page 11 -- clients that blindly follow
  ``next`` get the 422 (as go-github and hub users have reported). Pass
  ``cap_links=True`` for a Link header that stops at the cap instead.
* ``GET /repos/{o}/{r}/git/matching-refs/...`` ignores ``per_page``/``page`` and
  returns every matching ref without a Link header (github/docs#3863,
  google/go-github#1567). Pass ``paginate_matching_refs=True`` to honour them.
* Fixture asset digests are served as ``null`` (the live API only sets
  ``digest`` for assets uploaded since June 2025) unless ``keep_digests=True``.

Usage::

    with FakeGitHub(token="t0k") as gh:
        gh.set_asset_content("en_core_web_sm-3.7.1",
                             "en_core_web_sm-3.7.1-py3-none-any.whl", b"wheel")
        httpx.get(f"{gh.api_url}/repos/explosion/spacy-models/releases",
                  headers={"Authorization": "Bearer t0k"})
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import functools
import gzip
import hashlib
import hmac
import io
import itertools
import json
import math
import re
import secrets
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from tests.servers import StoppableHTTPServer, serve_http

__all__ = ["FakeGitHub", "Fault", "RecordedRequest"]

FIXTURE_DIR = Path(__file__).parent / "data" / "spacy-models"
RELEASES_FIXTURE = FIXTURE_DIR / "releases.json.gz"
REPO_DATA_FIXTURE = FIXTURE_DIR / "repo-data.tar.gz"

Origin = Literal["api", "web", "objects"]
#: ``match(origin, method, path, query) -> bool``
Matcher = Callable[[str, str, str, str], bool]

RESULT_CAP = 1000
_CHUNK = 256 * 1024
_DOCS = "https://docs.github.com/rest"
_JSON = "application/json; charset=utf-8"


# --------------------------------------------------------------------------- #
# Public data types
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# Fixture loading (cached per process; every FakeGitHub gets its own copy)
# --------------------------------------------------------------------------- #
@functools.cache
def _fixture_releases_text() -> str:
    return gzip.decompress(RELEASES_FIXTURE.read_bytes()).decode("utf-8")


@functools.cache
def _fixture_repo_data() -> bytes:
    return REPO_DATA_FIXTURE.read_bytes()


@functools.cache
def _packed_archive(source: bytes, prefix: str, sha: str) -> bytes:
    """Re-pack a tar.gz under one top-level folder, like ``git archive``."""
    out = io.BytesIO()
    mtime = 1716768000  # stable bytes → stable ETag
    raw = gzip.decompress(source) if source[:2] == b"\x1f\x8b" else source
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as src, \
            gzip.GzipFile(fileobj=out, mode="wb", mtime=mtime, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT,
                         pax_headers={"comment": sha}) as dst:
        top = tarfile.TarInfo(prefix)
        top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o775, mtime
        dst.addfile(top)
        for member in src.getmembers():
            name = member.name.lstrip("./")
            if not name:
                continue
            info = copy.copy(member)
            info.name = f"{prefix}/{name}".rstrip("/")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            dst.addfile(info, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def _tar_to_zip(archive: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for member in src.getmembers():
            if member.isdir():
                dst.writestr(member.name.rstrip("/") + "/", b"")
            elif member.isfile():
                fh = src.extractfile(member)
                dst.writestr(member.name, fh.read() if fh else b"")
    return out.getvalue()


def _int_param(query: str, name: str, default: int) -> int:
    value = dict(parse_qsl(query, keep_blank_values=True)).get(name, "")
    try:
        return int(value)
    except ValueError:
        return default


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison as used for If-None-Match."""
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in header.split(","))


# --------------------------------------------------------------------------- #
# Internals
# --------------------------------------------------------------------------- #
@dataclass
class _Blob:
    data: bytes
    etag: str
    last_modified: str


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    abort_after: int | None = None  # close the connection after this many body bytes


class _Server(StoppableHTTPServer):
    """One origin of the fake (``api``, ``web`` or ``objects``)."""

    fake: FakeGitHub
    origin: str

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # aborted/torn-down connections are expected; keep test output clean


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def version_string(self) -> str:
        if self.server.origin == "objects":
            return "Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0"
        return "GitHub.com"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        split = urlsplit(self.path)
        rec = RecordedRequest(
            origin=self.server.origin,
            method=self.command,
            path=split.path,
            query=split.query,
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        fake = self.server.fake
        resp = fake._respond(rec)
        rec.status = resp.status
        fake._record(rec)
        try:
            self._write(resp, rec)
        except OSError:
            self.close_connection = True

    def _write(self, resp: _Response, rec: RecordedRequest) -> None:
        self.send_response(resp.status)
        no_body = self.command == "HEAD" or resp.status in (204, 304)
        names = {k.lower() for k, _ in resp.headers}
        for name, value in resp.headers:
            self.send_header(name, value)
        if "content-length" not in names and resp.status not in (204, 304):
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if no_body:
            return
        body = memoryview(resp.body)
        limit = len(body) if resp.abort_after is None else min(resp.abort_after, len(body))
        for start in range(0, limit, _CHUNK):
            chunk = body[start:min(start + _CHUNK, limit)]
            rec.bytes_sent += len(chunk)
            try:
                self.wfile.write(chunk)
            except OSError:
                rec.bytes_sent -= len(chunk)
                raise
        if limit < len(body):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------- #
# The fake
# --------------------------------------------------------------------------- #
class FakeGitHub:
    """Fake GitHub (API, web and objects origins) served from fixture data.

    Use as a context manager: ``__enter__`` starts the three servers,
    ``__exit__`` closes every connection and joins every thread.
    """

    api_url: str
    web_url: str
    objects_url: str

    def __init__(
        self,
        *,
        owner: str = "explosion",
        repo: str = "spacy-models",
        releases: list[dict[str, Any]] | None = None,
        load_fixture: bool = True,
        keep_digests: bool = False,
        token: str | None = None,
        rate_limit: int = 5000,
        archive: bytes | None = None,
        extra_tags: Iterable[str] = (),
        require_user_agent: bool = True,
        signed_url_ttl: float = 300,
        cap_links: bool = False,
        paginate_matching_refs: bool = False,
        link_style: Literal["repos", "repositories"] = "repos",
        repo_id: int = 84940268,
    ) -> None:
        """
        releases: served instead of the fixture (deep-copied; missing ids/fields filled in).
        load_fixture: with ``releases=None``, False starts from an empty repository.
        keep_digests: serve the fixture's ``sha256:`` digests instead of null.
        token: if set, a wrong ``Authorization`` token gets 401 "Bad credentials".
        rate_limit: size of the (single) core rate-limit bucket, reset hourly.
        archive: tar.gz bytes served as the repository tarball (default: the
            fixture's data files under ``explosion-spacy-models-<sha7>/``).
        extra_tags: tags that exist in git but have no release.
        require_user_agent: API answers 403 to requests without ``User-Agent``.
        signed_url_ttl: lifetime, in seconds, of objects-origin signed URLs.
        cap_links: Link headers never advertise pages past the 1,000-result cap
            (the live API does advertise them; default False).
        paginate_matching_refs: honour per_page/page on matching-refs (the live
            API ignores them; default False).
        link_style: ``"repos"`` → Link URLs ``/repos/{o}/{r}/...``;
            ``"repositories"`` → ``/repositories/{repo_id}/...`` (both are served).
        """
        self.owner, self.repo, self.repo_id = owner, repo, repo_id
        self.keep_digests = keep_digests
        self.token = token
        self.require_user_agent = require_user_agent
        self.signed_url_ttl = signed_url_ttl
        self.cap_links = cap_links
        self.paginate_matching_refs = paginate_matching_refs
        self.link_style = link_style
        self.extra_tags: list[str] = list(extra_tags)
        self.requests: list[RecordedRequest] = []

        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._blobs: dict[int, _Blob] = {}
        self._visible_digests: set[int] = set()
        self._orphan_tags: set[str] = set()
        self._revoked: set[str] = set()
        self._secret = secrets.token_bytes(16)
        self._ids = itertools.count(90_000_000)
        self._req_ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._servers: dict[str, _Server] = {}
        self._stack = contextlib.ExitStack()

        if releases is not None:
            self._releases = [self._normalize(r) for r in copy.deepcopy(releases)]
        elif load_fixture:
            self._releases = json.loads(_fixture_releases_text())
        else:
            self._releases = []

        self.rate_limit = rate_limit
        self._remaining = rate_limit
        self._reset = int(time.time()) + 3600

        self.head_sha = hashlib.sha1(_fixture_repo_data()).hexdigest()  # "latest commit"
        #: top-level folder of the tarball/zipball, like ``explosion-spacy-models-1a2b3c4``
        self.archive_prefix = f"{owner}-{repo}-{self.head_sha[:7]}"
        self._archive = archive  # built lazily (≈1 s, cached per process)
        self._zip: bytes | None = None

    # lifecycle ------------------------------------------------------------ #
    def start(self) -> FakeGitHub:
        """Start the three servers (idempotent)."""
        if self._servers:
            return self
        with contextlib.ExitStack() as stack:
            for origin in ("api", "web", "objects"):
                server = stack.enter_context(
                    serve_http(_Handler, server_class=_Server, name=f"fakegithub-{origin}"))
                server.fake, server.origin = self, origin
                self._servers[origin] = server
            self._stack = stack.pop_all()
        self.api_url = self._origin_url("api")
        self.web_url = self._origin_url("web")
        self.objects_url = self._origin_url("objects")
        return self

    def stop(self) -> None:
        """Stop accepting, drop open connections, close sockets, join all threads."""
        self._servers = {}
        self._stack.close()

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _origin_url(self, origin: str) -> str:
        return f"http://127.0.0.1:{self._servers[origin].server_address[1]}"

    # inspection ----------------------------------------------------------- #
    @property
    def archive(self) -> bytes:
        """The tar.gz served for the repository (``tarball``/``legacy.tar.gz``)."""
        with self._lock:
            if self._archive is None:
                self._archive = _packed_archive(_fixture_repo_data(), self.archive_prefix,
                                                self.head_sha)
            return self._archive

    def api_requests(self) -> list[RecordedRequest]:
        """Recorded requests on the API origin only."""
        with self._lock:
            return [r for r in self.requests if r.origin == "api"]

    @property
    def rate_remaining(self) -> int:
        """Remaining requests in the core bucket (settable, e.g. to test exhaustion)."""
        with self._lock:
            self._maybe_reset()
            return self._remaining

    @rate_remaining.setter
    def rate_remaining(self, value: int) -> None:
        with self._lock:
            self._remaining = max(0, min(value, self.rate_limit))

    @property
    def releases(self) -> list[dict[str, Any]]:
        """Releases as the API would serve them (newest first)."""
        with self._lock:
            return [self._release_view(r) for r in self._releases]

    def release(self, tag: str) -> dict[str, Any]:
        """One release as served; KeyError if unknown."""
        with self._lock:
            return self._release_view(self._find(tag))

    # mutation ------------------------------------------------------------- #
    def inject(self, fault: Fault) -> None:
        """Queue a fault; faults are tried in injection order."""
        with self._lock:
            self._faults.append(fault)

    def add_release(self, tag: str, files: dict[str, bytes], *, prerelease: bool = False,
                    newest: bool = True, digest: bool = False) -> dict[str, Any]:
        """Add a release whose assets are downloadable; returns it as served.
        ``digest=True`` gives its assets their real ``sha256:`` digest."""
        with self._lock:
            if any(r["tag_name"] == tag for r in self._releases):
                raise ValueError(f"release {tag!r} exists")
            rel = self._normalize({"tag_name": tag, "prerelease": prerelease, "assets": []})
            if newest:
                self._releases.insert(0, rel)
            else:
                self._releases.append(rel)
            self._orphan_tags.discard(tag)
            for name, data in files.items():
                self.add_asset(tag, name, data, digest=digest)
            return self._release_view(rel)

    def add_asset(self, tag: str, name: str, data: bytes = b"x", *,
                  digest: bool = False) -> dict[str, Any]:
        """Upload an asset (with content) to an existing release; returns it as served."""
        with self._lock:
            rel = self._find(tag)
            if any(a["name"] == name for a in rel["assets"]):
                raise ValueError(f"asset {name!r} exists in {tag!r}")
            asset = self._normalize_asset({"name": name, "size": len(data)})
            rel["assets"].append(asset)
            self._set_blob(asset, data, digest)
            return self._asset_view(rel, asset)

    def set_asset_content(self, tag: str, name: str, data: bytes, *, digest: bool = False) -> None:
        """Give an existing asset real bytes (``size`` becomes ``len(data)``).
        ``digest=True`` also serves its real sha256 (else the digest is unchanged)."""
        with self._lock:
            rel = self._find(tag)
            asset = next((a for a in rel["assets"] if a["name"] == name), None)
            if asset is None:
                raise KeyError(f"no asset {name!r} in {tag!r}")
            self._set_blob(asset, data, digest)

    def remove_release(self, tag: str, *, delete_tag: bool = False) -> None:
        """Delete a release (its git tag stays, as on GitHub, unless ``delete_tag``)."""
        with self._lock:
            rel = self._find(tag)
            self._releases.remove(rel)
            for asset in rel["assets"]:
                self._blobs.pop(asset["id"], None)
            if not delete_tag:
                self._orphan_tags.add(tag)

    # state helpers -------------------------------------------------------- #
    def _find(self, tag: str) -> dict[str, Any]:
        for rel in self._releases:
            if rel["tag_name"] == tag:
                return rel
        raise KeyError(f"no release {tag!r}")

    def _normalize(self, rel: dict[str, Any]) -> dict[str, Any]:
        now = _now_iso()
        tag = rel["tag_name"]
        out = {"url": "", "html_url": "", "id": rel.get("id") or next(self._ids),
               "tag_name": tag, "name": rel.get("name", tag), "draft": False,
               "prerelease": False, "created_at": now, "published_at": now, "body": ""}
        out.update(rel)
        out["assets"] = [self._normalize_asset(a) for a in rel.get("assets", [])]
        return out

    def _normalize_asset(self, asset: dict[str, Any]) -> dict[str, Any]:
        now = _now_iso()
        out = {"url": "", "id": asset.get("id") or next(self._ids), "name": asset["name"],
               "label": "", "content_type": "application/octet-stream", "state": "uploaded",
               "size": 0, "digest": None, "download_count": 0, "created_at": now,
               "updated_at": now, "browser_download_url": ""}
        out.update(asset)
        return out

    def _set_blob(self, asset: dict[str, Any], data: bytes, digest: bool) -> None:
        data = bytes(data)
        asset["size"] = len(data)
        asset["updated_at"] = _now_iso()
        if digest:
            asset["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
            self._visible_digests.add(asset["id"])
        etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
        self._blobs[asset["id"]] = _Blob(data, etag, email.utils.formatdate(usegmt=True))

    def _record(self, rec: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(rec)

    def _maybe_reset(self) -> None:
        now = time.time()
        if now >= self._reset:
            self._remaining = self.rate_limit
            self._reset = int(now) + 3600

    def _take_fault(self, rec: RecordedRequest, kinds: Iterable[str]) -> Fault | None:
        kinds = set(kinds)
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.times > 0 and \
                        fault.match(rec.origin, rec.method, rec.path, rec.query):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # views ---------------------------------------------------------------- #
    @property
    def _repo_api(self) -> str:
        return f"{self.api_url}/repos/{self.owner}/{self.repo}"

    def _release_view(self, rel: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in rel.items() if not k.startswith("x_")}
        rid, tag = rel["id"], rel["tag_name"]
        out["url"] = f"{self._repo_api}/releases/{rid}"
        out["html_url"] = f"{self.web_url}/{self.owner}/{self.repo}/releases/tag/{quote(tag)}"
        out["assets_url"] = f"{self._repo_api}/releases/{rid}/assets"
        out["tarball_url"] = f"{self._repo_api}/tarball/{quote(tag)}"
        out["zipball_url"] = f"{self._repo_api}/zipball/{quote(tag)}"
        out["assets"] = [self._asset_view(rel, a) for a in rel["assets"]]
        return out

    def _asset_view(self, rel: dict[str, Any], asset: dict[str, Any]) -> dict[str, Any]:
        out = dict(asset)
        out["url"] = f"{self._repo_api}/releases/assets/{asset['id']}"
        out["browser_download_url"] = (
            f"{self.web_url}/{self.owner}/{self.repo}/releases/download/"
            f"{quote(rel['tag_name'])}/{quote(asset['name'])}")
        if not (self.keep_digests or asset["id"] in self._visible_digests):
            out["digest"] = None
        return out

    def _tag_sha(self, tag: str) -> str:
        return hashlib.sha1(f"{self.owner}/{self.repo}:{tag}".encode()).hexdigest()

    def _refs(self) -> list[tuple[str, str]]:
        tags = {r["tag_name"] for r in self._releases} | self._orphan_tags | set(self.extra_tags)
        refs = [(f"refs/tags/{t}", self._tag_sha(t)) for t in tags]
        refs.append(("refs/heads/master", self.head_sha))
        return sorted(refs)

    def _ref_view(self, ref: str, sha: str) -> dict[str, Any]:
        return {"ref": ref,
                "node_id": "REF_" + hashlib.sha1(ref.encode()).hexdigest()[:20],
                "url": f"{self._repo_api}/git/{quote(ref)}",
                "object": {"sha": sha, "type": "commit",
                           "url": f"{self._repo_api}/git/commits/{sha}"}}

    # request handling ----------------------------------------------------- #
    def _respond(self, rec: RecordedRequest) -> _Response:
        try:
            if rec.origin == "api":
                return self._api(rec)
            if rec.origin == "web":
                return self._web(rec)
            return self._objects(rec)
        except Exception as exc:  # pragma: no cover - a bug in the fake
            return _Response(500, [("Content-Type", "text/plain")],
                             f"fakegithub error: {exc!r}".encode())

    # -- API --------------------------------------------------------------- #
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

    # -- web (github.com + codeload) --------------------------------------- #
    def _web(self, rec: RecordedRequest) -> _Response:
        with self._lock:
            fault = self._take_fault(rec, ("status",))
            if fault is not None:
                return _Response(fault.code, [("Content-Type", "text/plain")], b"Error\n")
            base = f"/{self.owner}/{self.repo}/".lower()
            if rec.method not in ("GET", "HEAD") or not rec.path.lower().startswith(base):
                return self._not_found_text()
            rest = rec.path[len(base):]
            m = re.fullmatch(r"releases/download/([^/]+)/([^/]+)", rest)
            if m:
                tag, name = unquote(m.group(1)), unquote(m.group(2))
                for rel in self._releases:
                    if rel["tag_name"] != tag:
                        continue
                    for asset in rel["assets"]:
                        if asset["name"] == name and asset["id"] in self._blobs:
                            return _Response(302, [("Location", self._sign(asset["id"])),
                                                   ("Content-Type", "text/html; charset=utf-8")])
                return self._not_found_text()
            m = re.fullmatch(r"legacy\.(tar\.gz|zip)/(.+)", rest)
            if m:
                if m.group(1) == "tar.gz":
                    data, ctype, ext = self.archive, "application/x-gzip", "tar.gz"
                else:
                    if self._zip is None:
                        self._zip = _tar_to_zip(self.archive)
                    data, ctype, ext = self._zip, "application/zip", "zip"
                return _Response(200, [
                    ("Content-Type", ctype),
                    ("Content-Disposition", f"attachment; filename={self.archive_prefix}.{ext}"),
                    ("ETag", f'"{hashlib.sha1(data).hexdigest()}"')], data)
            return self._not_found_text()

    @staticmethod
    def _not_found_text() -> _Response:
        return _Response(404, [("Content-Type", "text/plain; charset=utf-8")], b"Not Found")

    def _sign(self, blob_id: int) -> str:
        exp = math.ceil(time.time() + self.signed_url_ttl)
        nonce = next(self._nonces)
        sig = self._signature(blob_id, exp, nonce)
        return f"{self.objects_url}/blob/{blob_id}?sig={sig}&exp={exp}&n={nonce}"

    def _signature(self, blob_id: int, exp: int, nonce: int) -> str:
        msg = f"{blob_id}:{exp}:{nonce}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    # -- objects (signed blob storage) ------------------------------------- #
    @staticmethod
    def _azure_error(status: int, code: str, message: str, detail: str = "") -> _Response:
        extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
        body = ('<?xml version="1.0" encoding="utf-8"?><Error>'
                f"<Code>{code}</Code><Message>{message}\nRequestId:{secrets.token_hex(8)}\n"
                f"Time:{_now_iso()}</Message>{extra}</Error>").encode()
        return _Response(status, [("Content-Type", "application/xml")], body)

    def _objects(self, rec: RecordedRequest) -> _Response:
        with self._lock:
            m = re.fullmatch(r"/blob/(\d+)", rec.path)
            if m is None or rec.method not in ("GET", "HEAD"):
                return self._azure_error(404, "ResourceNotFound",
                                         "The specified resource does not exist.")
            params = rec.params
            try:
                blob_id, exp, nonce = int(m.group(1)), int(params["exp"]), int(params["n"])
                good = hmac.compare_digest(params["sig"], self._signature(blob_id, exp, nonce))
            except (KeyError, ValueError):
                good = False
            if not good:
                return self._azure_error(
                    403, "AuthenticationFailed",
                    "Server failed to authenticate the request. Make sure the value of "
                    "Authorization header is formed correctly including the signature.",
                    "Signature did not match.")
            now = time.time()
            if params["sig"] in self._revoked or now > exp:
                stamp = email.utils.formatdate(exp, usegmt=True)
                return self._azure_error(
                    403, "AuthenticationFailed",
                    "Server failed to authenticate the request. Request has expired.",
                    f"Signature not valid in the specified time frame: Expiry [{stamp}] - "
                    f"Current [{email.utils.formatdate(now, usegmt=True)}]")
            fault = self._take_fault(rec, ("status",))
            if fault is not None:
                return self._azure_error(fault.code, "ServerBusy", "Injected fault.")
            blob = self._blobs.get(blob_id)
            if blob is None:
                return self._azure_error(404, "BlobNotFound", "The specified blob does not exist.")
            headers = [("Content-Type", "application/octet-stream"),
                       ("Accept-Ranges", "bytes"), ("ETag", blob.etag),
                       ("Last-Modified", blob.last_modified),
                       ("x-ms-blob-type", "BlockBlob")]
            inm = rec.headers.get("if-none-match")
            if inm and _etag_matches(inm, blob.etag):
                return _Response(304, headers)
            size = len(blob.data)
            rng = rec.headers.get("range")
            if_range = rec.headers.get("if-range")
            if rng and if_range and if_range.strip() not in (blob.etag, blob.last_modified):
                rng = None  # validator mismatch → full body
            span = _parse_range(rng, size) if rng else None
            if span == "unsatisfiable":
                resp = self._azure_error(416, "InvalidRange",
                                         "The range specified is invalid for the current size "
                                         "of the resource.")
                resp.headers.append(("Content-Range", f"bytes */{size}"))
                return resp
            if isinstance(span, tuple):
                start, end = span
                status, body = 206, blob.data[start:end + 1]
                headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            else:
                status, body = 200, blob.data
            resp = _Response(status, headers, body)
            if rec.method == "GET":
                fault = self._take_fault(rec, ("reset_connection", "expire_mid_transfer"))
                if fault is not None:
                    resp.abort_after = fault.after_bytes
                    if fault.kind == "expire_mid_transfer":
                        self._revoked.add(params["sig"])
            return resp


def _parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """A single ``bytes=`` range → (first, last); None means "ignore, send 200"."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        if start >= size:
            return "unsatisfiable"
        end = int(m.group(2)) if m.group(2) else size - 1
        if end < start:
            return None  # syntactically invalid → ignored
        return start, min(end, size - 1)
    suffix = int(m.group(2))
    if suffix == 0 or size == 0:
        return "unsatisfiable"
    return max(0, size - suffix), size - 1
