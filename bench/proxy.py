"""Install and lock spaCy + a pipeline from the real PyPI through a caching index: spacy-index
serve (cold and warm) next to PyPI direct, devpi-server and proxpi.

    .venv/bin/python bench/proxy.py --quick    # 1 repetition (~5 min)
    .venv/bin/python bench/proxy.py            # 3 repetitions, interleaved (~15-17 min)

Unlike the other benches this one talks to the real PyPI (spaCy's closure, ~45 wheels,
~100 MB), so its wall times include the network; every ratio is taken between runs made
side by side in one repetition. GitHub is not used: ``en_core_web_sm-3.8.0`` (a real pipeline
wheel from tests/wheels.py, padded to 12 MB) is published on a FakeGitHub (127.0.0.1) for
serve, and lies in a local static folder (tests.clients.serve_directory) that stands in for
the GitHub download URL everywhere else.

Install: ``pip install --no-cache-dir --index-url <index> 'spacy>=3.8,<3.9' <pipeline>`` into
a fresh venv (pip cloned in before the clock starts; tests.clients.make_venv) with:

* ``serve-cold``: ``spacy-index serve`` (subprocess, ``--log-level info``), empty cache dir,
  ``<pipeline>`` = ``en_core_web_sm`` (routed to the fake GitHub); the first request also loads
  the pipeline catalog from the fake (one release: milliseconds);
* ``serve-warm``: the same server and cache right after (pages still within ``page_ttl``);
* ``serve-restart``: a new serve process on the same cache dir (files on disk, pages gone
  from memory: what a warm server sees once its pages expired);
* ``direct``: PyPI itself, ``<pipeline>`` = ``en_core_web_sm @ <static URL>`` (what
  ``spacy download`` runs);
* ``devpi-cold`` / ``devpi-warm``: devpi-server (fresh ``devpi-init`` per repetition), its
  PyPI mirror ``/root/pypi/+simple/``, pipeline by direct URL; a fresh mirror's first page
  also loads PyPI's whole project list (~40 MB, 10+ s, once per server), so one untimed
  request for an unrelated project does that first and its time is reported apart;
* ``proxpi-cold`` / ``proxpi-warm``: proxpi under gunicorn (1 worker, 64 threads, as its
  README asks; defaults otherwise, i.e. a file not downloaded within 0.9 s is redirected to
  PyPI), fresh cache per repetition, pipeline by direct URL.

Each install is also timed up to pip's ``Installing collected packages`` line (the
resolve+download phase, what an index can shorten; the rest is unpacking and byte-compiling).

Lock: ``pip-compile --generate-hashes`` and ``uv pip compile --generate-hashes`` of the same two
requirements (no client cache), through serve (fresh server: ``cold``, then ``warm``) and
straight from PyPI with ``--find-links <static folder>`` for the pipeline (``direct``).

Counts: serve's access log (``GET /files/<f> 200 <n>B hit|miss <s>s``): file and ``.metadata``
hits/misses and the bytes of misses (= taken from upstream), whole files sent (non-metadata
``/files/`` 200s), the slowest requests; with ``--serve-log-level debug`` also serve's httpx
lines (one per upstream request, by host and status, so page revalidations show as 304s; at
info serve does not log them); bytes the fake GitHub sent on its download origins; devpi's
``reading remote`` lines; proxpi's redirects to PyPI and request times (gunicorn access log).
The upstream's spaCy page is probed once (validators, PEP 658 metadata), as a mirror or an
egress proxy may serve other pages than pypi.org does. Clients see no pip
config (``PIP_CONFIG_FILE=/dev/null``, no ``PIP_*``/``UV_*``) and trust the machine's CA bundle
explicitly (``PIP_CERT``/``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``), as do the servers.
Results: stdout and bench/results/<date>-proxy[-quick].json/.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.env import CA_BUNDLE, server_env, tls_env
from harness.logs import GUNICORN_FORMAT, LogTail, gunicorn_counts, serve_counts
from harness.procfs import Meter, children, wait_quiet
from harness.report import md_table, run_measured, write_results
from harness.servers import ManagedProcess, spacy_index_serve
from harness.util import MB, REPO, VENV_BIN, fmt_bytes, free_port, log, median, wait_http
from harness.wheels import cached_model
from peers import PEERS, ensure_peer

# Running as ``python bench/proxy.py`` puts bench/ first on sys.path, where a bench module may
# share its name with a package spaCy imports (bench/catalogue.py vs ``catalogue``): drop it
# now that the bench modules are imported.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _BENCH]

VERSION = "3.8.0"
SPACY_REQ = "spacy>=3.8,<3.9"
PYPI = "https://pypi.org/simple/"
INSTALL_VARIANTS = {
    "serve-cold": "pip → spacy-index serve, cold (empty cache)",
    "serve-warm": "pip → spacy-index serve, warm (same server + cache)",
    "serve-restart": "pip → spacy-index serve, warm cache, restarted",
    "direct": "pip → PyPI + pipeline by URL",
    "devpi-cold": "pip → devpi-server, cold",
    "devpi-warm": "pip → devpi-server, warm",
    "proxpi-cold": "pip → proxpi, cold",
    "proxpi-warm": "pip → proxpi, warm",
}
GROUPS = ("serve", "direct", "devpi", "proxpi", "pip-compile", "uv")
TOOLS = {"pip-compile": "pip-compile --generate-hashes", "uv": "uv pip compile --generate-hashes"}
COMPILE_VARIANTS = {"serve-cold": "through serve, cold", "serve-warm": "through serve, warm",
                    "direct": "PyPI + --find-links"}
PEER_NAMES = {"devpi": "devpi-server", "proxpi": "proxpi"}
DEVPI_PRELOAD = "six"  # not in spaCy's closure

DEVPI_REMOTE_RE = re.compile(r"reading remote: URL\('https?://([^/']+)")


# --------------------------------------------------------------------------- environments


def client_env() -> dict[str, str]:
    """pip / pip-tools / uv: no config file, no PIP_*/UV_* from the machine, no cache."""
    from tests.clients import clean_env

    return tls_env(clean_env())


# --------------------------------------------------------------------------- log readers


def upstream_summary(up: dict) -> str:
    """'pypi.org 200x45, 304x3; files.pythonhosted.org 200x40' from serve_counts' upstream."""
    by_host: dict[str, Counter] = {}
    for key, n in up.items():
        host, _method, status = key.split(" ")
        by_host.setdefault(host, Counter())[status] += n
    return "; ".join(f"{h} " + ", ".join(f"{s}x{n}" for s, n in sorted(c.items()))
                     for h, c in sorted(by_host.items())) or "none"


