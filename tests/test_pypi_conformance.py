"""Conformance of ``spacy-index serve`` with the real PyPI, for a few hundred real projects.

``serve`` runs in-process (real uvicorn on 127.0.0.1) with its default config: the upstream
https://pypi.org/simple/ (plus the spacy-models source, which none of these names matches).
For every project in ``tests/data/conformance_projects.txt`` it compares:

(a) serve's PEP 691 JSON page with the upstream PEP 691 JSON page serve itself received:
    the same multiset of filenames and, per file, the same sha256, yanked (and reason),
    requires-python, size, upload-time, core-metadata (sha256 where given) and provenance
    (where given); the same ``versions``; the same ``project-status`` where upstream has one;
(b) serve's PEP 503 HTML page, parsed by the independent ``pypi_simple``, with serve's JSON:
    filenames, sha256, yanked, requires-python, core-metadata, project status;
(c) serve's PyPI-style ``/pypi/<name>/json``: HTTP 200 and every upstream file, with its
    sha256, under ``releases``;

and counts every 5xx serve answers.

Race-free by construction: PyPI can publish between two fetches, so the strict comparison is
never against a second download. serve runs with ``[limits] page_fetch = "thread"`` (its page
fetches in a thread of this process, not a process of their own) so that
``server.upstream.pages.client`` can be replaced by a client whose transport records the exact
body of every ``https://pypi.org/simple/<name>/`` response serve
receives, and the page TTL is raised so that serve fetches each page exactly once during the
run (a second fetch is itself reported). Transient PyPI failures (transport errors, 429,
5xx) are retried inside that transport, so a serve 5xx is never PyPI's flake. Requests to the
local serve never reuse a connection (no keep-alive race with uvicorn's idle timeout) and are
never retried.

Not counted as a difference: core-metadata that serve offers for a wheel the upstream gives
none for (serve reads it from the wheel by Range requests); the table counts them.
Upstream ``""`` and a missing ``requires-python`` are the same; time stamps are compared as
instants, digests case-insensitively, URLs by their decoded last path segment.

The offline ``test_*_comparison*`` tests check the comparator itself on crafted pages.

Report only (it races, so it asserts nothing): for a subset, PyPI's own
``/pypi/<name>/json`` against serve's PyPI-style JSON.

The summary table is printed, and written as markdown to ``$SPACY_INDEX_CONFORMANCE_REPORT``
when that is set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pypi_simple
import pytest
from packaging.utils import NormalizedName, canonicalize_name

from spacy_index.http import USER_AGENT, ssl_context
from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from tests.servers import run_app

#: serve may announce a newer minor API version than pypi_simple knows; that is allowed
pytestmark = pytest.mark.filterwarnings("ignore::pypi_simple.UnexpectedRepoVersionWarning")

PROJECTS_FILE = Path(__file__).parent / "data" / "conformance_projects.txt"
PYPI = "https://pypi.org"
UPSTREAM_SIMPLE = f"{PYPI}/simple/"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
WORKERS = 16
REQUEST_TIMEOUT = 60.0
#: for requests to the local serve, which itself may wait REQUEST_TIMEOUT for one upstream
#: read (and retry) and runs in this process, sharing the GIL with 16 client threads that
#: parse pages of up to 15,000 files: a slow answer is not a wrong one (the CI run
#: of 2026-12-02 timed out at 60 s on the four largest pages while the machine was loaded)
LOCAL_TIMEOUT = 180.0
#: serve must not refetch a page during the run (see the module docstring)
PAGE_TTL = 24 * 3600.0
UPSTREAM_ATTEMPTS = 4
#: one fresh connection per request to the local serve: a kept-alive connection can be closed
#: by uvicorn's keep-alive timeout just as the next request goes out (a reset that would be
#: nobody's bug), so no connection is ever reused and no request is ever retried
LOCAL_LIMITS = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=0)
#: the report-only comparison with PyPI's own JSON API: at most this many projects, each
#: with at most this many files on its simple page
REPORT_PROJECTS = 40
REPORT_MAX_FILES = 400
EXAMPLES = 20


def load_projects() -> list[NormalizedName]:
    names: dict[NormalizedName, None] = {}
    for line in PROJECTS_FILE.read_text().splitlines():
        raw = line.split("#", 1)[0].strip()
        if raw:
            names.setdefault(canonicalize_name(raw, validate=True), None)
    return list(names)


# --------------------------------------------------------------------------- recording
@dataclass
class Recorded:
    url: str
    status: int
    content_type: str
    body: bytes


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests to ``inner``; keeps the body of every upstream simple page.

    The body is read here and handed on in a new response with the same status, headers and
    (still encoded) bytes, so the client decodes exactly what it would have. Transport
    errors, 429 and 5xx from PyPI are retried, then the last outcome is passed on.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.records: dict[str, list[Recorded]] = defaultdict(list)
        self.retries: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(1, UPSTREAM_ATTEMPTS + 1):
            last = attempt == UPSTREAM_ATTEMPTS
            try:
                response = await self.inner.handle_async_request(request)
                try:
                    raw = await response.aread()
                finally:
                    await response.aclose()
            except httpx.TransportError as e:
                if last:
                    raise
                self.retries.append(f"{request.url}: {type(e).__name__}")
                await asyncio.sleep(attempt)
                continue
            if (response.status_code == 429 or response.status_code >= 500) and not last:
                self.retries.append(f"{request.url}: HTTP {response.status_code}")
                await asyncio.sleep(attempt)
                continue
            out = httpx.Response(response.status_code, headers=response.headers, content=raw,
                                 extensions=response.extensions, request=request)
            self._record(request, out)
            return out
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _record(self, request: httpx.Request, response: httpx.Response) -> None:
        url = request.url
        if url.host != "pypi.org" or not url.path.startswith("/simple/"):
            return
        parts = url.path.split("/")
        if len(parts) != 4 or parts[3] != "" or not parts[2]:
            return
        # ``response.content`` is already decoded (Content-Encoding) by httpx.Response
        self.records[parts[2]].append(Recorded(
            str(url), response.status_code,
            response.headers.get("content-type", "").split(";")[0].strip().lower(),
            response.content,
        ))


def recording_client() -> tuple[httpx.AsyncClient, RecordingTransport]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or None
    inner = httpx.AsyncHTTPTransport(
        verify=ssl_context(), proxy=proxy,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
    )
    transport = RecordingTransport(inner)
    client = httpx.AsyncClient(
        transport=transport, follow_redirects=True, headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=10.0),
    )
    return client, transport


# --------------------------------------------------------------------------- normalising
def _time(value: Any) -> datetime | str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"<not a string: {value!r}>"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return f"<unparsable: {value!r}>"
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _yanked(value: Any) -> tuple[bool, str | None]:
    """PEP 691 ``yanked``: absent/false = not yanked; true/"" = no reason."""
    if value is None or value is False:
        return (False, None)
    if value is True:
        return (True, None)
    if isinstance(value, str):
        return (True, value or None)
    return (True, f"<odd value {value!r}>")


def _requires_python(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _metadata(entry: dict[str, Any]) -> tuple[bool, str | None]:
    """PEP 658/714 core metadata: (available, sha256 or None)."""
    value = entry.get("core-metadata", entry.get("data-dist-info-metadata", False))
    if isinstance(value, dict):
        sha = value.get("sha256")
        return (True, sha.lower() if isinstance(sha, str) and sha else None)
    return (bool(value), None)


def _sha(entry: dict[str, Any]) -> str | None:
    sha = (entry.get("hashes") or {}).get("sha256")
    return sha.lower() if isinstance(sha, str) and sha else None


def _url_name(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _by_filename(files: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    counts = Counter(f.get("filename") for f in files)
    dups = sorted(str(n) for n, c in counts.items() if c > 1)
    return {f["filename"]: f for f in files if isinstance(f.get("filename"), str)}, dups


# --------------------------------------------------------------------------- comparing
@dataclass
class Outcome:
    name: str
    #: (kind, "project: detail")
    diffs: list[tuple[str, str]] = field(default_factory=list)
    fives: list[str] = field(default_factory=list)
    files: int = 0
    #: what the upstream page exercised: yanked files, files with core-metadata, with
    #: provenance, a project-status
    exercised: Counter[str] = field(default_factory=Counter)
    metadata_added: int = 0
    upstream_missing: bool = False
    #: serve's PyPI-style JSON filenames (for the report-only comparison)
    pypi_json_files: set[str] | None = None

    def diff(self, kind: str, detail: str) -> None:
        self.diffs.append((kind, f"{self.name}: {detail}"))


def compare_json(out: Outcome, upstream: dict[str, Any], served: dict[str, Any]) -> None:
    up_files, up_dups = _by_filename(upstream.get("files") or [])
    se_files, se_dups = _by_filename(served.get("files") or [])
    for u in up_files.values():
        out.exercised["yanked"] += _yanked(u.get("yanked"))[0]
        out.exercised["core-metadata"] += _metadata(u)[0]
        out.exercised["provenance"] += bool(u.get("provenance"))
    out.exercised["project-status"] += bool(upstream.get("project-status"))
    for n in se_dups:
        if n not in up_dups:
            out.diff("json:duplicate-file", n)
    for n in sorted(up_files.keys() - se_files.keys()):
        out.diff("json:missing-file", n)
    for n in sorted(se_files.keys() - up_files.keys()):
        out.diff("json:extra-file", n)
    for n in sorted(up_files.keys() & se_files.keys()):
        u, s = up_files[n], se_files[n]
        if _sha(u) != _sha(s):
            out.diff("json:sha256", f"{n}: {_sha(u)} != {_sha(s)}")
        if _yanked(u.get("yanked")) != _yanked(s.get("yanked")):
            out.diff("json:yanked", f"{n}: {u.get('yanked')!r} != {s.get('yanked')!r}")
        if _requires_python(u.get("requires-python")) != _requires_python(s.get("requires-python")):
            out.diff("json:requires-python",
                     f"{n}: {u.get('requires-python')!r} != {s.get('requires-python')!r}")
        if isinstance(u.get("size"), int) and u["size"] != s.get("size"):
            out.diff("json:size", f"{n}: {u['size']!r} != {s.get('size')!r}")
        if u.get("upload-time") is not None and _time(u["upload-time"]) != _time(s.get("upload-time")):
            out.diff("json:upload-time", f"{n}: {u['upload-time']!r} != {s.get('upload-time')!r}")
        (u_meta, u_msha), (s_meta, s_msha) = _metadata(u), _metadata(s)
        if u_meta and (not s_meta or (u_msha and u_msha != s_msha)):
            out.diff("json:core-metadata", f"{n}: {u_msha or u_meta!r} != {s_msha or s_meta!r}")
        elif s_meta and not u_meta:
            if n.endswith(".whl"):
                out.metadata_added += 1  # serve derives wheel metadata itself (range reads)
            else:
                out.diff("json:core-metadata", f"{n}: serve offers metadata for a non-wheel")
        if u.get("provenance") and not s.get("provenance"):
            out.diff("json:provenance", f"{n}: {u['provenance']!r} missing")
        if _url_name(str(s.get("url", ""))) != n:
            out.diff("json:url", f"{n}: url {s.get('url')!r}")
    if isinstance(upstream.get("versions"), list):
        up_v = {str(v) for v in upstream["versions"]}
        se_v = {str(v) for v in served.get("versions") or []}
        for v in sorted(up_v - se_v):
            out.diff("json:versions-missing", v)
        for v in sorted(se_v - up_v):
            out.diff("json:versions-extra", v)
    if upstream.get("project-status") and upstream["project-status"] != served.get("project-status"):
        out.diff("json:project-status",
                 f"{upstream['project-status']!r} != {served.get('project-status')!r}")


def compare_html(out: Outcome, body: bytes, served: dict[str, Any]) -> None:
    """serve's HTML page (parsed by pypi_simple) against serve's own JSON page."""
    page = pypi_simple.ProjectPage.from_html(out.name, body)
    html_names = Counter(p.filename for p in page.packages)
    for n, c in sorted(html_names.items()):
        if c > 1:
            out.diff("html:duplicate-file", n)
    packages = {p.filename: p for p in page.packages}
    se_files, _ = _by_filename(served.get("files") or [])
    for n in sorted(se_files.keys() - packages.keys()):
        out.diff("html:missing-file", n)
    for n in sorted(packages.keys() - se_files.keys()):
        out.diff("html:extra-file", n)
    for n in sorted(se_files.keys() & packages.keys()):
        s, p = se_files[n], packages[n]
        sha = p.digests.get("sha256")
        if (sha.lower() if sha else None) != _sha(s):
            out.diff("html:sha256", f"{n}: {sha} != {_sha(s)}")
        if (p.is_yanked, p.yanked_reason or None) != _yanked(s.get("yanked")):
            out.diff("html:yanked", f"{n}: {p.yanked_reason!r} != {s.get('yanked')!r}")
        if _requires_python(p.requires_python) != _requires_python(s.get("requires-python")):
            out.diff("html:requires-python",
                     f"{n}: {p.requires_python!r} != {s.get('requires-python')!r}")
        s_meta, s_msha = _metadata(s)
        h_msha = (p.metadata_digests or {}).get("sha256")
        if bool(p.has_metadata) != s_meta or (h_msha.lower() if h_msha else None) != s_msha:
            out.diff("html:core-metadata", f"{n}: {h_msha or p.has_metadata!r} != {s_msha or s_meta!r}")
        if bool(p.provenance_url) != bool(s.get("provenance")):
            out.diff("html:provenance", f"{n}: {p.provenance_url!r} != {s.get('provenance')!r}")
        if _url_name(p.url) != n:
            out.diff("html:url", f"{n}: url {p.url!r}")
    status = (served.get("project-status") or {}).get("status")
    if status is not None and page.status is not None and str(page.status.value) != status:
        out.diff("html:project-status", f"{page.status.value!r} != {status!r}")
    elif (status is None) != (page.status is None):
        out.diff("html:project-status", f"{page.status!r} != {status!r}")


def compare_pypi_json(out: Outcome, upstream: dict[str, Any], doc: dict[str, Any]) -> None:
    listed: set[tuple[str, str | None]] = set()
    for files in (doc.get("releases") or {}).values():
        for f in files:
            sha = (f.get("digests") or {}).get("sha256")
            listed.add((f.get("filename"), sha.lower() if isinstance(sha, str) else None))
    out.pypi_json_files = {n for n, _ in listed}
    wanted = {(f["filename"], _sha(f)) for f in upstream.get("files") or []}
    by_name = dict(wanted)
    for n, sha in sorted(wanted - listed, key=str):
        other = sorted(str(s) for m, s in listed if m == n)
        out.diff("pypi-json:sha256" if other else "pypi-json:missing-file",
                 f"{n}: {sha} != {', '.join(other)}" if other else n)
    for n, _sha256 in sorted(listed - wanted, key=str):
        if n not in by_name:
            out.diff("pypi-json:extra-file", str(n))


# --------------------------------------------------------------------------- one project
def check_project(client: httpx.Client, base: str, transport: RecordingTransport,
                  name: NormalizedName) -> Outcome:
    out = Outcome(name)

    def get(path: str, accept: str | None) -> httpx.Response | None:
        try:
            r = client.get(base + path, headers={"Accept": accept} if accept else {})
        except httpx.HTTPError as e:
            out.diff("http:error", f"{path}: {type(e).__name__}: {e}")
            return None
        if r.status_code >= 500:
            out.fives.append(f"{name}: {path} ({accept or '-'}) HTTP {r.status_code}: "
                             f"{r.text.strip()[:160]}")
        return r

    served_json = get(f"/simple/{name}/", JSON_TYPE)
    served_html = get(f"/simple/{name}/", "text/html")
    served_pypi = get(f"/pypi/{name}/json", None)

    records = transport.records.get(name, [])
    if not records:
        out.diff("harness:no-upstream-fetch", "serve answered without fetching the page")
        return out
    if len(records) > 1:
        out.diff("serve:refetched", f"fetched {len(records)} times within the page TTL")
    rec = records[-1]
    if rec.status == 404:
        out.upstream_missing = True
        for r in (served_json, served_html, served_pypi):
            if r is not None and r.status_code != 404:
                out.diff("http:status", f"{r.request.url.path}: {r.status_code}, upstream 404")
        return out
    if rec.status != 200 or rec.content_type != JSON_TYPE:
        out.diff("upstream:failed", f"PyPI answered {rec.status} {rec.content_type!r}")
        return out
    upstream = json.loads(rec.body)
    out.files = len(upstream.get("files") or [])

    served: dict[str, Any] | None = None
    if served_json is not None:
        if served_json.status_code != 200:
            out.diff("http:status", f"JSON page: HTTP {served_json.status_code}")
        elif served_json.headers.get("content-type", "").split(";")[0] != JSON_TYPE:
            out.diff("http:content-type", f"JSON page: {served_json.headers.get('content-type')!r}")
        else:
            served = served_json.json()
            compare_json(out, upstream, served)
    if served_html is not None and served is not None:
        if served_html.status_code != 200:
            out.diff("http:status", f"HTML page: HTTP {served_html.status_code}")
        else:
            compare_html(out, served_html.content, served)
    if served_pypi is not None:
        if served_pypi.status_code != 200:
            out.diff("http:status", f"/pypi/{name}/json: HTTP {served_pypi.status_code}")
        else:
            compare_pypi_json(out, upstream, served_pypi.json())
    return out


def pypi_json_report(client: httpx.Client, outcome: Outcome) -> tuple[str, int, int] | str:
    """(name, files only PyPI's JSON lists, files only serve's lists), or an error line."""
    try:
        r = client.get(f"{PYPI}/pypi/{outcome.name}/json")
    except httpx.HTTPError as e:
        return f"{outcome.name}: {type(e).__name__}"
    if r.status_code != 200:
        return f"{outcome.name}: HTTP {r.status_code}"
    theirs = {f["filename"] for files in r.json().get("releases", {}).values() for f in files}
    ours = outcome.pypi_json_files or set()
    return (outcome.name, len(theirs - ours), len(ours - theirs))


# --------------------------------------------------------------------------- the test
def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


@pytest.mark.network
@pytest.mark.slow
def test_serve_matches_pypi(tmp_path: Path) -> None:
    started = time.monotonic()
    names = load_projects()
    assert len(names) >= 200, f"{PROJECTS_FILE} lists only {len(names)} projects"

    config = load_config(None, {})
    routed = [n for n in names if config.route(n) is not None]
    assert not routed, f"these names are routed to a non-upstream source: {routed}"
    assert config.upstream.rstrip("/") + "/" == UPSTREAM_SIMPLE, config.upstream
    config = dataclasses.replace(config, page_ttl=PAGE_TTL,
                                 limits=dataclasses.replace(config.limits, page_fetch="thread"))

    try:
        with httpx.Client(verify=ssl_context(), timeout=30.0) as probe:
            r = probe.get(f"{UPSTREAM_SIMPLE}pip/", headers={"Accept": JSON_TYPE})
            r.raise_for_status()
    except httpx.HTTPError as e:
        pytest.fail(f"PyPI is not reachable ({type(e).__name__}: {e}); this test needs "
                    f"{UPSTREAM_SIMPLE} (network marker)", pytrace=False)

    server = build_server(config, cache_dir=tmp_path / "cache", api_url="http://127.0.0.1:9/",
                          token=None)
    original = getattr(server.upstream.pages, "client", None)
    if not isinstance(original, httpx.AsyncClient):
        pytest.fail("server.upstream.pages.client is not an httpx.AsyncClient any more: the "
                    "recording transport needs another hook")
    client, transport = recording_client()
    server.upstream.pages.client = client
    asyncio.run(original.aclose())
    app = create_app(server)

    outcomes: list[Outcome] = []
    report: list[tuple[str, int, int] | str] = []
    with run_app(app) as base, \
            httpx.Client(timeout=LOCAL_TIMEOUT, limits=LOCAL_LIMITS) as local, \
            concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        jobs = [pool.submit(check_project, local, base, transport, n) for n in names]
        outcomes = [j.result() for j in jobs]
        checked = [o for o in outcomes if o.files and o.pypi_json_files is not None]
        subset = [o for o in checked if o.files <= REPORT_MAX_FILES][:REPORT_PROJECTS]
        with httpx.Client(verify=ssl_context(), timeout=REQUEST_TIMEOUT,
                          headers={"User-Agent": USER_AGENT}) as pypi:
            report = list(pool.map(lambda o: pypi_json_report(pypi, o), subset))
    elapsed = time.monotonic() - started

    by_kind: dict[str, list[str]] = defaultdict(list)
    for o in outcomes:
        for kind, detail in o.diffs:
            by_kind[kind].append(detail)
    fives = [f for o in outcomes for f in o.fives]
    differing = [o.name for o in outcomes if o.diffs or o.fives]
    file_diffs = sum(len(v) for k, v in by_kind.items() if k.split(":")[0] in ("json", "html", "pypi-json"))
    reported = [r for r in report if isinstance(r, tuple)]
    rows: list[tuple[str, Any]] = [
        ("projects checked", len(outcomes)),
        ("projects not on PyPI (404 both ways)", sum(o.upstream_missing for o in outcomes)),
        ("upstream files compared", sum(o.files for o in outcomes)),
        ("projects with differences", len(differing)),
        ("total file differences", file_diffs),
        ("5xx answers", len(fives)),
        ("time (s)", f"{elapsed:.1f}"),
    ]
    rows += [(f"differences: {k}", len(v)) for k, v in sorted(by_kind.items())]
    rows += [
        *((f"info: upstream {label}", sum(o.exercised[what] for o in outcomes))
          for what, label in (("yanked", "files yanked"),
                              ("core-metadata", "files with core-metadata"),
                              ("provenance", "files with provenance"),
                              ("project-status", "projects with a project-status"))),
        ("info: wheels given core-metadata by serve only", sum(o.metadata_added for o in outcomes)),
        ("info: upstream retries", len(transport.retries)),
        ("report: PyPI JSON API projects compared", len(reported)),
        ("report: files only in PyPI's /pypi/<name>/json", sum(r[1] for r in reported)),
        ("report: files only in serve's /pypi/<name>/json", sum(r[2] for r in reported)),
    ]
    table = _table(rows)
    details = ["", "PyPI JSON API report (racy, no assertion): "
               + (", ".join(f"{n} -{a}/+{b}" for n, a, b in reported if a or b) or "no differences")]
    details += [f"  {r}" for r in report if isinstance(r, str)]
    print("\n" + table + "\n" + "\n".join(details))
    target = os.environ.get("SPACY_INDEX_CONFORMANCE_REPORT")
    if target:
        Path(target).write_text("# serve vs PyPI conformance\n\n" + table + "\n"
                                + "\n".join(details) + "\n")

    problems = []
    for kind, items in sorted(by_kind.items()):
        projects = sorted({i.split(":", 1)[0] for i in items})
        problems.append(f"{kind}: {len(items)} in {len(projects)} projects, e.g.\n    "
                        + "\n    ".join(items[:EXAMPLES]))
    if fives:
        problems.append(f"5xx: {len(fives)}, e.g.\n    " + "\n    ".join(fives[:EXAMPLES]))
    assert not problems, "serve differs from PyPI:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------- the comparator
_SHA = "ab" * 32
_UPSTREAM_FILE = {
    "filename": "demo-1.0+local-py3-none-any.whl", "url": "https://files.example/demo.whl",
    "hashes": {"sha256": _SHA}, "requires-python": ">=3.8", "size": 123,
    "upload-time": "2024-05-31T16:56:16.699863Z", "yanked": False,
    "core-metadata": {"sha256": "cd" * 32}, "provenance": "https://pypi.org/integrity/x",
}


def _docs() -> tuple[dict[str, Any], dict[str, Any]]:
    upstream = {"meta": {"api-version": "1.4"}, "name": "demo", "versions": ["1.0+local"],
                "project-status": {"status": "archived"}, "files": [dict(_UPSTREAM_FILE)]}
    # the same content, spelled differently: encoded URL, upper-case hex, +00:00, no
    # ``yanked`` key, the old metadata key
    served_file = {**_UPSTREAM_FILE, "url": "../../files/demo-1.0%2Blocal-py3-none-any.whl",
                   "hashes": {"sha256": _SHA.upper()},
                   "upload-time": "2024-05-31T16:56:16.699863+00:00"}
    del served_file["yanked"], served_file["core-metadata"]
    served_file["data-dist-info-metadata"] = {"sha256": "CD" * 32}
    served = {**upstream, "files": [served_file]}
    return upstream, served


@pytest.mark.parametrize(("field", "value", "kind"), [
    (None, None, None),
    ("hashes", {"sha256": "ef" * 32}, "json:sha256"),
    ("yanked", "broken", "json:yanked"),
    ("requires-python", ">=3.9", "json:requires-python"),
    ("size", 124, "json:size"),
    ("upload-time", "2024-05-31T16:56:16Z", "json:upload-time"),
    ("data-dist-info-metadata", {"sha256": "00" * 32}, "json:core-metadata"),
    ("data-dist-info-metadata", False, "json:core-metadata"),
    ("provenance", None, "json:provenance"),
    ("url", "../../files/other.whl", "json:url"),
    ("filename", "demo-1.0.tar.gz", "json:missing-file"),
])
def test_json_comparison_finds_each_field(field: str | None, value: Any, kind: str | None) -> None:
    """Offline: equal content spelled differently is no difference; each changed field is."""
    upstream, served = _docs()
    if field is not None:
        served["files"][0][field] = value
    out = Outcome("demo")
    compare_json(out, upstream, served)
    kinds = {k for k, _ in out.diffs}
    if kind == "json:missing-file":
        assert kinds == {"json:missing-file", "json:extra-file"}, out.diffs
    else:
        assert kinds == ({kind} if kind else set()), out.diffs


def test_json_comparison_versions_status_and_extra_metadata() -> None:
    upstream, served = _docs()
    served["versions"] = ["1.0"]
    served["project-status"] = {"status": "active"}
    out = Outcome("demo")
    compare_json(out, upstream, served)
    assert {k for k, _ in out.diffs} == {"json:versions-missing", "json:versions-extra",
                                         "json:project-status"}
    upstream, served = _docs()
    del upstream["files"][0]["core-metadata"]
    out = Outcome("demo")
    compare_json(out, upstream, served)
    assert (out.diffs, out.metadata_added) == ([], 1)


def test_html_comparison() -> None:
    _, served = _docs()
    sha, meta = _SHA, "cd" * 32
    good = ('<!DOCTYPE html><html><head><meta name="pypi:repository-version" content="1.4">'
            '<meta name="pypi:project-status" content="archived"></head><body>'
            f'<a href="../../files/demo-1.0%2Blocal-py3-none-any.whl#sha256={sha}" '
            f'data-requires-python="&gt;=3.8" data-core-metadata="sha256={meta}" '
            'data-provenance="https://pypi.org/integrity/x">demo-1.0+local-py3-none-any.whl</a>'
            '</body></html>')
    out = Outcome("demo")
    compare_html(out, good.encode(), served)
    assert out.diffs == []
    bad = good.replace("&gt;=3.8", "&gt;=3.9").replace("<a ", '<a data-yanked="" ')
    out = Outcome("demo")
    compare_html(out, bad.encode(), served)
    assert {k for k, _ in out.diffs} == {"html:requires-python", "html:yanked"}


def test_pypi_json_comparison() -> None:
    upstream, _ = _docs()
    entry = {"filename": _UPSTREAM_FILE["filename"], "digests": {"sha256": _SHA},
             "url": "http://x/files/demo.whl"}
    doc = {"releases": {"1.0+local": [entry, {**entry, "url": entry["url"] + f"#sha256={_SHA}"}]}}
    out = Outcome("demo")
    compare_pypi_json(out, upstream, doc)
    assert out.diffs == []
    out = Outcome("demo")
    compare_pypi_json(out, upstream, {"releases": {"1.0": [{**entry, "digests": {"sha256": "0" * 64}}]}})
    assert [k for k, _ in out.diffs] == ["pypi-json:sha256"]
    out = Outcome("demo")
    compare_pypi_json(out, upstream, {"releases": {}})
    assert [k for k, _ in out.diffs] == ["pypi-json:missing-file"]
