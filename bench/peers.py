"""50 clients request one uncached pipeline wheel through a caching index server: spacy-index
serve next to devpi-server, proxpi and pypiserver.

    .venv/bin/python bench/peers.py            # 100 MB wheel, 3 repetitions
    .venv/bin/python bench/peers.py --quick    # 20 MB wheel, 3 repetitions

Set-up (127.0.0.1 only; every server is stopped at the end):

* a FakeGitHub holding ``en_core_web_md-3.8.50`` (a real pipeline wheel, padded);
* ``spacy-index build`` of it on a static server: the upstream *simple index* the peers
  proxy (its links go to the fake GitHub, like the real index's links go to GitHub);
* the servers, each with an empty cache per repetition:
  - ``spacy-index serve`` (the installed CLI, ``GITHUB_API_URL`` = the fake);
  - ``devpi-server`` with a mirror index (``type=mirror``, ``mirror_url`` = the static index);
  - ``proxpi`` (``PROXPI_INDEX_URL`` = the static index) under gunicorn, 1 worker, 64 threads
    (proxpi keeps its cache state per process, so its README asks for threads);
  - ``pypiserver`` with ``--fallback-url`` = the static index (it has no proxy cache: names
    it does not hold are redirected).
  The peers are installed from PyPI (pinned below) into their own venvs under
  bench/work/peers/ on first use (``uv venv`` + ``uv pip install``); one that cannot be set up
  is reported with the reason.
* clients: one separate process running 50 concurrent asyncio/httpx clients; each reads the
  project page from the server, takes the wheel's link and downloads it (following
  redirects, as pip does). The page is warmed first; the file is not.

Metrics: upstream downloads (GETs of the blob on the fake GitHub's objects origin), upstream
bytes, the clients' wall time, and the server's peak RSS (sum of VmRSS over the server's
process tree, sampled every 20 ms); medians of the repetitions. Results: stdout and
bench/results/<date>-peers[-quick].json/.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.procfs import children, status_kib
from harness.report import md_table, run_measured, write_results
from harness.servers import ManagedProcess, spacy_index_serve
from harness.util import MB, REPO, VENV_BIN, fmt_bytes, free_port, log, median, wait_http
from harness.wheels import cached_model

VERSION = "3.8.50"
CLIENTS = 50
PEERS = {
    "devpi-server": ["devpi-server==6.20.3"],
    "proxpi": ["proxpi==1.3.1", "gunicorn==27.0.1"],
    "pypiserver": ["pypiserver==2.4.2"],
}
SERVERS = ("spacy-index serve", *PEERS)

CLIENT_SCRIPT = r'''
import asyncio, hashlib, json, sys, time
from html.parser import HTMLParser
from urllib.parse import urljoin
import httpx

page_url, filename, n, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

class Links(HTMLParser):
    def __init__(self):
        super().__init__(); self.hrefs = []
    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href", ""))

async def one(client, i):
    r = await client.get(page_url, headers={"Accept": "text/html"})
    r.raise_for_status()
    p = Links(); p.feed(r.text)
    href = next(h for h in p.hrefs if h.split("#")[0].rsplit("/", 1)[-1] == filename)
    url = urljoin(str(r.url), href.split("#")[0])
    h = hashlib.sha256() if i == 0 else None
    size = 0
    async with client.stream("GET", url) as resp:
        status = resp.status_code
        async for chunk in resp.aiter_raw(1 << 20):
            size += len(chunk)
            if h is not None:
                h.update(chunk)
    return {"status": status, "bytes": size, "sha256": h.hexdigest() if h else None,
            "url": url if i == 0 else None}

async def main():
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=True,
                                 trust_env=False) as client:
        t = time.monotonic()
        res = await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(n)),
                                                    return_exceptions=True), timeout)
        wall = time.monotonic() - t
    out = [r if isinstance(r, dict) else {"error": repr(r)[:300]} for r in res]
    print(json.dumps({"wall": wall, "results": out}))

asyncio.run(main())
'''


class TreeRss:
    """Peak of the summed VmRSS of ``pid`` and its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tree(self) -> list[int]:
        out, todo = [], [self.pid]
        while todo and len(out) < 200:
            p = todo.pop()
            out.append(p)
            todo += children(p)
        return out

    def now(self) -> int:
        total = 0
        for p in self.tree():
            with contextlib.suppress(OSError, KeyError):
                total += status_kib(p, "VmRSS")["VmRSS"]
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def ensure_peer(name: str, base: Path) -> tuple[Path | None, str]:
    """The venv of a peer (installed from PyPI once), or None and why not."""
    from tests.clients import clean_env, uv_bin

    venv = base / name
    stamp = venv / ".installed"
    want = " ".join(PEERS[name])
    if stamp.exists() and stamp.read_text().strip() == want:
        return venv, ""
    shutil.rmtree(venv, ignore_errors=True)
    env = clean_env(cache_dir=base / ".cache")
    try:
        for argv in ([uv_bin(), "venv", "--quiet", "--python", str(VENV_BIN / "python"), str(venv)],
                     [uv_bin(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                      *PEERS[name]]):
            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                return None, f"install failed: {(p.stderr or p.stdout).strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"install failed: {e}"
    stamp.write_text(want + "\n")
    return venv, ""


@contextlib.contextmanager
def start_server(name: str, venv: Path | None, *, static_url: str, gh, cache: Path, project: str,
                 log_dir: Path, empty_url: str):
    """Yields (project page URL, root pid)."""
    cache.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("PIP_", "UV_", "GITHUB_", "PROXPI_")) and "proxy" not in k.lower()}
    if name == "spacy-index serve":
        with spacy_index_serve(cache_dir=cache, upstream=empty_url + "/simple/",
                               api_url=gh.api_url, token=None, log_dir=log_dir) as s:
            yield f"{s.url}/simple/{project}/", s.pid
        return
    assert venv is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bin_ = venv / "bin"
    if name == "devpi-server":
        subprocess.run([str(bin_ / "devpi-init"), "--serverdir", str(cache), "--root-passwd", "bench",
                        "--no-root-pypi"], env=env, check=True, capture_output=True, timeout=120)
        argv = [str(bin_ / "devpi-server"), "--serverdir", str(cache), "--host", "127.0.0.1",
                "--port", str(port), "--threads", "64"]
        health, page = url + "/+api", f"{url}/root/spacy/+simple/{project}/"
    elif name == "proxpi":
        env.update(PROXPI_INDEX_URL=static_url + "/simple/", PROXPI_CACHE_DIR=str(cache),
                   PROXPI_LOGGING_LEVEL="WARNING")
        argv = [str(bin_ / "gunicorn"), "--workers", "1", "--threads", "64", "--bind",
                f"127.0.0.1:{port}", "--timeout", "300", "proxpi.server:app"]
        health, page = url + "/health", f"{url}/index/{project}/"
    else:  # pypiserver
        argv = [str(bin_ / "pypi-server"), "run", "-p", str(port), "-i", "127.0.0.1",
                "--fallback-url", static_url + "/simple/", str(cache)]
        health, page = url + "/", f"{url}/simple/{project}/"
    mp = ManagedProcess(argv, env=env, log_path=log_dir / f"{name}-{port}.log")
    try:
        wait_http(health, timeout=60, proc=mp.proc)
        if name == "devpi-server":
            import httpx

            r = httpx.post(url + "/+login", json={"user": "root", "password": "bench"},
                           trust_env=False, timeout=30)
            r.raise_for_status()
            token = r.json()["result"]["password"]
            auth = base64.b64encode(f"root:{token}".encode()).decode()
            r = httpx.put(url + "/root/spacy", headers={"X-Devpi-Auth": auth,
                                                        "Accept": "application/json"},
                          json={"type": "mirror", "mirror_url": static_url + "/simple/"},
                          trust_env=False, timeout=30)
            r.raise_for_status()
        yield page, mp.pid
    finally:
        mp.stop()
        if mp.proc.returncode not in (0, -15, 143, None):
            log(f"{name} exited {mp.proc.returncode}: {mp.tail(500)}")