def gh_bytes(gh, mark: int) -> int:
    return sum(r.bytes_sent for r in list(gh.requests)[mark:] if r.origin in ("web", "objects"))


def probe_upstream() -> dict:
    """What the upstream looks like from here (a mirror or proxy may differ from pypi.org):
    validators and PEP 658/714 metadata on the spaCy page, JSON and HTML."""
    import ssl

    import httpx

    ctx = ssl.create_default_context(cafile=CA_BUNDLE if Path(CA_BUNDLE).exists() else None)
    out: dict = {}
    try:
        with httpx.Client(verify=ctx, trust_env=False, timeout=60) as c:
            for kind, accept in (("json", "application/vnd.pypi.simple.v1+json"),
                                 ("html", "text/html")):
                t = time.monotonic()
                r = c.get(PYPI + "spacy/", headers={"Accept": accept})
                info = {"status": r.status_code, "seconds": round(time.monotonic() - t, 3),
                        "bytes": len(r.content), "etag": r.headers.get("etag"),
                        "last_modified": r.headers.get("last-modified"),
                        "cache_control": r.headers.get("cache-control")}
                if kind == "json" and r.status_code == 200:
                    files = r.json().get("files", [])
                    info["files"] = len(files)
                    info["with_core_metadata"] = sum(
                        1 for f in files if f.get("core-metadata") or f.get("dist-info-metadata"))
                elif r.status_code == 200:
                    info["with_core_metadata"] = len(re.findall(
                        r"data-(?:core|dist-info)-metadata", r.text))
                out[kind] = info
    except httpx.HTTPError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


# --------------------------------------------------------------------------- peers
@contextlib.contextmanager
def start_devpi(venv: Path, serverdir: Path, log_dir: Path):
    """devpi-server with a fresh server dir; yields (index URL, pids callable)."""
    env = server_env()
    bin_ = venv / "bin"
    subprocess.run([str(bin_ / "devpi-init"), "--serverdir", str(serverdir), "--root-passwd",
                    "bench"], env=env, check=True, capture_output=True, timeout=180)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mp = ManagedProcess([str(bin_ / "devpi-server"), "--serverdir", str(serverdir), "--host",
                         "127.0.0.1", "--port", str(port)], env=env,
                        log_path=log_dir / f"devpi-{port}.log")
    try:
        wait_http(url + "/+api", timeout=120, proc=mp.proc)
        # The first page of a fresh devpi mirror also loads PyPI's whole project list (~40 MB,
        # 10+ s): a once-per-server cost, done here for an unrelated project and timed apart.
        import httpx

        t = time.monotonic()
        httpx.get(f"{url}/root/pypi/+simple/{DEVPI_PRELOAD}/", timeout=300, trust_env=False,
                  headers={"Accept": "text/html"}).raise_for_status()
        mp.preload = time.monotonic() - t  # type: ignore[attr-defined]
        yield f"{url}/root/pypi/+simple/", (lambda: [mp.pid, *children(mp.pid)]), mp
    finally:
        mp.stop()


