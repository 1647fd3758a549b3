"""The two caches under test as processes on 127.0.0.1 (serve, proxpi) and the client process that
plays the workload against them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urljoin

from cache_workload import (
    CLIENT_UA,
    JSON_ACCEPT,
)
from harness.env import server_env
from harness.logs import GUNICORN_FORMAT
from harness.procfs import children
from harness.servers import ManagedProcess, spacy_index_serve
from harness.util import VENV_BIN, free_port, wait_http


def _env() -> dict[str, str]:
    env = server_env()  # no PIP_/UV_/GITHUB_/PROXPI_/SPACY_INDEX_; the CA bundle
    return {k: v for k, v in env.items() if "proxy" not in k.lower()}  # 127.0.0.1 only


@contextlib.contextmanager
def start_serve(cache: Path, upstream: str, cap: int, api_url: str, log_dir: Path):
    """``spacy-index serve --cache-max-size CAP --log-level info``; yields (base URL, pids
    callable, process)."""
    with spacy_index_serve(cache_dir=cache, upstream=upstream, api_url=api_url, token=None,
                           log_dir=log_dir, log_level="info",
                           extra_args=["--cache-max-size", str(cap)]) as handle:
        yield handle.url, (lambda: [handle.pid]), handle.process


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