def run_once(name: str, venv, world: dict, run_dir: Path, tag: str, timeout: float,
             clients: int = CLIENTS) -> dict:
    import httpx

    gh, pkg = world["gh"], world["pkg"]
    with start_server(name, venv, static_url=world["static"], gh=gh, cache=run_dir / f"cache-{tag}",
                      project=pkg.normalized_name, log_dir=run_dir, empty_url=world["empty"]) as (page, pid):
        r = httpx.get(page, headers={"Accept": "text/html"}, follow_redirects=True, timeout=120,
                      trust_env=False)  # warm the page (and serve's catalog), not the file
        r.raise_for_status()
        rss = TreeRss(pid)
        idle = rss.now()
        mark = len(gh.requests)
        with rss:
            proc = subprocess.run([str(VENV_BIN / "python"), "-c", CLIENT_SCRIPT, page,
                                   pkg.wheel.name, str(clients), str(timeout)],
                                  capture_output=True, text=True, timeout=timeout + 60)
        reqs = list(gh.requests)[mark:]
    if proc.returncode != 0:
        return {"ok": False, "note": proc.stderr.strip()[-400:]}
    data = json.loads(proc.stdout)
    res = data["results"]
    size = pkg.wheel.stat().st_size
    good = [x for x in res if x.get("status") == 200 and x.get("bytes") == size]
    first = res[0]
    blob_gets = [x for x in reqs if x.origin == "objects" and x.method == "GET"]
    return {
        "ok": len(good) == clients and first.get("sha256") == pkg.sha256,
        "complete": len(good), "wall": data["wall"],
        "upstream_downloads": sum(1 for x in blob_gets if x.status in (200, 206)),
        "upstream_gets": len(blob_gets),
        "upstream_bytes": sum(x.bytes_sent for x in reqs if x.origin in ("web", "objects")),
        "web_redirects": sum(1 for x in reqs if x.origin == "web" and x.status in (301, 302, 303)),
        "heads": sum(1 for x in reqs if x.method == "HEAD"),
        "peak_rss_kib": rss.peak, "idle_rss_kib": idle,
        "file_url": first.get("url"),
        "note": "" if len(good) == clients else
        f"{clients - len(good)} client(s) failed, e.g. {next((x for x in res if x not in good), {})}"[:400],
    }