@contextlib.contextmanager
def start_proxpi(venv: Path, cache: Path, log_dir: Path):
    env = server_env()
    env.update(PROXPI_INDEX_URL=PYPI, PROXPI_CACHE_DIR=str(cache), PROXPI_LOGGING_LEVEL="WARNING")
    cache.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mp = ManagedProcess([str(venv / "bin" / "gunicorn"), "--workers", "1", "--threads", "64",
                         "--bind", f"127.0.0.1:{port}", "--timeout", "300", "--access-logfile",
                         "-", "--access-logformat", GUNICORN_FORMAT, "proxpi.server:app"], env=env, log_path=log_dir / f"proxpi-{port}.log")
    try:
        wait_http(url + "/health", timeout=60, proc=mp.proc)
        yield f"{url}/index/", (lambda: [mp.pid, *children(mp.pid)]), mp
    finally:
        mp.stop()


def devpi_counts(text: str) -> dict:
    """devpi-server's log: requests, and remote reads (upstream fetches) by host."""
    remote = Counter(DEVPI_REMOTE_RE.findall(text))
    return {"requests": len(re.findall(r"\[req\d+\] (?:GET|HEAD) ", text)),
            "remote_reads": dict(remote)}


# --------------------------------------------------------------------------- one client run
def timed(argv: list, env: dict, *, pids: list[int], timeout: float, cwd: Path | None = None,
          quiet_wait: float = 4.0, marker: str | None = None) -> dict:
    """Run ``argv`` once, timed; output (stdout + stderr) read line by line as it comes, so
    that ``marker`` (pip's ``Installing collected packages``) splits the wall time into the
    part an index can influence (resolve + download) and the local install."""
    import threading

    waited, load = wait_quiet(max_wait=quiet_wait)
    own = [os.getpid()]  # FakeGitHub and the static server are threads of this process
    meter = Meter([*pids, *own])
    t = time.monotonic()
    proc = subprocess.Popen([os.fspath(a) for a in argv], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, errors="replace")
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    seen: float | None = None
    out: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if seen is None and marker is not None and line.startswith(marker):
                seen = time.monotonic() - t
            out.append(line)
        proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - t
    server_cpu, client_cpu, system, _ = meter.stop()
    proc.output = "".join(out)  # type: ignore[attr-defined]
    return {"proc": proc, "wall": wall, "fetch": seen, "server_cpu": server_cpu,
            "client_cpu": client_cpu,
            "other_cores": max(0.0, (system - server_cpu - client_cpu) / wall),
            "quiet_wait": waited, "load_before": load}


def run_install(variant: str, world: dict, index: str, pipeline: str, *, pids: list[int],
                args) -> dict:
    from tests.clients import make_venv

    env = client_env()
    vdir = world["run_dir"] / "venvs" / f"{variant}-{world['rep']}"
    venv = make_venv(vdir, with_spacy=False, env=env)  # pip cloned in; not timed
    argv = [venv.python, "-m", "pip", "install", "--no-cache-dir", "--progress-bar", "off",
            "--disable-pip-version-check", "--index-url", index, SPACY_REQ, pipeline]
    mark = len(world["gh"].requests)
    static_mark = len(world["static"].requests)
    r = timed(argv, venv._env(env), pids=pids, timeout=args.timeout, quiet_wait=args.quiet_wait,
              marker="Installing collected packages")
    proc = r.pop("proc")
    out = {**r, "ok": proc.returncode == 0, "gh_bytes": gh_bytes(world["gh"], mark),
           "static_requests": len(world["static"].requests) - static_mark, "note": ""}
    if out["ok"]:
        installed = venv.installed()
        out["spacy"] = installed.get("spacy")
        out["pipeline"] = installed.get("en-core-web-sm")
        out["packages"] = len(installed)
        out["set"] = sorted(f"{k}=={v}" for k, v in installed.items())
        if out["pipeline"] != VERSION or not (out["spacy"] or "").startswith("3.8."):
            out["ok"] = False
            out["note"] = f"installed spacy {out['spacy']}, pipeline {out['pipeline']}"
    else:
        out["note"] = f"exit {proc.returncode}: " + proc.output.strip()[-600:]
    shutil.rmtree(vdir, ignore_errors=True)
    fetch = f", resolve+download {out['fetch']:.1f} s" if out.get("fetch") else ""
    log(f"  {variant}: {'ok' if out['ok'] else 'FAILED'} {out['wall']:.1f} s{fetch}"
        + (f" (spacy {out.get('spacy')}, {out.get('packages')} dists)" if out["ok"] else
           f": {out['note'][-300:]}"))
    return out


