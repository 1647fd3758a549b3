"""A bounded cache under a Zipf workload: spacy-index serve (``--cache-max-size``, LRU) next to
proxpi (``PROXPI_CACHE_SIZE``, LFU), both capped at a third of the working set (issue 15).

    .venv/bin/python bench/cache.py --quick    # 1 repetition (~30 s)
    .venv/bin/python bench/cache.py            # 3 repetitions, order alternating (~2 min)

Set-up (127.0.0.1 only; every server is stopped by the script, also on SIGTERM):

* 40 distinct wheels (10 projects ``cachebench-00`` .. ``-09`` x 4 versions; not spaCy pipeline
  names, so serve routes them to its upstream), 1-8 MB each (~150 MB together), random
  (incompressible) content stored uncompressed; built once, cached under
  bench/work/cache-wheels/;
* a local **upstream** (a thread of this process): a PEP 503 / PEP 691 simple index (HTML or
  JSON by ``Accept``, sha256 in the fragments / ``hashes``) with the files under
  ``/packages/`` (GET, HEAD, single Range, sendfile). It logs every request with its body
  bytes and User-Agent, which gives both servers' misses and upstream bytes the same way
  (a client that proxpi redirects to the upstream shows up there too);
* ``spacy-index serve --upstream <upstream>/simple/ --cache-max-size CAP --log-level info``
  (an empty FakeGitHub for the pipeline catalog, never asked for a pipeline);
* ``proxpi`` (bench/peers.py's pinned version, gunicorn, 1 worker, 64 threads as in
  bench/proxy.py) with ``PROXPI_INDEX_URL=<upstream>/simple/``, ``PROXPI_CACHE_SIZE=CAP``,
  ``PROXPI_CACHE_DIR``; defaults otherwise (a file not downloaded within 0.9 s is redirected
  to the upstream);
* fresh cache folders for every run; CAP = a third of the working set (``--cap-fraction``).

Workload: a seeded Zipf sequence (s = 1.1) of N requests (600) over the 40 files (popularity
rank shuffled against size, seeded), the same sequence for both servers and every repetition.
The file URLs are read from each server's project pages first (serve: ``/simple/<p>/``,
proxpi: ``/index/<p>/``, PEP 691 JSON; not timed, their upstream requests counted apart).
Then one client process (httpx, 4 worker threads, keep-alive, redirects followed) walks the
sequence in order, each worker taking the next request; every body's size is checked and the
sha256 of each file's first request in the sequence.

Metrics per run: misses = upstream ``GET /packages/`` answered 200 (by the server, or by a
redirected client) and hit rate = 1 - misses / N, the same measure for both (serve's own
access-log hit/miss column is given too); upstream bytes (bodies of ``/packages/`` GETs) and
requests (HEADs included: proxpi HEADs each file before downloading it, to size its
eviction); request latency (request sent to last byte, in the client) p50 / p90 / p99 / max;
the peak size of each cache folder, sampled every 20 ms from a thread (apparent sizes; serve:
``files/`` + ``metadata/``, and ``partial/`` apart; proxpi: complete files, and its
``.proxpi-partial`` downloads apart) against the bound (serve documents "within one file's
size": peak ≤ CAP + the largest file); server CPU. For reference, the hit rates a
sequential LRU and a sequential proxpi-like LFU (hit count, then size) reach on the same
sequence and cap are simulated. Ratios are serve ÷ proxpi, per repetition, then the median.
Results: stdout and bench/results/<date>-cache[-quick].json/.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from urllib.parse import unquote, urljoin

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.procfs import Meter, children, wait_quiet
from harness.report import md_table, run_measured, write_results
from harness.servers import ManagedProcess
from harness.util import MB, REPO, VENV_BIN, fmt_bytes, free_port, log, median, wait_http
from peers import PEERS, ensure_peer
from proxy import GUNICORN_FORMAT, LogTail, gunicorn_counts, serve_counts, server_env

# bench/ first on sys.path shadows packages with a bench module's name (bench/catalogue.py vs
# ``catalogue``); the bench modules are imported, so drop it (as bench/proxy.py does)
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _BENCH]

PROJECTS = 10
VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0")
CLIENT_UA = "cachebench-client"
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
SERVERS = ("serve", "proxpi")


# --------------------------------------------------------------------------- the files
def file_sizes(n: int, lo_mb: float, hi_mb: float) -> list[int]:
    """``n`` sizes from ``lo_mb`` to ``hi_mb``, denser at the small end (lo + (hi-lo)·x^1.5):
    1-8 MB for 40 files sum to ~152 MB."""
    return [int((lo_mb + (hi_mb - lo_mb) * (i / max(1, n - 1)) ** 1.5) * MB) for i in range(n)]


def build_wheels(work: Path, n: int, lo_mb: float, hi_mb: float, seed: int) -> list[dict]:
    """``n`` valid, distinct wheels (random padding, stored uncompressed), memoized on disk."""
    sizes = file_sizes(n, lo_mb, hi_mb)
    key = f"n{n}-{lo_mb:g}-{hi_mb:g}MB-seed{seed}"
    folder = work / "cache-wheels" / key
    manifest = folder / "manifest.json"
    if manifest.exists():
        files = json.loads(manifest.read_text())
        if all(Path(f["path"]).is_file() and Path(f["path"]).stat().st_size == f["size"]
               for f in files):
            return files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t = time.monotonic()
    # sizes are dealt to (project, version) by a seeded shuffle: popularity (below) and size
    # are independent
    order = list(range(n))
    random.Random(seed).shuffle(order)
    files = []
    for i in range(n):
        project = f"cachebench-{i // len(VERSIONS):02d}"
        version = VERSIONS[i % len(VERSIONS)]
        mod = project.replace("-", "_")
        filename = f"{mod}-{version}-py3-none-any.whl"
        path = folder / filename
        target = sizes[order[i]]
        rng = random.Random(seed * 100_003 + i)
        dist = f"{mod}-{version}.dist-info"
        meta = (f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
                f"Summary: bench/cache.py test file {i}\n").encode()
        wheel = b"Wheel-Version: 1.0\nGenerator: bench/cache.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        init = f'"""cachebench file {i}"""\n'.encode()
        overhead = 1200 + 3 * len(dist) + 2 * len(mod)  # headers, central directory, RECORD
        pad = rng.randbytes(max(0, target - overhead - len(meta) - len(wheel) - len(init)))
        record = "".join(
            f"{name},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n"
            for name, data in ((f"{mod}/__init__.py", init), (f"{mod}/data.bin", pad),
                               (f"{dist}/METADATA", meta), (f"{dist}/WHEEL", wheel)))
        record += f"{dist}/RECORD,,\n"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr(f"{mod}/__init__.py", init)
            z.writestr(f"{mod}/data.bin", pad)
            z.writestr(f"{dist}/METADATA", meta)
            z.writestr(f"{dist}/WHEEL", wheel)
            z.writestr(f"{dist}/RECORD", record)
        data = path.read_bytes()
        files.append({"index": i, "project": project, "version": version, "filename": filename,
                      "path": str(path), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
    manifest.write_text(json.dumps(files, indent=1))
    log(f"built {n} wheels ({sum(f['size'] for f in files) / MB:.0f} MB) in "
        f"{time.monotonic() - t:.1f}s under {folder}")
    return files


def zipf_sequence(n_files: int, n_requests: int, s: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded Zipf(s) sequence of file indices; also the rank → file mapping used."""
    rng = random.Random(seed)
    by_rank = list(range(n_files))
    rng.shuffle(by_rank)
    weights = [1 / (k ** s) for k in range(1, n_files + 1)]
    ranks = rng.choices(range(n_files), weights=weights, k=n_requests)
    return [by_rank[r] for r in ranks], by_rank