def measure(args, run_dir: Path) -> dict:
    from tests.clients import serve_directory
    from tests.fakegithub import FakeGitHub
    from tests.wheels import meta_archive

    pad = int((args.pad_mb or (20 if args.quick else 100)) * MB)
    pkg = cached_model(args.work_dir, name="core_web_md", version=VERSION, pad_bytes=pad)
    log(f"wheel {pkg.wheel.name}: {pkg.wheel.stat().st_size / MB:.1f} MB")
    venvs: dict[str, Path | None] = {"spacy-index serve": None}
    notes: dict[str, str] = {}
    for name in PEERS:
        if name not in args.servers:
            continue
        log(f"setting up {name}")
        venvs[name], why = ensure_peer(name, args.work_dir / "peers")
        if venvs[name] is None:
            notes[name] = why
    servers = [s for s in SERVERS if s in args.servers and (s == "spacy-index serve" or venvs.get(s))]
    runs: dict[str, list[dict]] = {s: [] for s in servers}
    with contextlib.ExitStack() as stack:
        gh = stack.enter_context(FakeGitHub(load_fixture=False, archive=meta_archive([pkg]),
                                            signed_url_ttl=3600))
        gh.add_release(f"{pkg.project}-{pkg.version}", {pkg.wheel.name: pkg.wheel.read_bytes()})
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("GITHUB_", "SPACY_INDEX_"))}
        env.update(GITHUB_API_URL=gh.api_url, SPACY_INDEX_CACHE_DIR=str(run_dir / "build-cache"))
        subprocess.run([str(VENV_BIN / "spacy-index"), "build", "--out", str(run_dir / "public"), "-q"],
                       env=env, check=True, capture_output=True, timeout=300)
        static = stack.enter_context(serve_directory(run_dir / "public"))
        (run_dir / "empty").mkdir()
        empty = stack.enter_context(serve_directory(run_dir / "empty"))
        world = {"gh": gh, "pkg": pkg, "static": static.url, "empty": empty.url}
        for rep in range(args.reps):
            for name in servers:
                log(f"rep {rep + 1}/{args.reps}: {name}")
                try:
                    r = run_once(name, venvs.get(name), world, run_dir, f"{rep}-{name.split()[0]}",
                                 args.timeout, args.clients)
                except Exception as e:  # a peer that misbehaves is reported, not fatal
                    r = {"ok": False, "note": f"{type(e).__name__}: {str(e)[:300]}"}
                runs[name].append(r)
                log(f"  {'ok' if r['ok'] else 'FAILED'}: " + (
                    f"{r['upstream_downloads']} upstream download(s), "
                    f"{fmt_bytes(r['upstream_bytes'])}, {r['wall']:.1f} s, peak RSS "
                    f"{r['peak_rss_kib'] / 1024:.0f} MiB" if "wall" in r else r["note"]))
    summary = {}
    for name, rs in runs.items():
        done = [r for r in rs if "wall" in r]
        summary[name] = {
            "ok": bool(done) and all(r["ok"] for r in rs),
            **{k: (median([r[k] for r in done]) if done else None)
               for k in ("upstream_downloads", "upstream_bytes", "wall", "peak_rss_kib",
                         "idle_rss_kib", "complete", "web_redirects")},
            "downloads_per_run": [r.get("upstream_downloads") for r in rs],
            "note": next((r["note"] for r in rs if r.get("note")), ""),
        }
    return {"runs": runs, "summary": summary, "notes": notes, "servers": servers,
            "wheel": pkg.wheel.name, "wheel_bytes": pkg.wheel.stat().st_size, "clients": args.clients,
            "versions": {k: " ".join(v) for k, v in PEERS.items()}}