def run_compile(tool: str, variant: str, world: dict, index: str, *, pids: list[int],
                args) -> dict:
    from tests.clients import uv_bin

    work = world["run_dir"] / "compile" / f"{tool}-{variant}-{world['rep']}"
    work.mkdir(parents=True)
    req = work / "requirements.in"
    req.write_text(f"{SPACY_REQ}\nen_core_web_sm\n")
    extra = [] if variant.startswith("serve") else ["--find-links", world["static"].url + "/"]
    out_txt = work / "requirements.txt"
    if tool == "pip-compile":
        argv = [VENV_BIN / "python", "-m", "piptools", "compile", "--quiet", "--generate-hashes",
                "--strip-extras", "--no-header", "--cache-dir", work / "piptools-cache",
                "--index-url", index, *extra, "-o", out_txt, req]
    else:
        argv = [uv_bin(), "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
                "--no-cache", "--python", VENV_BIN / "python", "--index-url", index, *extra,
                "-o", out_txt, req]
    mark = len(world["gh"].requests)
    static_mark = len(world["static"].requests)
    r = timed(argv, client_env(), pids=pids, timeout=args.timeout, cwd=work,
              quiet_wait=args.quiet_wait)
    proc = r.pop("proc")
    static_reqs = world["static"].requests[static_mark:]
    out = {**r, "ok": proc.returncode == 0, "gh_bytes": gh_bytes(world["gh"], mark),
           "static_wheel_gets": sum(1 for x in static_reqs
                                    if x.startswith("GET ") and ".whl" in x and " 200" in x),
           "note": ""}
    if out["ok"]:
        text = out_txt.read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)
        out["pins"] = len(pins)
        out["hashes"] = len(re.findall(r"--hash=sha256:", text))
        out["spacy"] = next((v for n, v in pins if n.lower() == "spacy"), None)
        pipeline = next((v for n, v in pins if n.lower().replace("_", "-") == "en-core-web-sm"), None)
        out["pipeline_hash"] = world["pkg"].sha256 in text
        if pipeline != VERSION or not out["pipeline_hash"]:
            out["ok"] = False
            out["note"] = f"pipeline pinned {pipeline}, its sha256 present: {out['pipeline_hash']}"
    else:
        out["note"] = f"exit {proc.returncode}: " + proc.output.strip()[-600:]
    log(f"  {tool} {variant}: {'ok' if out['ok'] else 'FAILED'} {out['wall']:.1f} s"
        + (f" ({out.get('pins')} pins, {out.get('hashes')} hashes)" if out["ok"] else
           f": {out['note'][-300:]}"))
    return out


# --------------------------------------------------------------------------- groups
def serve_install_group(world: dict, args, runs: dict) -> None:
    cache = world["run_dir"] / f"serve-cache-{world['rep']}"
    with spacy_index_serve(cache_dir=cache, upstream=PYPI, api_url=world["gh"].api_url, token=None,
                           log_dir=world["run_dir"], log_level=args.serve_log_level) as s:
        tail = LogTail(s.process.log_path)
        tail.skip()
        for variant in ("serve-cold", "serve-warm"):
            r = run_install(variant, world, f"{s.url}/simple/", "en_core_web_sm",
                            pids=s.pids(), args=args)
            r["serve"] = serve_counts(tail.take())
            runs[variant].append(r)
    if "serve-restart" in runs:
        with spacy_index_serve(cache_dir=cache, upstream=PYPI, api_url=world["gh"].api_url,
                               token=None, log_dir=world["run_dir"],
                               log_level=args.serve_log_level) as s:
            tail = LogTail(s.process.log_path)
            tail.skip()
            r = run_install("serve-restart", world, f"{s.url}/simple/", "en_core_web_sm",
                            pids=s.pids(), args=args)
            r["serve"] = serve_counts(tail.take())
            runs["serve-restart"].append(r)


def peer_install_group(peer: str, world: dict, args, runs: dict) -> None:
    venv = world["peers"].get(peer)
    if venv is None:
        return
    d = world["run_dir"] / f"{peer}-{world['rep']}"
    try:
        starter = (start_devpi(venv, d, world["run_dir"]) if peer == "devpi"
                   else start_proxpi(venv, d, world["run_dir"]))
        with starter as (index, pids, mp):
            tail = LogTail(mp.log_path)
            tail.skip()
            for variant in (f"{peer}-cold", f"{peer}-warm"):
                r = run_install(variant, world, index, world["pipeline_url"], pids=pids(),
                                args=args)
                r["log"] = (gunicorn_counts if peer == "proxpi" else devpi_counts)(tail.take())
                if peer == "devpi":
                    r["log"]["preload_seconds"] = getattr(mp, "preload", None)
                runs[variant].append(r)
    except Exception as e:  # a peer that cannot start is reported, not fatal
        note = f"{type(e).__name__}: {str(e)[:400]}"
        log(f"  {peer} failed: {note}")
        for variant in (f"{peer}-cold", f"{peer}-warm"):
            if len(runs[variant]) <= world["rep"]:
                runs[variant].append({"ok": False, "wall": None, "note": note})
    finally:
        shutil.rmtree(d, ignore_errors=True)


