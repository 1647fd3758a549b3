"""Benchmark ``spacy-index serve`` against its goals, in one run, next to nginx.

    .venv/bin/python bench/serve.py            # full: 200 MB / 500 MB files, 2,000 requests/level
    .venv/bin/python bench/serve.py --quick    # 50 MB files, 1,000 requests/level (≤ 3 min)
    .venv/bin/python bench/serve.py --scenarios 2b --connections fresh --clients 1
                                               # one scenario: fresh connections, 1 client

What runs (all on 127.0.0.1, everything stopped at the end):

* a FakeGitHub (tests/fakegithub/) holding three padded pipeline wheels built with
  tests/wheels.py (cached under --work-dir), a static fake PyPI (tests.clients.serve_directory)
  as ``--upstream``, and ``spacy-index serve`` as a real subprocess of the installed CLI with
  ``GITHUB_API_URL``/``GITHUB_TOKEN`` pointing at the fake;
* nginx (2 workers, sendfile, no access log; own config and prefix) on a static index of the
  same wheels, for reference;
* clients: pip / pip-compile in fresh venvs (tests.clients.make_venv); for bulk transfers,
  client processes that discard the body in the kernel (``harness.clients.drain``: ``recv(MSG_TRUNC)``,
  ``splice`` to /dev/null, ``recv_into`` a reused buffer, or curl; scenario 2a measures which
  costs the client least and the rest uses that one), each reporting its own CPU; ``wrk`` with
  a Lua script (count-bounded, µs percentiles) for page latency.

Scenarios: 1 upstream bytes per client action, 2 cached-file throughput vs nginx with fresh
and keep-alive connections (+ server and client CPU; --profile adds strace counts of one
transfer), 3 project-page latency at 1/8/32 clients, 4 server RSS while 8 clients stream the
largest file (first uncached, then cached). Each timing is repeated (--reps, default 5) with
serve and nginx interleaved, the order alternating; medians are reported. Results: stdout and
bench/results/<date>-serve[-quick].md (+ .json: every run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import SINKS, drain
from harness.procfs import children, split_cpus, status_kib
from harness.report import machine_info, results_dir
from harness.servers import nginx, spacy_index_serve
from harness.util import MB, log
from harness.wheels import cached_model
from serve_profile import profile, syscall_profile
from serve_report import as_json, render
from serve_scenarios import (
    PIP_ACCEPT,
    SCENARIOS,
    TOKEN,
    VERSION,
    Plan,
    Report,
    Servers,
    alt_stack,
    placeholder_pypi,
    scenario_latency,
    scenario_rss,
    scenario_throughput,
    scenario_upstream,
    upstream_bytes,
)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, set[str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="50 MB files, 1,000 requests per latency level (CI; ≤ 3 min)")
    ap.add_argument("--reps", type=int, help="repetitions per timing (default 5; 3 with --quick)")
    ap.add_argument("--work-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "spacy-index-bench",
                    help="built wheels are cached here between runs; each run uses a fresh "
                    "subfolder for caches, venvs and logs (removed unless --keep)")
    ap.add_argument("--out", type=Path, help="report file (default bench/results/<date>-serve"
                    "[-quick].md)")
    ap.add_argument("--profile", action="store_true",
                    help="also sample the server with py-spy (needs py-spy in the venv)")
    ap.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    ap.add_argument("--sink", choices=["auto", *SINKS], default="auto",
                    help="bulk-transfer client (default auto: the one that costs the client the "
                    "least CPU per GB in scenario 2a)")
    ap.add_argument("--same-processes", action="store_true",
                    help="scenario 2b: keep the same server processes for every repetition "
                    "(default: new ones per repetition)")
    ap.add_argument("--connections", choices=["fresh", "keep-alive", "both"], default="both",
                    help="scenario 2: a new connection per download, one keep-alive connection "
                    "per client, or both (default)")
    ap.add_argument("--clients", choices=["1", "8", "both"], default="both",
                    help="scenario 2b: 1 client, 8 clients, or both (default)")
    ap.add_argument("--scenarios", default="1,2,3,4", metavar="LIST",
                    help="comma-separated scenarios to run, of 1, 2 (= 2a,2b), 2a, 2b, 3, 4 "
                    "(default all); without 1, serve fetches the big file once before 2")
    ap.add_argument("--pin", default="off", metavar="auto|off|S:C",
                    help="scenario 2: run the servers (every thread) on CPUs S and the clients "
                    "on CPUs C, e.g. 0:1, as a client on another machine would be; auto: "
                    "the last CPU for the clients, the others for the servers, "
                    "when there are two or more; off (default): the scheduler places both")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (logs, caches)")
    ap.add_argument("--compare-python", metavar="PYTHON",
                    help="also run serve with this interpreter (one that can import spacy_index, "
                    "e.g. a venv with uvicorn[standard]) in scenarios 2 and 3, side by side")
    args = ap.parse_args(argv)
    scenarios: set[str] = set()
    for name in filter(None, (x.strip() for x in args.scenarios.split(","))):
        names = {"2a", "2b"} if name == "2" else {name}
        if not names <= SCENARIOS:
            ap.error(f"--scenarios: unknown scenario {name!r}")
        scenarios |= names
    try:
        args.pin = split_cpus(args.pin)
    except ValueError as e:
        ap.error(str(e))
    return args, scenarios


def make_plan(args: argparse.Namespace, scenarios: set[str]) -> Plan:
    return Plan(quick=args.quick, reps=max(1, args.reps or (3 if args.quick else 5)),
                big_pad=(50 if args.quick else 200) * MB,
                huge_pad=(50 if args.quick else 500) * MB,
                compile_pad=(5 if args.quick else 20) * MB,
                page_requests=1000 if args.quick else 2000,
                page_seconds=2 if args.quick else 5,
                quiet_wait=3.0 if args.quick else 20.0,
                quiet_budget=15.0 if args.quick else 600.0,
                tries=1 if args.quick else 3,
                sink=args.sink, sink_reps=1 if args.quick else 3,
                connections=(("fresh", "keep-alive") if args.connections == "both"
                             else (args.connections,)),
                clients=(1, 8) if args.clients == "both" else (int(args.clients),),
                scenarios=tuple(sorted(scenarios)), pin=args.pin)


@dataclasses.dataclass
class World:
    """Everything one run starts: the wheels, the fakes, serve (and --compare-python's serve),
    nginx; ``ngx`` / ``alt`` are None when not run."""

    args: argparse.Namespace
    run_dir: Path
    big: Any
    trf: Any
    huge: Any
    static: Path
    gh: Any = None
    upstream: str = ""
    serve: Any = None
    alt: Any = None
    alt_name: str | None = None
    ngx: Any = None

    def start_serve(self, **kw: Any) -> contextlib.AbstractContextManager[Any]:
        return spacy_index_serve(cache_dir=self.run_dir / "cache", upstream=self.upstream,
                                 api_url=self.gh.api_url, token=TOKEN, log_dir=self.run_dir, **kw)

    def start_alt(self) -> contextlib.AbstractContextManager[Any]:
        return spacy_index_serve(cache_dir=self.run_dir / "cache-alt", upstream=self.upstream,
                                 api_url=self.gh.api_url, token=TOKEN, log_dir=self.run_dir,
                                 python=self.args.compare_python)

    def servers(self) -> Servers:
        out: Servers = {"serve": (self.serve.url, [self.serve.pid])}
        if self.alt is not None:
            out[self.alt_name] = (self.alt.url, self.alt.pids())
        if self.ngx is not None:
            out["nginx"] = (self.ngx.url, self.ngx.pids())
        return out

    @contextlib.contextmanager
    def respawn(self) -> Iterator[Servers]:
        """New server processes (the same caches and files) for one repetition."""
        with contextlib.ExitStack() as group:
            s_ = group.enter_context(self.start_serve())
            out: Servers = {"serve": (s_.url, [s_.pid])}
            if self.alt is not None:
                a_ = group.enter_context(self.start_alt())
                out[self.alt_name] = (a_.url, a_.pids())
            if self.ngx is not None:
                n_ = group.enter_context(nginx(self.static, log_dir=self.run_dir))
                if n_ is None:
                    raise RuntimeError("nginx did not start again")
                out["nginx"] = (n_.url, n_.pids())
            yield out


def timed(rep: Report, phase: str, fn: Callable[[], object]) -> None:
    t = time.monotonic()
    fn()
    rep.timings[phase] = time.monotonic() - t


def build(rep: Report, args: argparse.Namespace, run_dir: Path) -> World:
    """The three wheels (cached between runs), nginx's static index and the placeholder PyPI."""
    from tests.wheels import write_static_index

    plan = rep.plan
    t = time.monotonic()
    big = cached_model(args.work_dir, name="core_web_lg", version=VERSION, pad_bytes=plan.big_pad)
    trf = cached_model(args.work_dir, name="core_web_trf", version=VERSION,
                       pad_bytes=plan.compile_pad)
    huge = cached_model(args.work_dir, name="core_web_xl", version=VERSION, pad_bytes=plan.huge_pad)
    rep.timings["build/reuse wheels"] = time.monotonic() - t
    rep.sizes = {"big": big.wheel.stat().st_size, "huge": huge.wheel.stat().st_size}
    static = run_dir / "static"
    write_static_index(static, [big, trf, huge], metadata=True)
    placeholder_pypi(run_dir / "pypi")
    return World(args=args, run_dir=run_dir, big=big, trf=trf, huge=huge, static=static)


def start(rep: Report, w: World, stack: contextlib.ExitStack) -> None:
    """FakeGitHub, the fake PyPI, serve, --compare-python's serve and nginx, into ``stack``."""
    from tests.clients import serve_directory
    from tests.fakegithub import FakeGitHub
    from tests.wheels import meta_archive

    args, pkgs = w.args, [w.big, w.trf, w.huge]
    w.gh = stack.enter_context(FakeGitHub(load_fixture=False, archive=meta_archive(pkgs),
                                          token=TOKEN))
    for p in pkgs:
        w.gh.add_release(f"{p.project}-{p.version}", {p.wheel.name: p.wheel.read_bytes()})
    w.upstream = stack.enter_context(serve_directory(w.run_dir / "pypi")).url + "/simple/"
    w.serve = stack.enter_context(w.start_serve())
    if args.compare_python:
        w.alt_name = f"serve [{args.compare_python}]"
        rep.names = ["serve", w.alt_name, "nginx"]
        w.alt = stack.enter_context(w.start_alt())
        rep.notes.append(f"`{w.alt_name}`: the same CLI run by `{args.compare_python}`; "
                         f"its stack: {alt_stack(args.compare_python)}.")
    w.ngx = None if args.no_nginx else stack.enter_context(nginx(w.static, log_dir=w.run_dir))
    rep.nginx_ok = w.ngx is not None
    if w.ngx is None:
        msg = ("nginx was not run (--no-nginx)" if args.no_nginx else
               "nginx is not installed or failed to start (`apt-get install -y "
               "nginx-light`): only serve's absolute numbers are reported")
        rep.notes.append(msg)
        log(msg)
    pid = w.serve.pid
    idle = status_kib(pid, "VmRSS")["VmRSS"]
    rep.rss.append(("idle after start", "0", "-", f"{idle / 1024:.1f}",
                    f"{status_kib(pid, 'VmHWM')['VmHWM'] / 1024:.1f}"))
    kids = [status_kib(k, "VmRSS").get("VmRSS", 0) for k in children(pid)]
    rep.notes.append(
        f"serve's child processes after start (its page-fetch process, `[limits] page_fetch = "
        f"\"process\"`): {len(kids)}, VmRSS {sum(kids) / 1024:.1f} MiB in all; the RSS rows "
        f"are serve's own process (nothing is fetched there while files stream).")


def first_page(rep: Report, w: World) -> None:
    import httpx

    t = time.monotonic()
    before = upstream_bytes(w.gh)
    r = httpx.get(f"{w.serve.url}/simple/{w.big.normalized_name}/",
                  headers={"Accept": PIP_ACCEPT}, timeout=60, trust_env=False)
    r.raise_for_status()
    rep.upstream.append(("catalog load (first page: releases API + meta archive)",
                         upstream_bytes(w.gh) - before, "-", time.monotonic() - t))


def share_inode(rep: Report, w: World) -> None:
    """nginx serves the very inode serve's cache holds: the same bytes *and* the same
    page-cache pages (folio sizes follow how a file was written: a copy written in large
    pieces is cheaper for sendfile to read than one written in small ones, by ~10% CPU here),
    so the ratio compares the servers, not two copies of the file."""
    sha = w.big.sha256
    cached = w.run_dir / "cache" / "files" / sha[:2] / sha
    served = w.static / "files" / w.big.wheel.name
    if w.ngx is not None and cached.is_file():
        served.unlink()
        os.link(cached, served)
        rep.notes.append("Scenario 2: nginx's copy of the big wheel is a hard link to "
                         "serve's cache file (one inode, one set of page-cache pages).")
    elif w.ngx is not None:
        rep.notes.append("Scenario 2: serve's cache file was not found, so nginx serves "
                         "its own copy of the big wheel (page-cache layouts may differ).")


def before_throughput(rep: Report, w: World) -> None:
    """Scenario 1 (or just the big file into serve's cache: its first install does that), 4a."""
    plan, pid = rep.plan, w.serve.pid
    if "1" in plan.scenarios:
        log("scenario 1: upstream bytes")
        timed(rep, "1 upstream bytes", lambda: scenario_upstream(
            rep, w.gh, w.serve.url, [pid], w.big, w.trf, w.run_dir))
    else:
        drain(f"{w.serve.url}/files/{w.big.wheel.name}", 1,
              expect_size=w.big.wheel.stat().st_size, server_pids=[pid],
              timeout=plan.transfer_timeout)
    if "4" in plan.scenarios:
        log("scenario 4a: RSS, 8 clients, uncached first download")
        timed(rep, "4a RSS uncached",
              lambda: scenario_rss(rep, w.gh, w.serve.url, pid, w.huge, cached=False))


def throughput(rep: Report, w: World, servers: Servers) -> None:
    """Scenario 2 (and 2c with --profile)."""
    plan, args = rep.plan, w.args
    if "2a" in plan.scenarios or "2b" in plan.scenarios:
        log("scenario 2: throughput")
        timed(rep, "2 throughput", lambda: scenario_throughput(
            rep, servers, w.big, None if args.same_processes else w.respawn))
    if "2b" in plan.scenarios and not args.same_processes:
        rep.notes.append("Scenario 2b: every repetition ran against newly started server "
                         "processes (serve on the same cache; nginx on the same files), "
                         "each warmed by one download first.")
    if args.profile:
        timed(rep, "2c syscalls", lambda: syscall_profile(rep, servers, w.big, w.run_dir))


def latency(rep: Report, w: World, servers: Servers) -> None:
    """Scenario 3, then again against a serve at the default --log-level (info), which writes
    one access-log line per request."""
    import httpx

    name = w.big.normalized_name
    scenario_latency(rep, servers, name, w.run_dir, cross_check=True)
    with w.start_serve(log_level="info") as serve_info:
        httpx.get(f"{serve_info.url}/simple/{name}/",
                  headers={"Accept": PIP_ACCEPT}, timeout=60, trust_env=False)
        scenario_latency(rep, {"serve (log-level info)": (serve_info.url, [serve_info.pid])},
                         name, w.run_dir)


def after_throughput(rep: Report, w: World, servers: Servers) -> None:
    """Scenarios 4b and 3, the py-spy profile, and serve's health at the end."""
    plan, pid, serve = rep.plan, w.serve.pid, w.serve
    if "4" in plan.scenarios:
        log("scenario 4b: RSS, 8 clients, cached")
        timed(rep, "4b RSS cached",
              lambda: scenario_rss(rep, w.gh, serve.url, pid, w.huge, cached=True))
    if "3" in plan.scenarios:
        log("scenario 3: project-page latency")
        timed(rep, "3 latency", lambda: latency(rep, w, servers))
    if w.args.profile:
        log("profiling with py-spy")
        timed(rep, "profile", lambda: profile(rep, serve.url, pid, w.big, w.big.normalized_name,
                                              w.run_dir))
    rep.rss.append(("end of run (all scenarios)", "-", "-",
                    f"{status_kib(pid, 'VmRSS')['VmRSS'] / 1024:.1f}", "-"))
    if serve.process.proc.poll() is not None:
        raise RuntimeError("serve died:\n" + serve.process.tail())
    errors = [line for line in serve.process.tail(20000).splitlines()
              if "Traceback" in line or "ERROR" in line.upper()]
    if errors:
        rep.notes.append(f"serve logged {len(errors)} error line(s), e.g. {errors[0][:200]!r}")


def run(rep: Report, args: argparse.Namespace, run_dir: Path) -> None:
    w = build(rep, args, run_dir)
    with contextlib.ExitStack() as stack:
        start(rep, w, stack)
        first_page(rep, w)
        before_throughput(rep, w)
        servers = w.servers()
        share_inode(rep, w)
        throughput(rep, w, servers)
        after_throughput(rep, w, servers)


def write(rep: Report, args: argparse.Namespace, started: str, argv_shown: list[str]) -> None:
    machine = machine_info()
    text = render(rep, machine, started, argv_shown)
    print(text)
    out = args.out or (results_dir() /
                       f"{dt.date.today().isoformat()}-serve{'-quick' if args.quick else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(as_json(rep, machine, started, argv_shown),
                                                indent=1) + "\n")
    log(f"wrote {out} and {out.with_suffix('.json').name}")


def main(argv: list[str] | None = None) -> int:
    args, scenarios = parse_args(argv)
    # a plain `kill` must still stop every server this script started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    argv_shown = list(sys.argv[1:] if argv is None else argv)
    rep = Report(plan=make_plan(args, scenarios))
    rep.sink = "trunc" if args.sink == "auto" else args.sink  # until scenario 2a has chosen
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    t_all = time.monotonic()
    if shutil.which("curl") is None:
        print("error: curl is needed (apt-get install -y curl)", file=sys.stderr)
        return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    log(f"work folder {run_dir}")
    try:
        run(rep, args, run_dir)
        rep.timings["total"] = time.monotonic() - t_all
    finally:
        if args.keep:
            log(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    write(rep, args, started, argv_shown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