def render(data: dict) -> str:
    s = data["summary"]
    ours = s.get("spacy-index serve")
    rows = []
    for name in data["servers"]:
        r = s[name]
        if r["wall"] is None:
            rows.append([name, "fails", "-", "-", "-", "-", r["note"][:120]])
            continue
        ratio = "-"
        if ours and ours["wall"] is not None and name != "spacy-index serve":
            ratio = (f"{ours['upstream_bytes'] / r['upstream_bytes']:.2f} / "
                     f"{ours['peak_rss_kib'] / r['peak_rss_kib']:.2f} / {ours['wall'] / r['wall']:.2f}")
        rows.append([name, f"{r['upstream_downloads']:.0f} ({'/'.join(str(x) for x in r['downloads_per_run'])})",
                     fmt_bytes(r["upstream_bytes"]), f"{r['complete']:.0f}/{data['clients']}",
                     f"{r['wall']:.1f}",
                     f"{r['peak_rss_kib'] / 1024:.0f} (idle {r['idle_rss_kib'] / 1024:.0f})",
                     ratio + ("" if r["ok"] else f"; {r['note'][:120]}")])
    lines = [md_table(["server", "upstream downloads (per run)", "upstream bytes",
                       "clients complete", "wall s", "peak RSS MiB",
                       "serve ÷ this (bytes / RSS / time)"], rows), ""]
    lines.append(f"{data['clients']} concurrent clients, one uncached {fmt_bytes(data['wheel_bytes'])} "
                 f"wheel ({data['wheel']}); upstream = the fake GitHub's download origins. "
                 "Peer versions: " + "; ".join(data["versions"].values()) + ".")
    for name, why in data["notes"].items():
        lines.append(f"- {name}: not measured: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 MB wheel instead of 100 MB")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=CLIENTS, help=f"concurrent clients ({CLIENTS})")
    ap.add_argument("--pad-mb", type=float, help="wheel padding in MB (default 100, quick 20)")
    ap.add_argument("--tag", default="", help="suffix for the result files (e.g. -450mb)")
    ap.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    ap.add_argument("--timeout", type=float, default=600.0, help="per client run, seconds")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    data = run_measured("peers", args, measure)
    text = (f"## {args.clients} clients, one uncached file ({'quick' if args.quick else 'full'}, "
            f"median of {args.reps})\n\n" + render(data))
    print(text)
    write_results(f"peers{args.tag}", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