def compile_group(tool: str, world: dict, args, runs: dict) -> None:
    order = ["serve", "direct"] if world["rep"] % 2 == 0 else ["direct", "serve"]
    for part in order:
        if part == "direct":
            runs[tool]["direct"].append(run_compile(tool, "direct", world, PYPI, pids=[], args=args))
            continue
        cache = world["run_dir"] / f"serve-compile-{tool}-{world['rep']}"
        with spacy_index_serve(cache_dir=cache, upstream=PYPI, api_url=world["gh"].api_url,
                               token=None, log_dir=world["run_dir"],
                               log_level=args.serve_log_level) as s:
            tail = LogTail(s.process.log_path)
            tail.skip()
            for variant in ("serve-cold", "serve-warm"):
                r = run_compile(tool, variant, world, f"{s.url}/simple/", pids=s.pids(), args=args)
                r["serve"] = serve_counts(tail.take())
                runs[tool][variant].append(r)
        shutil.rmtree(cache, ignore_errors=True)


def measure(args, run_dir: Path) -> dict:
    from tests.clients import serve_directory
    from tests.fakegithub import FakeGitHub
    from tests.wheels import meta_archive

    pkg = cached_model(args.work_dir, name="core_web_sm", version=VERSION,
                       pad_bytes=int(args.pad_mb * MB))
    log(f"wheel {pkg.wheel.name}: {pkg.wheel.stat().st_size / MB:.1f} MB")
    upstream = probe_upstream()
    log(f"upstream {PYPI}: {upstream}")
    peers: dict[str, Path | None] = {}
    notes: list[str] = []
    for peer, name in PEER_NAMES.items():
        if peer in args.groups:
            venv, why = ensure_peer(name, args.work_dir / "peers")
            peers[peer] = venv
            if venv is None:
                notes.append(f"{name}: not measured: {why}")
    variants = [v for v in INSTALL_VARIANTS if v.split("-")[0] in args.groups
                and (v.split("-")[0] not in PEER_NAMES or peers.get(v.split("-")[0]))]
    if args.no_restart and "serve-restart" in variants:
        variants.remove("serve-restart")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    tools = [t for t in TOOLS if t in args.groups]
    cruns: dict[str, dict[str, list[dict]]] = {t: {v: [] for v in COMPILE_VARIANTS} for t in tools}
    (run_dir / "files").mkdir()
    shutil.copy2(pkg.wheel, run_dir / "files" / pkg.wheel.name)
    with contextlib.ExitStack() as stack:
        gh = stack.enter_context(FakeGitHub(load_fixture=False, archive=meta_archive([pkg]),
                                            signed_url_ttl=3600))
        gh.add_release(f"{pkg.project}-{pkg.version}", {pkg.wheel.name: pkg.wheel.read_bytes()})
        static = stack.enter_context(serve_directory(run_dir / "files"))
        world = {"gh": gh, "static": static, "pkg": pkg, "run_dir": run_dir, "peers": peers,
                 "pipeline_url": f"{pkg.project} @ {static.url}/{pkg.wheel.name}"}
        groups = [g for g in ("serve", "direct", "devpi", "proxpi") if g in args.groups
                  and (g not in PEER_NAMES or peers.get(g))]
        for rep in range(args.reps):
            world["rep"] = rep
            order = groups[rep % len(groups):] + groups[:rep % len(groups)] if groups else []
            log(f"rep {rep + 1}/{args.reps}: install, order {' → '.join(order)}")
            for g in order:
                if g == "serve":
                    serve_install_group(world, args, runs)
                elif g == "direct":
                    runs["direct"].append(run_install("direct", world, PYPI, world["pipeline_url"],
                                                      pids=[], args=args))
                else:
                    peer_install_group(g, world, args, runs)
            for tool in tools:
                log(f"rep {rep + 1}/{args.reps}: {TOOLS[tool]}")
                compile_group(tool, world, args, cruns)
    return {"install": runs, "compile": cruns, "notes": notes, "wheel": pkg.wheel.name,
            "upstream_probe": upstream, "serve_log_level": args.serve_log_level,
            "wheel_bytes": pkg.wheel.stat().st_size, "requirements": [SPACY_REQ, "en_core_web_sm"],
            "peer_versions": {p: " ".join(PEERS[n]) for p, n in PEER_NAMES.items() if p in peers},
            "summary": summarize(runs, cruns)}


# --------------------------------------------------------------------------- summary/report
def _ratios(rs: list[dict], base: list[dict], key: str = "wall") -> list[float | None]:
    return [(a[key] / b[key]) if a.get("ok") and b.get("ok") and a.get(key) and b.get(key)
            else None for a, b in zip(rs, base, strict=False)]