def simulate(seq: list[int], sizes: list[int], cap: int, policy: str) -> dict:
    """Hit rate and bytes missed of a sequential cache of ``cap`` bytes on ``seq``: ``lru``,
    or ``lfu`` as proxpi evicts (fewest hits first, then smallest; counts die with the entry;
    a file larger than the cap is never kept)."""
    hits = missed = 0
    lru: OrderedDict[int, None] = OrderedDict()
    nhits: dict[int, int] = {}
    used = 0
    for f in seq:
        if f in lru:
            hits += 1
            lru.move_to_end(f)
            nhits[f] = nhits.get(f, 0) + 1
            continue
        missed += sizes[f]
        if policy == "lru":
            lru[f] = None
            used += sizes[f]
            while used > cap and lru:
                old, _ = lru.popitem(last=False)
                used -= sizes[old]
        else:
            victims = sorted(lru, key=lambda k: (nhits.get(k, 0), sizes[k]))
            while used + sizes[f] > cap and victims:
                old = victims.pop(0)
                del lru[old]
                nhits.pop(old, None)
                used -= sizes[old]
            lru[f] = None
            nhits[f] = 0
            used += sizes[f]
    return {"hit_rate": hits / len(seq), "misses": len(seq) - hits, "missed_bytes": missed}


