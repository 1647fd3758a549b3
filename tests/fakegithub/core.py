"""The fake's state (releases, blobs, faults, the rate-limit bucket, what it was asked) and
its lifecycle; the origins' answers come from its mixins (``api``, ``downloads``)."""

from __future__ import annotations

import contextlib
import copy
import email.utils
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import quote

from tests.fakegithub.api import ApiOrigin
from tests.fakegithub.data import (
    _fixture_releases_text,
    _fixture_repo_data,
    _now_iso,
    _packed_archive,
)
from tests.fakegithub.downloads import DownloadOrigins
from tests.fakegithub.faults import Fault, RecordedRequest
from tests.fakegithub.server import _Blob, _Handler, _Response, _Server
from tests.servers import serve_http


class FakeGitHub(ApiOrigin, DownloadOrigins):
    """Fake GitHub (API, web and objects origins) served from fixture data.

    Use as a context manager: ``__enter__`` starts the three servers,
    ``__exit__`` closes every connection and joins every thread. Arguments:

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