def summarize(runs: dict, cruns: dict) -> dict:
    out: dict = {"install": {}, "compile": {}}
    base = runs.get("direct", [])
    for v, rs in runs.items():
        ok = [r["wall"] for r in rs if r.get("ok")]
        ratios = _ratios(rs, base) if base else []
        good = [x for x in ratios if x is not None]
        fetch = [r["fetch"] for r in rs if r.get("ok") and r.get("fetch")]
        fratios = _ratios(rs, base, "fetch") if base else []
        fgood = [x for x in fratios if x is not None]
        out["install"][v] = {"wall": median(ok) if ok else None, "ok": len(ok), "reps": len(rs),
                             "ratios": ratios, "ratio": median(good) if good else None,
                             "fetch": median(fetch) if fetch else None, "fetch_ratios": fratios,
                             "fetch_ratio": median(fgood) if fgood else None}
    for tool, by in cruns.items():
        out["compile"][tool] = {}
        for v, rs in by.items():
            ok = [r["wall"] for r in rs if r.get("ok")]
            ratios = _ratios(rs, by["direct"])
            good = [x for x in ratios if x is not None]
            out["compile"][tool][v] = {"wall": median(ok) if ok else None, "ok": len(ok),
                                       "reps": len(rs), "ratios": ratios,
                                       "ratio": median(good) if good else None}
    return out


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**MISSED**")