# --------------------------------------------------------------------------- the upstream
class Upstream(http.server.ThreadingHTTPServer):
    """PEP 503/691 simple index of ``files`` + ``/packages/<filename>``; every request logged
    as a dict (label, method, path, status, bytes, ua, range)."""

    daemon_threads = True

    def __init__(self, files: list[dict]) -> None:
        self.files = {f["filename"]: f for f in files}
        self.projects: dict[str, list[dict]] = {}
        for f in files:
            self.projects.setdefault(f["project"], []).append(f)
        self.label = "setup"
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True, name="upstream")

    def __enter__(self) -> Upstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(10)

    def record(self, **kw: object) -> None:
        with self.lock:
            self.requests.append({"label": self.label, "t": time.monotonic(), **kw})

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a server closing keep-alives
            super().handle_error(request, client_address)

    def mark(self, label: str) -> int:
        with self.lock:
            self.label = label
            return len(self.requests)

    def since(self, mark: int) -> list[dict]:
        with self.lock:
            return self.requests[mark:]


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.record(method=self.command, path=self.path, status=status,
                           bytes=0 if self.command == "HEAD" else len(body),
                           ua=self.headers.get("User-Agent", ""), range=None, t0=self.t0)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.t0 = time.monotonic()
        path = unquote(self.path.split("?", 1)[0])
        wants_json = JSON_ACCEPT in (self.headers.get("Accept") or "")
        up = self.server
        if path == "/simple/":
            if wants_json:
                body = json.dumps({"meta": {"api-version": "1.1"},
                                   "projects": [{"name": p} for p in up.projects]}).encode()
                return self._send(200, body, JSON_ACCEPT)
            links = "".join(f'<a href="{p}/">{p}</a>\n' for p in up.projects)
            return self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode(),
                              "text/html")
        m = re.fullmatch(r"/simple/([^/]+)/", path)
        if m:
            files = up.projects.get(m.group(1))
            if files is None:
                return self._send(404, b"not found", "text/plain")
            if wants_json:
                body = json.dumps({
                    "meta": {"api-version": "1.1"}, "name": m.group(1),
                    "versions": [f["version"] for f in files],
                    "files": [{"filename": f["filename"], "url": f"../../packages/{f['filename']}",
                               "hashes": {"sha256": f["sha256"]}, "size": f["size"]}
                              for f in files]}).encode()
                return self._send(200, body, JSON_ACCEPT)
            links = "".join(f'<a href="../../packages/{f["filename"]}#sha256={f["sha256"]}">'
                            f'{f["filename"]}</a>\n' for f in files)
            return self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode(),
                              "text/html")
        m = re.fullmatch(r"/packages/([^/]+)", path)
        f = up.files.get(m.group(1)) if m else None
        if f is None:
            return self._send(404, b"not found", "text/plain")
        size, start, end, status = f["size"], 0, f["size"] - 1, 200
        rng = self.headers.get("Range")
        if rng:
            r = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if r is None or r.group(1) == r.group(2) == "":
                return self._send(416, b"bad range", "text/plain")
            if r.group(1) == "":
                start = max(0, size - int(r.group(2)))
            else:
                start = int(r.group(1))
                end = min(size - 1, int(r.group(2))) if r.group(2) else size - 1
            if start > end:
                return self._send(416, b"bad range", "text/plain")
            status = 206
        count = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(count))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f["sha256"]}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if self.command == "GET":
            self.wfile.flush()
            with open(f["path"], "rb") as fh:
                try:
                    sent = self.connection.sendfile(fh, start, count)
                except OSError:
                    sent = fh.tell() - start  # the peer went away: what went out
                    self.close_connection = True
        self.server.record(method=self.command, path=self.path, status=status, bytes=sent,
                           ua=self.headers.get("User-Agent", ""), range=rng, t0=self.t0)


def upstream_counts(reqs: list[dict]) -> dict:
    files = [r for r in reqs if r["path"].startswith("/packages/")]
    gets = [r for r in files if r["method"] == "GET"]
    by_client = [r for r in gets if r["ua"] == CLIENT_UA]
    whole = Counter(r["path"] for r in gets if r["status"] == 200)
    return {
        "requests": len(reqs),
        "page_requests": sum(1 for r in reqs if r["path"].startswith("/simple/")),
        "file_gets": len(gets),
        "file_gets_200": sum(1 for r in gets if r["status"] == 200),
        "file_gets_206": sum(1 for r in gets if r["status"] == 206),
        "file_heads": sum(1 for r in files if r["method"] == "HEAD"),
        "file_bytes": sum(r["bytes"] for r in gets),
        "client_gets": len(by_client),  # redirected clients (proxpi past its 0.9 s)
        "client_bytes": sum(r["bytes"] for r in by_client),
        "distinct_files": len(whole),
        "most_fetched": whole.most_common(3),
        "uas": dict(Counter(r["ua"].split(" ")[0] for r in reqs)),
    }


# --------------------------------------------------------------------------- disk sampler
class DiskPeak:
    """Peak sizes of a cache folder, by kind, walked every ``interval`` s in a thread.
    ``kind(relpath)`` names the bucket of a file ("files", "metadata", "partial", "other")."""

    def __init__(self, root: Path, kind, *, cap: int, limit: int, interval: float = 0.02) -> None:
        self.root, self.kind, self.interval = root, kind, interval
        self.cap, self.limit = cap, limit
        #: samples of the bounded bucket over the cap / over the limit (cap + one file)
        self.over_cap = self.over_limit = 0
        self.series: list[tuple[float, int, int]] = []  #: (s, bounded, partial)
        self.peak: dict[str, int] = {}
        self.peak_at: dict[str, float] = {}
        self.samples = 0
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="disk-peak")
        self.t0 = time.monotonic()

    def now(self) -> dict[str, int]:
        out: Counter = Counter()
        for dirpath, _dirs, names in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for name in names:
                with contextlib.suppress(OSError):
                    out[self.kind(os.path.join(rel, name))] += os.stat(os.path.join(dirpath, name)).st_size
        return dict(out)

    def _sample(self) -> None:
        cur = self.now()
        buckets = {**cur, "bounded": self.bounded(cur), "all": sum(cur.values())}
        for k, v in buckets.items():
            if v > self.peak.get(k, -1):
                self.peak[k] = v
                self.peak_at[k] = round(time.monotonic() - self.t0, 3)
        self.last = buckets
        self.samples += 1
        self.over_cap += buckets["bounded"] > self.cap
        self.over_limit += buckets["bounded"] > self.limit
        self.series.append((round(time.monotonic() - self.t0, 3), buckets["bounded"],
                            cur.get("partial", 0)))

    @staticmethod
    def bounded(cur: dict[str, int]) -> int:
        return cur.get("files", 0) + cur.get("metadata", 0)  # proxpi: "files" only

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()


def serve_kind(rel: str) -> str:
    parts = Path(rel).parts
    for k in ("files", "metadata", "partial"):
        if k in parts:
            return k
    return "other"  # index.sqlite (+ WAL), locks


def proxpi_kind(rel: str) -> str:
    return "partial" if rel.endswith(".proxpi-partial") else "files"


