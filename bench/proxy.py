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
* ``floor``: ``--no-index --find-links <folder>`` holding the same wheels (``pip download``
  from PyPI once per run, not timed): pip's own floor, local work only; no index can go
  below it, so it says which ratios are within an index's reach on this machine;
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.logs import LogTail, gunicorn_counts, serve_counts
from harness.procfs import Meter, wait_quiet
from harness.report import run_measured, write_results
from harness.servers import spacy_index_serve
from harness.timing import in_order
from harness.util import MB, REPO, VENV_BIN, log
from harness.wheels import cached_model
from peers import PEERS, ensure_peer
from proxy_peers import client_env, devpi_counts, probe_upstream, start_devpi, start_proxpi
from proxy_report import (
    COMPILE_VARIANTS,
    GROUPS,
    INSTALL_VARIANTS,
    PEER_NAMES,
    PYPI,
    SPACY_REQ,
    TOOLS,
    VERSION,
    render,
    summarize,
)

# Running as ``python bench/proxy.py`` puts bench/ first on sys.path, where a bench module may
# share its name with a package spaCy imports (bench/catalogue.py vs ``catalogue``): drop it
# now that the bench modules are imported.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _BENCH]


# --------------------------------------------------------------------------- upstream counts


def gh_bytes(gh, mark: int) -> int:
    return sum(r.bytes_sent for r in list(gh.requests)[mark:] if r.origin in ("web", "objects"))


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


def run_install(variant: str, world: dict, index: str | None, pipeline: str, *, pids: list[int],
                args) -> dict:
    from tests.clients import make_venv

    env = client_env()
    vdir = world["run_dir"] / "venvs" / f"{variant}-{world['rep']}"
    venv = make_venv(vdir, with_spacy=False, env=env)  # pip cloned in; not timed
    where = (["--index-url", index] if index is not None
             else ["--no-index", "--find-links", world["wheelhouse"]])
    argv = [venv.python, "-m", "pip", "install", "--no-cache-dir", "--progress-bar", "off",
            "--disable-pip-version-check", *where, SPACY_REQ, pipeline]
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
    order = in_order(["serve", "direct"], world["rep"])
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


def fill_wheelhouse(run_dir: Path, pipeline: Path) -> Path:
    """A folder with spaCy's closure from PyPI (``pip download``, not timed) and the pipeline."""
    house = run_dir / "wheelhouse"
    house.mkdir()
    subprocess.run([VENV_BIN / "python", "-m", "pip", "download", "--no-cache-dir", "--quiet",
                    "--disable-pip-version-check", "--only-binary", ":all:", "--index-url", PYPI,
                    "-d", house, SPACY_REQ], env=client_env(), check=True,
                   stdin=subprocess.DEVNULL)
    shutil.copy2(pipeline, house / pipeline.name)
    log(f"wheelhouse: {len(list(house.iterdir()))} files for the floor")
    return house


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
        if "floor" in args.groups:
            world["wheelhouse"] = fill_wheelhouse(run_dir, pkg.wheel)
        groups = [g for g in ("serve", "direct", "floor", "devpi", "proxpi") if g in args.groups
                  and (g not in PEER_NAMES or peers.get(g))]
        for rep in range(args.reps):
            world["rep"] = rep
            order = groups[rep % len(groups):] + groups[:rep % len(groups)] if groups else []
            log(f"rep {rep + 1}/{args.reps}: install, order {' → '.join(order)}")
            for g in order:
                if g == "serve":
                    serve_install_group(world, args, runs)
                elif g == "floor":
                    runs["floor"].append(run_install("floor", world, None, "en_core_web_sm",
                                                     pids=[], args=args))
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


# --------------------------------------------------------------------------- main


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