def render(data: dict) -> str:
    s = data["summary"]
    runs, cruns = data["install"], data["compile"]
    lines: list[str] = []
    # goals
    si = s["install"]
    goals = []

    def ratio_goal(label: str, v: dict | None, limit: float) -> None:
        r = v["ratio"] if v else None
        goals.append([label, f"≤ {limit:.2f}x", _f(r) + "x" if r is not None else "-",
                      verdict(None if r is None else r <= limit)])

    ratio_goal("install, serve warm ÷ direct", si.get("serve-warm"), 0.80)
    ratio_goal("install, serve cold ÷ direct", si.get("serve-cold"), 1.15)
    for v in ("serve-warm", "serve-cold"):
        fr = (si.get(v) or {}).get("fetch_ratio")
        if fr is not None:
            goals.append([f"(for reference) {v}: resolve+download phase ÷ direct's", "-",
                          f"{fr:.2f}x", "-"])
    warm = runs.get("serve-warm", [])
    if warm:
        moved = [(r["serve"]["file_misses"] + r["serve"]["metadata_misses"], r["serve"]["miss_bytes"],
                  r["gh_bytes"]) for r in warm if "serve" in r]
        worst = max((m[1] + m[2] for m in moved), default=None)
        misses = max((m[0] for m in moved), default=None)
        goals.append(["install, serve warm: file bytes from upstream", "0",
                      f"{fmt_bytes(worst)} ({misses} misses)" if worst is not None else "-",
                      verdict(None if worst is None else worst == 0 and misses == 0)])
    for tool, by in s["compile"].items():
        ratio_goal(f"{tool}, serve warm ÷ direct", by.get("serve-warm"), 1.00)
        whole = [r["serve"]["whole_files"] for v in ("serve-cold", "serve-warm")
                 for r in cruns[tool][v] if "serve" in r]
        goals.append([f"{tool}, whole files through serve (cold + warm)", "0",
                      str(max(whole)) if whole else "-",
                      verdict(None if not whole else max(whole) == 0)])
    lines += ["### Goals", "", md_table(["goal", "target", "measured (median of per-rep ratios)",
                                         "verdict"], goals), ""]
    # install table
    nrep = max((len(rs) for rs in runs.values()), default=0)
    rows = []
    for v, rs in runs.items():
        sv = si[v]
        cells = [(_f(r["wall"], "{:.1f}") if r.get("ok") else "fail") for r in rs]
        cells += [""] * (nrep - len(cells))
        rows.append([INSTALL_VARIANTS[v], *cells, _f(sv["wall"], "{:.1f}"),
                     " / ".join(_f(x) for x in sv["ratios"]) if v != "direct" else "1",
                     _f(sv["ratio"]) if v != "direct" else "1",
                     _f(sv.get("fetch"), "{:.1f}"),
                     (" / ".join(_f(x) for x in sv.get("fetch_ratios", [])) + " → "
                      + _f(sv.get("fetch_ratio"))) if v != "direct" else "1",
                     *_cpu_cells(rs)])
    if rows:
        lines += [f"### `pip install --no-cache-dir '{SPACY_REQ}' en_core_web_sm` into a new venv",
                  "", md_table(["variant", *[f"rep {i + 1} s" for i in range(nrep)], "median s",
                                "÷ direct per rep", "÷ direct (median)",
                                "resolve+download s", "÷ direct per rep → median", "pip CPU s",
                                "server CPU s", "other load (cores)"], rows), ""]
    direct = [r for r in runs.get("direct", []) if r.get("ok")]
    if direct:
        share = median([r["client_cpu"] / r["wall"] for r in direct])
        local = [1 - r["fetch"] / r["wall"] for r in direct if r.get("fetch")]
        lines += [f"pip's own CPU time is {share:.0%} of a direct install's wall time (median)"
                  + (f"; {median(local):.0%} of that wall time comes after pip printed "
                     "`Installing collected packages` (unpacking, byte-compiling: local work "
                     "no index changes)" if local else "")
                  + ". Resolve+download = from the start to that line; it is the part an index "
                  "can shorten, and the part least disturbed by other load.", ""]
    # what serve moved
    srows = []
    for v in ("serve-cold", "serve-warm", "serve-restart"):
        for i, r in enumerate(runs.get(v, [])):
            c = r.get("serve")
            if not c:
                continue
            sl = c["slowest"][0] if c["slowest"] else None
            srows.append([f"{v} #{i + 1}", _fmt_counter(c["files"]), _fmt_counter(c["metadata"]),
                          fmt_bytes(c["miss_bytes"]), fmt_bytes(r["gh_bytes"]),
                          _fmt_counter(c["pages"]),
                          f"{c['request_seconds']:.2f} / {c['page_seconds']:.2f}",
                          upstream_summary(c["upstream"]) if c["upstream"] else "not logged",
                          f"`{sl['request']}` {sl['seconds']:.3f} s ({sl['answer']})" if sl else "-"])
    if srows:
        lines += ["What serve did per install (its access log; upstream = its httpx log lines). "
                  "Bytes of misses = bodies streamed while downloading (hits go out by sendfile "
                  "and log 0 B); s in requests = sum of the logged request durations:", "",
                  md_table(["run", "/files (cache)", ".metadata (cache)", "bytes of misses",
                            "fake GitHub bytes", "pages (status)", "s in requests / pages",
                            "upstream requests (status)", "slowest request"], srows), ""]
    prows = []
    for v in ("devpi-cold", "devpi-warm", "proxpi-cold", "proxpi-warm"):
        for i, r in enumerate(runs.get(v, [])):
            lg = r.get("log")
            if not lg:
                continue
            if v.startswith("devpi"):
                pre = lg.get("preload_seconds")
                prows.append([f"{v} #{i + 1}", str(lg["requests"]),
                              _fmt_counter(lg["remote_reads"]), "-", "-",
                              f"project list preload {pre:.1f} s (untimed)"
                              if pre is not None and v.endswith("cold") else ""])
            else:
                sl = lg["slowest"][0] if lg["slowest"] else None
                prows.append([f"{v} #{i + 1}", _fmt_counter(lg["requests"]), "-",
                              str(lg["file_redirects"]), f"{lg['request_seconds']:.2f}",
                              f"slowest `{sl['request']}` {sl['seconds']:.3f} s ({sl['answer']})"
                              if sl else ""])
    if prows:
        lines += ["The peers, from their logs (devpi: `reading remote` lines = upstream fetches; "
                  "proxpi: gunicorn access log; a file not downloaded within "
                  "PROXPI_DOWNLOAD_TIMEOUT = 0.9 s is redirected to PyPI):", "",
                  md_table(["run", "requests", "upstream reads (host)", "file redirects",
                            "s in requests", "note"], prows), ""]
    sets = {v: {tuple(r["set"]) for r in rs if r.get("ok") and "set" in r} for v, rs in runs.items()}
    all_sets = set().union(*sets.values()) if sets else set()
    if len(all_sets) > 1:
        lines.append(f"Note: the installed sets differ between runs ({len(all_sets)} distinct sets).")
    spacy_v = sorted({r.get("spacy") for rs in runs.values() for r in rs if r.get("spacy")})
    # compile
    for tool, by in cruns.items():
        rows = []
        for v, rs in by.items():
            sv = s["compile"][tool][v]
            cells = [(_f(r["wall"], "{:.1f}") if r.get("ok") else "fail") for r in rs]
            whole = [str(r["serve"]["whole_files"]) if "serve" in r else
                     f"{r.get('static_wheel_gets', 0)} (static)" for r in rs]
            rows.append([COMPILE_VARIANTS[v], *cells, _f(sv["wall"], "{:.1f}"),
                         " / ".join(_f(x) for x in sv["ratios"]) if v != "direct" else "1",
                         _f(sv["ratio"]) if v != "direct" else "1", " / ".join(whole),
                         " / ".join(fmt_bytes(r.get("gh_bytes", 0)) for r in rs),
                         *_cpu_cells(rs)])
        n = max(len(rs) for rs in by.values())
        lines += [f"### `{TOOLS[tool]}` of `{SPACY_REQ}` + `en_core_web_sm`", "",
                  md_table(["variant", *[f"rep {i + 1} s" for i in range(n)], "median s",
                            "÷ direct per rep", "÷ direct (median)",
                            "whole files fetched (per rep)", "fake GitHub bytes", "client CPU s",
                            "server CPU s", "other load (cores)"], rows), ""]
        slow = [(r["serve"]["slowest"][0], v, i) for v, rs in by.items() for i, r in enumerate(rs)
                if r.get("serve", {}).get("slowest")]
        if slow:
            worst = max(slow, key=lambda x: x[0]["seconds"])
            lines.append(f"Slowest serve request ({worst[1]} #{worst[2] + 1}): "
                         f"`{worst[0]['request']}` {worst[0]['seconds']:.3f} s "
                         f"({worst[0]['answer']}).")
            lines.append("")
    # failures and load
    fails = [(v, i, r["note"]) for v, rs in runs.items() for i, r in enumerate(rs) if not r.get("ok")]
    fails += [(f"{t} {v}", i, r["note"]) for t, by in cruns.items() for v, rs in by.items()
              for i, r in enumerate(rs) if not r.get("ok")]
    for v, i, note in fails:
        lines.append(f"- FAILED {v} #{i + 1}: {note[-300:]}")
    loads = [r.get("other_cores", 0) for rs in runs.values() for r in rs if r.get("wall")]
    loads += [r.get("other_cores", 0) for by in cruns.values() for rs in by.values() for r in rs
              if r.get("wall")]
    probe = data.get("upstream_probe", {})
    pj, ph = probe.get("json", {}), probe.get("html", {})
    if pj or ph:
        lines.append(
            f"Upstream `{PYPI}` as seen from this machine (`/simple/spacy/`): JSON "
            f"{pj.get('status')} {fmt_bytes(pj.get('bytes', 0))} in {pj.get('seconds')} s, "
            f"ETag {pj.get('etag') or 'none'}, Last-Modified {pj.get('last_modified') or 'none'}, "
            f"Cache-Control {pj.get('cache_control') or 'none'}, files with PEP 658 metadata "
            f"{pj.get('with_core_metadata')}/{pj.get('files')}; HTML: "
            f"{ph.get('with_core_metadata')} data-core-metadata attributes. Without metadata on "
            "the pages, clients that go straight to it download whole wheels to resolve (pip, "
            "pip-compile) or read them by Range (uv), and serve reads each wheel's metadata by "
            "Range once and serves it as PEP 658; without validators serve re-reads a page in "
            "full when it expires.")
        lines.append("")
    if data.get("serve_log_level") != "debug":
        lines.append("Serve ran with `--log-level info`: its upstream requests are not logged "
                     "(`--serve-log-level debug` lists them).")
    lines.append(
        f"Pipeline: {data['wheel']} ({fmt_bytes(data['wheel_bytes'])}); spaCy resolved: "
        f"{', '.join(spacy_v) or '?'}. Peers: {'; '.join(data['peer_versions'].values()) or 'none'}. "
        "Every variant starts from a venv holding only pip (not timed); no client cache; "
        "wall times include the real PyPI (through this machine's TLS-inspecting proxy), so "
        "only the per-repetition ratios are comparable across runs. Other machine load during "
        f"the timed runs: median {median(loads) if loads else float('nan'):.2f} cores, max "
        f"{max(loads, default=0):.2f}.")
    for note in data["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines)


def _cpu_cells(rs: list[dict]) -> list[str]:
    """Medians of client CPU, server CPU and other machine load over the runs that finished."""
    done = [r for r in rs if r.get("wall")]
    if not done:
        return ["-", "-", "-"]
    return [f"{median([r['client_cpu'] for r in done]):.1f}",
            f"{median([r['server_cpu'] for r in done]):.1f}",
            f"{median([r['other_cores'] for r in done]):.2f}"]


def _fmt_counter(c: dict) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition instead of 3")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--pad-mb", type=float, default=12.0, help="pipeline wheel size in MB (12)")
    ap.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS),
                    help="what to run (default: all)")
    ap.add_argument("--no-restart", action="store_true", help="leave out serve-restart")
    ap.add_argument("--serve-log-level", default="info", choices=["info", "debug"],
                    help="serve's --log-level; debug adds one line per upstream request (httpx), "
                    "counted in the report, at some cost in serve's speed")
    ap.add_argument("--timeout", type=float, default=600.0, help="per client run, seconds")
    ap.add_argument("--quiet-wait", type=float, help="max seconds to wait for a quiet machine "
                    "before each timed run (default 2, quick 1)")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (logs, caches)")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.quiet_wait is None:
        args.quiet_wait = 1.0 if args.quick else 2.0
    data = run_measured("proxy", args, measure)
    text = (f"## spaCy + a pipeline through a caching index ({'quick' if args.quick else 'full'}, "
            f"{args.reps} repetition{'s' if args.reps > 1 else ''}, interleaved)\n\n" + render(data))
    print(text)
    write_results("proxy", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