# --------------------------------------------------------------------------- the servers
def _env() -> dict[str, str]:
    env = server_env()  # no PIP_/UV_/GITHUB_/PROXPI_/SPACY_INDEX_; the CA bundle
    return {k: v for k, v in env.items() if "proxy" not in k.lower()}  # 127.0.0.1 only


@contextlib.contextmanager
def start_serve(cache: Path, upstream: str, cap: int, api_url: str, log_dir: Path):
    """``spacy-index serve`` with ``--cache-max-size`` (harness.servers.spacy_index_serve takes no extra
    arguments); yields (base URL, pids callable, process)."""
    env = _env()
    env["GITHUB_API_URL"] = api_url
    for attempt in range(5):
        port = free_port()
        argv = [str(VENV_BIN / "spacy-index"), "serve", "--host", "127.0.0.1", "--port", str(port),
                "--cache-dir", str(cache), "--upstream", upstream, "--cache-max-size", str(cap),
                "--log-level", "info"]
        mp = ManagedProcess(argv, env=env, log_path=log_dir / f"serve-{port}.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health", timeout=30, proc=mp.proc)
        except RuntimeError:
            mp.stop()
            if attempt == 4:
                raise RuntimeError("spacy-index serve did not start:\n" + mp.tail()) from None
            continue
        break
    try:
        yield url, (lambda: [mp.pid]), mp
    finally:
        mp.stop()


@contextlib.contextmanager
def start_proxpi(venv: Path, cache: Path, upstream: str, cap: int, log_dir: Path):
    """proxpi as bench/proxy.py starts it (gunicorn, 1 worker, 64 threads, access log in
    GUNICORN_FORMAT), pointed at ``upstream`` with a ``cap``-byte file cache."""
    env = _env()
    env.update(PROXPI_INDEX_URL=upstream, PROXPI_CACHE_DIR=str(cache),
               PROXPI_CACHE_SIZE=str(cap), PROXPI_LOGGING_LEVEL="WARNING")
    cache.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mp = ManagedProcess([str(venv / "bin" / "gunicorn"), "--workers", "1", "--threads", "64",
                         "--bind", f"127.0.0.1:{port}", "--timeout", "300", "--access-logfile",
                         "-", "--access-logformat", GUNICORN_FORMAT, "proxpi.server:app"],
                        env=env, log_path=log_dir / f"proxpi-{port}.log")
    try:
        wait_http(url + "/health", timeout=60, proc=mp.proc)
        yield url, (lambda: [mp.pid, *children(mp.pid)]), mp
    finally:
        mp.stop()


def resolve_urls(base: str, page_prefix: str, files: list[dict]) -> list[str]:
    """Each file's URL on the server, from its PEP 691 project pages."""
    import httpx

    want = {f["filename"]: f["index"] for f in files}
    urls: list[str | None] = [None] * len(files)
    with httpx.Client(timeout=60, trust_env=False, headers={"User-Agent": CLIENT_UA}) as c:
        for project in sorted({f["project"] for f in files}):
            page = f"{base}{page_prefix}{project}/"
            r = c.get(page, headers={"Accept": JSON_ACCEPT})
            r.raise_for_status()
            for entry in r.json()["files"]:
                if entry["filename"] in want:
                    urls[want[entry["filename"]]] = urljoin(str(r.url), entry["url"]).split("#")[0]
    missing = [f["filename"] for f in files if urls[f["index"]] is None]
    if missing:
        raise RuntimeError(f"{base}: no link for {missing[:3]} ({len(missing)} missing)")
    return urls  # type: ignore[return-value]


CLIENT_SCRIPT = r'''
import hashlib, json, sys, threading, time
import httpx

spec = json.load(open(sys.argv[1]))
urls, sizes, shas, seq = spec["urls"], spec["sizes"], spec["sha256"], spec["sequence"]
check = set(spec["check"])
deadline = time.monotonic() + spec["timeout"]
lock = threading.Lock()
state = {"next": 0}
out = [None] * len(seq)
start = threading.Barrier(spec["workers"] + 1)

def worker(w):
    with httpx.Client(timeout=120, follow_redirects=True, trust_env=False,
                      headers={"User-Agent": spec["ua"]}) as c:
        start.wait()
        while time.monotonic() < deadline:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(seq):
                return
            f = seq[i]
            h = hashlib.sha256() if i in check else None
            n, status, hops, err, ttfb = 0, 0, 0, None, None
            t0 = time.perf_counter()
            abs0 = time.monotonic()
            try:
                with c.stream("GET", urls[f]) as r:
                    ttfb = time.perf_counter() - t0
                    status, hops = r.status_code, len(r.history)
                    for chunk in r.iter_raw(1 << 20):
                        n += len(chunk)
                        if h is not None:
                            h.update(chunk)
            except Exception as e:
                err = repr(e)[:300]
            t1 = time.perf_counter()
            ok = (err is None and status == 200 and n == sizes[f]
                  and (h is None or h.hexdigest() == shas[f]))
            out[i] = [i, f, w, status, n, round(t0 - T0, 6), round(t1 - t0, 6),
                      round(ttfb or 0.0, 6), hops, ok, err, abs0, time.monotonic()]

threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(spec["workers"])]
for t in threads:
    t.start()
start.wait()
T0 = time.perf_counter()
for t in threads:
    t.join(max(0.0, deadline - time.monotonic()) + 5)
wall = time.perf_counter() - T0
print(json.dumps({"wall": wall, "results": out}))
'''
CLIENT_FIELDS = ("i", "file", "worker", "status", "bytes", "start", "seconds", "ttfb", "redirects",
                 "ok", "error", "t_start", "t_end")


def split_by_upstream(rows: list[list], reqs: list[dict], files: list[dict]) -> list[bool]:
    """For each client row: was an upstream GET of its file in flight during the request (a
    miss, or a request that joined one)? Both clocks are CLOCK_MONOTONIC."""
    spans: dict[int, list[tuple[float, float]]] = {}
    index = {"/packages/" + f["filename"]: f["index"] for f in files}
    for r in reqs:
        f = index.get(unquote(r["path"].split("?", 1)[0]))
        if f is not None and r["method"] == "GET":
            spans.setdefault(f, []).append((r["t0"], r["t"]))
    return [any(u0 <= row[12] and u1 >= row[11] for u0, u1 in spans.get(row[1], ()))
            for row in rows]


def run_client(urls: list[str], files: list[dict], seq: list[int], *, workers: int,
               timeout: float, spec_path: Path) -> dict:
    first: dict[int, int] = {}
    for i, f in enumerate(seq):
        first.setdefault(f, i)
    spec_path.write_text(json.dumps({
        "urls": urls, "sizes": [f["size"] for f in files], "sha256": [f["sha256"] for f in files],
        "sequence": seq, "check": sorted(first.values()), "workers": workers,
        "timeout": timeout, "ua": CLIENT_UA}))
    p = subprocess.run([str(VENV_BIN / "python"), "-c", CLIENT_SCRIPT, str(spec_path)],
                       capture_output=True, text=True, timeout=timeout + 60,
                       env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
    if p.returncode != 0:
        raise RuntimeError(f"client failed ({p.returncode}): {p.stderr[-1500:]}")
    return json.loads(p.stdout)


def longest_over(series: list[tuple[float, int, int]], limit: int) -> float:
    """The longest time (s) the bounded size stayed above ``limit``, from first sample above
    to first sample back under."""
    best, start = 0.0, None
    for t, b, _p in series:
        if b > limit and start is None:
            start = t
        elif b <= limit and start is not None:
            best, start = max(best, t - start), None
    if start is not None and series:
        best = max(best, series[-1][0] - start)
    return round(best, 3)


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of xs."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# --------------------------------------------------------------------------- one run
def run_once(server: str, rep: int, world: dict, args, run_dir: Path) -> dict:
    up: Upstream = world["upstream"]
    files, seq, cap = world["files"], world["sequence"], world["cap"]
    tag = f"{server}-{rep}"
    cache = run_dir / f"cache-{tag}"
    waited, load_before = wait_quiet(max_wait=args.quiet_wait)
    if server == "serve":
        starter = start_serve(cache, up.url + "/simple/", cap, world["gh"].api_url, run_dir)
        prefix, kind = "/simple/", serve_kind
    else:
        starter = start_proxpi(world["proxpi"], cache, up.url + "/simple/", cap, run_dir)
        prefix, kind = "/index/", proxpi_kind
    with starter as (base, pids, mp):
        page_mark = up.mark(f"{tag}-pages")
        urls = resolve_urls(base, prefix, files)
        pages = upstream_counts(up.since(page_mark))
        time.sleep(1.5)  # serve writes its access log in batches, at most 1 s late
        tail = LogTail(mp.log_path)
        tail.skip()
        mark = up.mark(tag)
        meter = Meter(pids())
        with DiskPeak(cache, kind, cap=cap, limit=cap + world["largest"]) as disk:
            t = time.monotonic()
            res = run_client(urls, files, seq, workers=args.workers, timeout=args.timeout,
                             spec_path=run_dir / f"client-{tag}.json")
            wall = time.monotonic() - t
            server_cpu, client_cpu, system, span = meter.stop()
            time.sleep(0.5)  # eviction after the last store runs right behind it
        text = tail.take()
        upc = upstream_counts(up.since(mark))
        up.mark("idle")
    rows = [r for r in res["results"] if r is not None]
    done = [r for r in rows if r[9]]
    lat = [r[6] * 1000 for r in done]
    missed = split_by_upstream(done, up.since(mark), files)
    lat_miss = [x for x, m in zip(lat, missed, strict=True) if m]
    lat_hit = [x for x, m in zip(lat, missed, strict=True) if not m]
    n = len(seq)
    misses = upc["file_gets_200"]
    failed = n - len(done)
    out = {
        "server": server, "rep": rep, "requests": n, "completed": len(rows), "ok": len(done),
        "failed": [dict(zip(CLIENT_FIELDS, r, strict=False)) for r in rows if not r[9]][:5],
        "wall": wall, "client_wall": res["wall"], "quiet_wait": waited, "load_before": load_before,
        "server_cpu": server_cpu, "client_cpu": client_cpu,
        "other_cores": max(0.0, (system - server_cpu - client_cpu) / span),
        "misses": misses, "failed_requests": failed, "hit_rate": 1 - (misses + failed) / n,
        "upstream": upc, "pages": pages,
        "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat, default=float("nan")), "mean_ms": sum(lat) / len(lat) if lat else None,
        "ttfb_p50_ms": pct([r[7] * 1000 for r in done], 0.50),
        "hit_requests": len(lat_hit), "miss_requests": len(lat_miss),
        "hit_p50_ms": pct(lat_hit, 0.50), "hit_p99_ms": pct(lat_hit, 0.99),
        "miss_p50_ms": pct(lat_miss, 0.50), "miss_p99_ms": pct(lat_miss, 0.99),
        "redirected": sum(1 for r in rows if r[8]),
        "client_bytes": sum(r[4] for r in rows),
        "disk_peak": disk.peak, "disk_peak_at": disk.peak_at, "disk_final": disk.last,
        "disk_samples": disk.samples, "samples_over_cap": disk.over_cap,
        "samples_over_limit": disk.over_limit, "disk_series": disk.series,
        "latencies_ms": [round(r[6] * 1000, 2) for r in rows],
    }
    if server == "serve":
        sc = serve_counts(text)
        out["log"] = {"files": sc["files"], "metadata": sc["metadata"],
                      "file_misses": sc["file_misses"], "miss_bytes": sc["miss_bytes"],
                      "slowest": sc["slowest"][:3]}
        hits = sum(v for k, v in sc["files"].items() if k.startswith("hit"))
        out["log_hit_rate"] = hits / n
        out["evictions"] = len(re.findall(r"^evicted ", text, re.M))
    else:
        gc = gunicorn_counts(text)
        out["log"] = {"requests": gc["requests"], "file_redirects": gc["file_redirects"],
                      "slowest": gc["slowest"][:3]}
        out["log_hit_rate"] = None
        out["evictions"] = None
    bounded = disk.peak.get("bounded", 0)
    out["peak_bounded"] = bounded
    # exceptions the server logged (tracebacks' last lines), e.g. proxpi's 500s
    found = re.findall(r"^(\w+(?:Error|Exception)): (.{0,160})", text, re.M)
    out["exceptions"] = dict(Counter(k for k, _ in found))
    out["exception_examples"] = list(dict.fromkeys(f"{k}: {m}" for k, m in found))[:6]
    # the largest size the cache kept for >= 100 ms (5 consecutive samples): a transient
    # overshoot (stores whose eviction is still queued) apart from a bound that does not hold
    vals = [b for _t, b, _p in disk.series]
    out["peak_held_100ms"] = max((min(vals[i:i + 5]) for i in range(max(1, len(vals) - 4))),
                                 default=0)
    out["longest_over_limit_s"] = longest_over(disk.series, cap + world["largest"])
    out["longest_over_cap_s"] = longest_over(disk.series, cap)
    out["bound_ok"] = bounded <= cap + world["largest"]
    out["over_cap"] = bounded - cap
    log(f"  {tag}: {len(done)}/{n} ok in {res['wall']:.1f} s, hit rate {out['hit_rate']:.1%} "
        f"({misses} upstream GETs, {fmt_bytes(upc['file_bytes'])}, {upc['file_heads']} HEADs, "
        f"{out['redirected']} redirected), p50 {out['p50_ms']:.1f} ms p99 {out['p99_ms']:.1f} ms, "
        f"peak cache {fmt_bytes(bounded)} (cap {fmt_bytes(cap)}; all {fmt_bytes(disk.peak.get('all', 0))})")
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
    return out


def measure(args, run_dir: Path) -> dict:
    from tests.fakegithub import FakeGitHub

    files = build_wheels(args.work_dir, args.files, args.min_mb, args.max_mb, args.seed)
    sizes = [f["size"] for f in files]
    total = sum(sizes)
    cap = int(total * args.cap_fraction)
    seq, by_rank = zipf_sequence(len(files), args.requests, args.zipf, args.seed)
    venv, why = ensure_peer("proxpi", args.work_dir / "peers")
    servers = [s for s in args.servers if s != "proxpi" or venv is not None]
    notes = [] if venv is not None else [f"proxpi: not measured: {why}"]
    counts = Counter(seq)
    world = {"files": files, "sequence": seq, "cap": cap, "largest": max(sizes), "proxpi": venv}
    runs: dict[str, list[dict]] = {s: [] for s in servers}
    log(f"{len(files)} files, {fmt_bytes(total)}; cap {fmt_bytes(cap)}; {len(seq)} requests "
        f"over {len(counts)} distinct files, {fmt_bytes(sum(sizes[f] for f in seq))} requested")
    with contextlib.ExitStack() as stack:
        world["gh"] = stack.enter_context(FakeGitHub(load_fixture=False))
        world["upstream"] = stack.enter_context(Upstream(files))
        for rep in range(args.reps):
            order = servers if rep % 2 == 0 else servers[::-1]
            log(f"rep {rep + 1}/{args.reps}: {' → '.join(order)}")
            for s in order:
                runs[s].append(run_once(s, rep, world, args, run_dir))
    return {
        "runs": runs, "notes": notes, "cap": cap, "working_set": total, "largest": max(sizes),
        "files": [{k: f[k] for k in ("filename", "size", "sha256")} for f in files],
        "sequence": seq, "rank_to_file": by_rank,
        "requested_bytes": sum(sizes[f] for f in seq), "distinct_requested": len(counts),
        "params": {"files": args.files, "min_mb": args.min_mb, "max_mb": args.max_mb,
                   "requests": args.requests, "zipf_s": args.zipf, "seed": args.seed,
                   "workers": args.workers, "cap_fraction": args.cap_fraction},
        "simulated": {p: simulate(seq, sizes, cap, p) for p in ("lru", "lfu")},
        "compulsory_misses": len(counts),
        "proxpi_version": " ".join(PEERS["proxpi"]),
        "summary": summarize(runs),
    }


# --------------------------------------------------------------------------- report
METRICS = (  # key, label, format, higher is better
    ("hit_rate", "hit rate (1 - (upstream file downloads + failed requests) / requests)",
     "{:.1%}", True),
    ("misses", "upstream file downloads (GET 200)", "{:.0f}", False),
    ("failed_requests", "failed requests (not 200 with the right body)", "{:.0f}", False),
    ("upstream_bytes", "upstream file bytes", "bytes", False),
    ("upstream_requests", "upstream requests (all: pages, HEADs, GETs)", "{:.0f}", False),
    ("p50_ms", "request latency p50 (ms)", "{:.1f}", False),
    ("p90_ms", "request latency p90 (ms)", "{:.1f}", False),
    ("p99_ms", "request latency p99 (ms)", "{:.1f}", False),
    ("max_ms", "request latency max (ms)", "{:.1f}", False),
    ("hit_p50_ms", "latency p50, requests with no upstream fetch of their file meanwhile (ms)",
     "{:.1f}", False),
    ("hit_p99_ms", "latency p99, same (ms)", "{:.1f}", False),
    ("miss_p50_ms", "latency p50, requests during an upstream fetch of their file (ms)",
     "{:.1f}", False),
    ("miss_p99_ms", "latency p99, same (ms)", "{:.1f}", False),
    ("client_wall", "wall time of the sequence (s)", "{:.2f}", False),
    ("log_hit_rate", "hit rate in the server's own log (serve: cache column; proxpi: none)",
     "{:.1%}", True),
    ("server_cpu", "server CPU (s)", "{:.2f}", False),
    ("peak_bounded", "peak cache size (serve: files/ + metadata/; proxpi: complete files)",
     "bytes", False),
    ("peak_held_100ms", "largest cache size held ≥ 100 ms (5 samples)", "bytes", False),
    ("peak_all", "peak cache folder, all (partial downloads, sqlite included)", "bytes", False),
)


def _value(r: dict, key: str) -> float | None:
    if key == "upstream_bytes":
        return r["upstream"]["file_bytes"]
    if key == "upstream_requests":
        return r["upstream"]["requests"]
    if key == "peak_all":
        return r["disk_peak"].get("all", 0)
    return r.get(key)


def summarize(runs: dict) -> dict:
    out: dict = {}
    for key, *_ in METRICS:
        per = {s: [_value(r, key) for r in rs] for s, rs in runs.items()}
        row = {s: median([v for v in vs if v is not None]) if vs else None for s, vs in per.items()}
        if "serve" in per and "proxpi" in per:
            ratios = [a / b if a is not None and b else None
                      for a, b in zip(per["serve"], per["proxpi"], strict=False)]
            good = [x for x in ratios if x is not None]
            row["ratios"] = ratios
            row["ratio"] = median(good) if good else None
        row["per_rep"] = per
        out[key] = row
    return out


def _fmt(v: float | None, fmt: str) -> str:
    if v is None or v != v:
        return "-"
    return fmt_bytes(v) if fmt == "bytes" else fmt.format(v)


def render(data: dict) -> str:
    s, runs = data["summary"], data["runs"]
    p = data["params"]
    cap, ws = data["cap"], data["working_set"]
    servers = list(runs)
    lines = [
        f"{p['files']} wheels, {p['min_mb']:g}-{p['max_mb']:g} MB, {fmt_bytes(ws)} in all; both "
        f"caches capped at {fmt_bytes(cap)} ({p['cap_fraction']:.3g} of it; largest file "
        f"{fmt_bytes(data['largest'])}). Zipf s = {p['zipf_s']} sequence of {p['requests']} "
        f"requests (seed {p['seed']}, {data['distinct_requested']} distinct files, "
        f"{fmt_bytes(data['requested_bytes'])} requested), {p['workers']} concurrent workers, the "
        f"same sequence for every run; fresh caches per run; {len(next(iter(runs.values()), []))} "
        "repetition(s), order alternating.", ""]
    rows = []
    for key, label, fmt, _hb in METRICS:
        row = s[key]
        cells = [_fmt(row.get(sv), fmt) for sv in servers]
        if "ratio" in row:
            per = " / ".join(_fmt(x, "{:.2f}") for x in row["ratios"])
            cells += [_fmt(row["ratio"], "{:.2f}") + (f" ({per})" if len(row["ratios"]) > 1
                                                      and row["ratio"] is not None else "")]
        rows.append([label, *cells])
    head = ["metric (median of reps)", *("spacy-index serve" if sv == "serve" else "proxpi"
                                         for sv in servers)]
    if "serve" in servers and "proxpi" in servers:
        head.append("serve ÷ proxpi (per rep)")
    lines += [md_table(head, rows), ""]
    sim = data["simulated"]
    lines.append(
        f"Reference, the same sequence and cap played sequentially: LRU {sim['lru']['hit_rate']:.1%} "
        f"hit rate ({fmt_bytes(sim['lru']['missed_bytes'])} missed), proxpi-like LFU "
        f"{sim['lfu']['hit_rate']:.1%} ({fmt_bytes(sim['lfu']['missed_bytes'])}); an unbounded "
        f"cache {1 - data['compulsory_misses'] / p['requests']:.1%} "
        f"({data['compulsory_misses']} compulsory misses).")
    lines.append("")
    # bound
    brows = []
    for sv in servers:
        for r in runs[sv]:
            pk = r["disk_peak"]
            brows.append([f"{sv} #{r['rep'] + 1}", fmt_bytes(r["peak_bounded"]),
                          ("+" if r["over_cap"] >= 0 else "-") + fmt_bytes(abs(r["over_cap"])), fmt_bytes(r["peak_held_100ms"]),
                          fmt_bytes(pk.get("partial", 0)), fmt_bytes(pk.get("all", 0)),
                          fmt_bytes(r["disk_final"].get("bounded" if sv == "serve" else "files", 0)),
                          "yes" if r["bound_ok"] else "**NO**",
                          f"{r['samples_over_cap'] / max(1, r['disk_samples']):.0%} / "
                          f"{r['samples_over_limit'] / max(1, r['disk_samples']):.0%}",
                          f"{r['longest_over_cap_s'] * 1000:.0f} / "
                          f"{r['longest_over_limit_s'] * 1000:.0f}",
                          str(r["evictions"]) if r["evictions"] is not None else "-",
                          str(r["disk_samples"])])
    lines += [f"Bound: cap {fmt_bytes(cap)} + largest file {fmt_bytes(data['largest'])} = "
              f"{fmt_bytes(cap + data['largest'])} (serve documents \"within one file's size\"; "
              "sampled every 20 ms, apparent sizes):", "",
              md_table(["run", "peak cached", "peak - cap", "held ≥ 100 ms", "peak partial", "peak folder (all)",
                        "after the run", "≤ cap + 1 file", "samples over cap / over cap + 1 file",
                        "longest over cap / over cap + 1 file (ms)",
                        "evictions (serve log)", "samples"],
                       brows), ""]
    # per run
    rrows = []
    for sv in servers:
        for r in runs[sv]:
            u = r["upstream"]
            extra = (f"log: {', '.join(f'{k} {v}' for k, v in sorted(r['log']['files'].items()))}"
                     if sv == "serve" else
                     f"gunicorn: {', '.join(f'{k} {v}' for k, v in sorted(r['log']['requests'].items()))}")
            rrows.append([f"{sv} #{r['rep'] + 1}", f"{r['ok']}/{r['requests']}",
                          f"{r['hit_rate']:.1%}", str(u["file_gets_200"]), str(u["file_heads"]),
                          str(u["client_gets"]), fmt_bytes(u["file_bytes"]), str(r["miss_requests"]),
                          f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}", f"{r['client_wall']:.1f}",
                          f"{r['server_cpu']:.1f}", f"{r['other_cores']:.2f}",
                          str(r["pages"]["requests"]), extra])
    lines += ["Per run (upstream = the local index's own request log; \"redirected\" = GETs by a "
              "client that proxpi sent to the upstream):", "",
              md_table(["run", "ok", "hit rate", "upstream GET 200", "upstream HEAD",
                        "redirected GETs", "upstream file bytes", "requests during a fetch",
                        "p50 / p99 ms", "wall s",
                        "server CPU s", "other load (cores)", "page-resolution upstream requests",
                        "server's own log"], rrows), ""]
    fails = [(sv, r) for sv in servers for r in runs[sv] if r["ok"] != r["requests"]]
    for sv, r in fails:
        how = Counter(f"HTTP {x['status']}" if x["status"] else (x["error"] or "?")[:80]
                      for x in r["failed"])
        exc = ", ".join(f"{k} x{v}" for k, v in sorted(r["exceptions"].items())) or "none"
        lines.append(f"- {sv} #{r['rep'] + 1}: {r['requests'] - r['ok']} request(s) failed "
                     f"(first 5: {', '.join(f'{k} x{v}' for k, v in how.items())}); exceptions in "
                     f"its log: {exc}; e.g. "
                     + "; ".join(f"`{x[:110]}`" for x in r["exception_examples"][:3]))
    lines.append(f"Peer: {data['proxpi_version']} (gunicorn, 1 worker, 64 threads; defaults but "
                 "PROXPI_INDEX_URL, PROXPI_CACHE_DIR, PROXPI_CACHE_SIZE). Latency = request "
                 "sent to last body byte in the client (httpx, one keep-alive connection per "
                 "worker); every body's size is checked, and the sha256 of each file's first "
                 "request.")
    for note in data["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition instead of 3")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--requests", type=int, default=600, help="length of the sequence (600)")
    ap.add_argument("--files", type=int, default=40, help="distinct files (40)")
    ap.add_argument("--min-mb", type=float, default=1.0)
    ap.add_argument("--max-mb", type=float, default=8.0)
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s (1.1)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--workers", type=int, default=4, help="concurrent client workers (4)")
    ap.add_argument("--cap-fraction", type=float, default=1 / 3,
                    help="cache cap as a fraction of the working set (1/3)")
    ap.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    ap.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    ap.add_argument("--quiet-wait", type=float, help="max seconds to wait for a quiet machine "
                    "before each run (default 5, quick 2)")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (logs, caches)")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.quiet_wait is None:
        args.quiet_wait = 2.0 if args.quick else 5.0
    data = run_measured("cache", args, measure)
    text = (f"## A bounded cache under a Zipf workload ({'quick' if args.quick else 'full'}, "
            f"{args.reps} repetition{'s' if args.reps > 1 else ''})\n\n" + render(data))
    print(text)
    write_results("cache", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
