"""Benchmark ``spacy-index serve`` against its goals, in one run, next to nginx.

    .venv/bin/python bench/serve.py            # full: 200 MB / 500 MB files, 2,000 requests/level
    .venv/bin/python bench/serve.py --quick    # 50 MB files, 1,000 requests/level (≤ 3 min)
    .venv/bin/python bench/serve.py --scenarios 2b --connections fresh --clients 1
                                               # one scenario: fresh connections, 1 client

What runs (all on 127.0.0.1, everything stopped at the end):

* a FakeGitHub (tests/fakegithub.py) holding three padded pipeline wheels built with
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
import functools
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import SINKS, Drain, Latency, Transfer, drain, loadgen_latency, wrk_latency
from harness.procfs import RssSampler, reset_peak_rss, status_kib, wait_quiet
from harness.report import machine_info, md_table
from harness.servers import nginx, spacy_index_serve
from harness.util import GB, MB, REPO, VENV_BIN, fmt_bytes, log, median
from harness.wheels import cached_model

TOKEN = "fake-ghp-BENCHtokenBENCHtokenBENCH0123456789"
PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
              "text/html; q=0.01")
VERSION = "3.8.50"

GOALS = {
    "dry_run_bytes": 64 * 1024,
    "second_install_bytes": 0,
    "throughput_ratio": 0.95,
    "cpu_per_gb": 0.4,
    "p99_ms_32": 3.0,
    "rss_mib": 100,
}


#: what --scenarios can name ("2" = 2a and 2b)
SCENARIOS = frozenset({"1", "2a", "2b", "3", "4"})


@dataclass
class Plan:
    quick: bool
    big_pad: int  # throughput file (scenario 1 a-c and 2)
    huge_pad: int  # RSS file (scenario 4)
    compile_pad: int  # pip-compile target (scenario 1 d)
    page_requests: int  #: per level, only for the Python fallback client (no wrk)
    reps: int
    page_seconds: int = 5  #: length of one wrk run per server and level
    sink: str = "auto"  #: bulk client (harness.clients.SINKS, or "auto": the cheapest in the sink runs)
    connections: tuple[str, ...] = ("fresh", "keep-alive")  #: scenario 2 connection modes
    clients: tuple[int, ...] = (1, 8)  #: scenario 2b client counts
    scenarios: tuple[str, ...] = tuple(sorted(SCENARIOS))  #: which scenarios run (--scenarios)
    sink_reps: int = 3  #: repetitions of each sink per server (scenario 2a)
    transfer_timeout: float = 300
    quiet_wait: float = 20.0  #: longest wait for a quiet machine before one repetition
    quiet_budget: float = 600.0  #: total waiting allowed per run
    other_max: float = 0.3  #: cores of foreign load above which a measurement is retried
    tries: int = 3  #: at most this many tries per measurement (1 = never retry)


@dataclass
class Report:
    plan: Plan
    nginx_ok: bool = False
    latency_client: str = "wrk"
    sizes: dict[str, int] = field(default_factory=dict)
    upstream: list[tuple[str, int, str, float]] = field(default_factory=list)
    transfers: dict[tuple[str, int], list[Transfer]] = field(default_factory=dict)
    #: scenario 2: (server, clients, "fresh" | "keep-alive") -> one Drain per repetition
    drains: dict[tuple[str, int, str], list[Drain]] = field(default_factory=dict)
    #: scenario 2a: (sink, server) -> runs; the sink then used everywhere
    sink_runs: dict[tuple[str, str], list[Drain]] = field(default_factory=dict)
    sink: str = "trunc"
    syscalls: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies: dict[tuple[str, int], list[Latency]] = field(default_factory=dict)
    rss: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    rss_peaks: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    names: list[str] = field(default_factory=lambda: ["serve", "nginx"])
    waited: float = 0.0
    waits_timed_out: int = 0
    retries: int = 0
    disturbed: int = 0


def quiet(rep: Report) -> None:
    """Before a repetition: wait (bounded) until other sessions' work stops loading the CPU."""
    budget = min(rep.plan.quiet_wait, rep.plan.quiet_budget - rep.waited)
    if budget <= 0:
        return
    waited, load = wait_quiet(max_wait=budget)
    rep.waited += waited
    if load >= 0.2:
        rep.waits_timed_out += 1
        log(f"  machine still busy ({load:.2f} cores of other work) after {waited:.0f}s; going on")
    elif waited > 1.5:
        log(f"  waited {waited:.0f}s for other work on the machine to stop")


def measured(rep: Report, fn, what: str):
    """``fn()`` (a Transfer or Latency); retried up to twice, after a quiet wait, when other
    processes used more than ``other_max`` cores meanwhile; the least disturbed try is kept."""
    best = None
    for attempt in range(rep.plan.tries):
        if attempt:
            rep.retries += 1
            quiet(rep)
        m = fn()
        if best is None or m.other_cores < best.other_cores:
            best = m
        if m.other_cores <= rep.plan.other_max:
            break
        log(f"  {what}: {m.other_cores:.2f} cores of other load during the run; "
            + ("retrying" if attempt < rep.plan.tries - 1 else "keeping the least disturbed try"))
    if best.other_cores > rep.plan.other_max:
        rep.disturbed += 1
    return best


# --------------------------------------------------------------------------- the world
def upstream_bytes(gh) -> int:
    return sum(r.bytes_sent for r in list(gh.requests) if r.origin in ("web", "objects"))


def upstream_gets(gh) -> Counter:
    return Counter(f"{r.origin} {r.method}" + (" range" if "range" in r.headers else "")
                   for r in list(gh.requests))


def placeholder_pypi(root: Path) -> None:
    """A static upstream with one unrelated project (serve needs an --upstream)."""
    from tests.servers import write_simple_project

    write_simple_project(root, "placeholder", {"placeholder-1.0.tar.gz": b"not a real sdist"})


def alt_stack(python: str) -> str:
    code = ("import importlib.metadata as m\n"
            "for n in ('uvicorn', 'starlette', 'uvloop', 'httptools', 'h11'):\n"
            "    try: print(n, m.version(n))\n"
            "    except m.PackageNotFoundError: print(n, '(absent)')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return ", ".join(out.stdout.split("\n")[:-1]) or out.stderr[-200:]


# --------------------------------------------------------------------------- scenario 1
def scenario_upstream(rep: Report, gh, url: str, pids: list[int], big, trf, work: Path) -> None:
    from tests.clients import build_wheelhouse, clean_env, make_venv, run

    env = clean_env()  # no pip cache: every install really asks the server
    simple = url + "/simple/"
    venvs = work / "venvs"

    def measure(label: str, goal: str, fn) -> None:
        before = upstream_bytes(gh)
        t = time.perf_counter()
        fn()
        took = time.perf_counter() - t
        moved = upstream_bytes(gh) - before
        rep.upstream.append((label, moved, goal, took))
        log(f"  {label}: {fmt_bytes(moved)} from upstream in {took:.1f}s")

    # (a) metadata-only resolution of the large pipeline
    va = make_venv(venvs / "a", env=env)
    report = work / "dry-run-report.json"

    def dry_run() -> None:
        va.pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report),
               "--index-url", simple, big.project)
        (item,) = json.loads(report.read_text())["install"]
        assert item["metadata"]["version"] == VERSION, item

    measure(f"(a) `pip install --dry-run --report` {big.project} "
            f"({big.wheel.stat().st_size / MB:.0f} MB wheel)", "≤ 64 KiB", dry_run)

    # (b) first real install: the wheel comes from upstream once (RSS sampled meanwhile)
    vb = make_venv(venvs / "b", env=env)
    reset_peak_rss(pids[0])
    with RssSampler(pids[0]) as s:
        measure(f"(b) first `pip install` {big.project}", "≈ wheel size (once)",
                lambda: vb.pip("install", "--index-url", simple, big.project))
    hwm = status_kib(pids[0], "VmHWM")["VmHWM"]
    rep.rss.append(("first `pip install` of the big wheel (uncached, 1 client)", "1",
                    f"{big.wheel.stat().st_size / MB:.0f} MB",
                    f"{s.peak / 1024:.1f}", f"{hwm / 1024:.1f}"))
    assert vb.installed().get(big.normalized_name) == VERSION

    # (c) second install into a brand-new venv: nothing from upstream
    vc = make_venv(venvs / "c", env=env)
    measure(f"(c) second `pip install` {big.project} (new venv)", "0",
            lambda: vc.pip("install", "--index-url", simple, big.project))

    # (d) pip-compile --generate-hashes: hashes without the wheel
    wheelhouse = build_wheelhouse(work / "wheelhouse")
    (work / "requirements.in").write_text(f"{trf.project}\n")

    def compile_() -> None:
        run([str(VENV_BIN / "python"), "-m", "piptools", "compile", "--quiet", "--generate-hashes",
             "--strip-extras", "--index-url", simple, "--find-links", str(wheelhouse),
             "-o", "requirements.txt", "requirements.in"], env=env, cwd=work)
        text = (work / "requirements.txt").read_text()
        assert f"--hash=sha256:{trf.sha256}" in text, text

    measure(f"(d) `pip-compile --generate-hashes` {trf.project} "
            f"({trf.wheel.stat().st_size / MB:.0f} MB wheel)", "metadata only (≪ wheel)", compile_)


# --------------------------------------------------------------------------- scenario 2
def repeats_for(plan: Plan, clients: int, size: int) -> int:
    """Downloads per client so that one measurement moves ≥ ~1.2 GB (quick) / 6.4 GB (full):
    over a second at loopback speeds (3-6 GB/s with sendfile), so that 10 ms CPU ticks are
    precise and one scheduling hiccup does not decide a repetition (1.6 GB runs of ~0.35 s
    varied ±30% between repetitions, nginx's as much as serve's)."""
    target = (1.2 if plan.quick else 6.4) * GB
    return max(1, -(-int(target) // (clients * size)))


def in_order(names: list[str], r: int) -> list[str]:
    """The servers of repetition ``r``: as given in even repetitions, reversed in odd ones, so
    that neither side always runs first (a warm page cache, a machine that gets busier)."""
    return list(names) if r % 2 == 0 else list(reversed(names))


def scenario_sinks(rep: Report, servers: dict[str, tuple[str, list[int]]], big) -> str:
    """2a: one client, fresh connections, each sink (harness.clients.SINKS) against each server,
    interleaved; returns the sink to use: the given one, or ("auto") the one that costs the
    client the least CPU per GB against nginx (else against serve)."""
    size = big.wheel.stat().st_size
    path = f"/files/{big.wheel.name}"
    sinks = list(SINKS)
    if shutil.which("curl") is None:
        sinks.remove("curl")
    count = repeats_for(rep.plan, 1, size)
    for r in range(rep.plan.sink_reps):
        for i, sink in enumerate(sinks):
            quiet(rep)
            for pos, name in enumerate(in_order(list(servers), r + i)):
                url, pids = servers[name]
                t = measured(rep, functools.partial(
                    drain, url + path, 1, count=count, expect_size=size, server_pids=pids,
                    timeout=rep.plan.transfer_timeout, sink=sink, fresh=True),
                    f"sink {sink} {name}")
                t.order = pos
                rep.sink_runs.setdefault((sink, name), []).append(t)
                log(f"  sinks rep {r + 1} {sink} {name}: {t.mbps:,.0f} MB/s, client "
                    f"{t.client_cpu_per_gb:.3f} CPU-s/GB ({t.client_cores_max:.2f} cores), "
                    f"server {t.cpu_per_gb:.3f} CPU-s/GB, other {t.other_cores:.2f} cores")
    if rep.plan.sink != "auto":
        return rep.plan.sink
    ref = "nginx" if "nginx" in servers else next(iter(servers))
    return min(sinks, key=lambda k: median([t.client_cpu_per_gb
                                            for t in rep.sink_runs[(k, ref)]]))


Servers = dict[str, tuple[str, list[int]]]


def scenario_throughput(rep: Report, servers: Servers, big,
                        respawn: Callable[[], contextlib.AbstractContextManager[Servers]] | None
                        = None) -> None:
    """2a with ``servers``; 2b with new server processes for every repetition (``respawn()``,
    when given): a process's own luck (where its buffers and threads land; two identical
    serve processes differed by ~10% over 8 interleaved repetitions once, and by nothing
    the next time) then varies between repetitions instead of deciding them all."""
    size = big.wheel.stat().st_size
    path = f"/files/{big.wheel.name}"
    timeout = rep.plan.transfer_timeout

    def warm(group: Servers) -> None:  # page cache, the cache's first-use hash, a new process
        for url, pids in group.values():
            drain(url + path, 1, expect_size=size, server_pids=pids, timeout=timeout)

    warm(servers)
    if "2a" in rep.plan.scenarios:
        rep.sink = scenario_sinks(rep, servers, big)
    log(f"  bulk client: {rep.sink}")
    for conn in rep.plan.connections:
        for r in range(rep.plan.reps):
            with (respawn() if respawn else contextlib.nullcontext(servers)) as group:
                if respawn:
                    warm(group)
                run_repetition(rep, group, big, conn, r)


def run_repetition(rep: Report, servers: Servers, big, conn: str, r: int) -> None:
    """Repetition ``r`` of 2b: 1 then 8 clients, the servers back to back (order alternating)."""
    size = big.wheel.stat().st_size
    path = f"/files/{big.wheel.name}"
    for clients in rep.plan.clients:
        count = repeats_for(rep.plan, clients, size)
        quiet(rep)
        for pos, name in enumerate(in_order(list(servers), r)):
            url, pids = servers[name]
            t = measured(rep, functools.partial(
                drain, url + path, clients, count=count, expect_size=size, server_pids=pids,
                timeout=rep.plan.transfer_timeout, sink=rep.sink, fresh=conn == "fresh"),
                f"{name} x{clients} {conn}")
            t.order = pos
            rep.drains.setdefault((name, clients, conn), []).append(t)
            log(f"  {conn} rep {r + 1} {name} x{clients} (x{count} each): "
                f"{t.mbps:,.0f} MB/s, server {t.cpu_per_gb:.3f} CPU-s/GB "
                f"({t.server_cores:.2f} cores), clients {t.clients_cores:.2f} cores "
                f"(busiest {t.client_cores_max:.2f}), other {t.other_cores:.2f} cores")


# --------------------------------------------------------------------------- scenario 3
def scenario_latency(rep: Report, servers: dict[str, tuple[str, list[int]]], project: str,
                     work: Path, *, cross_check: bool = False) -> None:
    """p50/p99 at 1, 8 and 32 clients. ``cross_check``: also 32 clients with two wrk threads
    (the client this bench used before), reported beside the main numbers."""
    use_wrk = shutil.which("wrk") is not None
    n, secs = rep.plan.page_requests, rep.plan.page_seconds
    rep.latency_client = (
        f"wrk 4.1 (C, epoll, keep-alive, one thread: `-t 1`), exact µs percentiles from a Lua "
        f"`done()`; each run lasts {secs} s per server and level"
        if use_wrk else
        f"bench/loadgen.py pages (Python asyncio, keep-alive, {n:,} requests per level; wrk "
        "is not installed: this client is slower and shares the CPU)")
    levels = [(c, 1) for c in (1, 8, 32)]
    if cross_check and use_wrk:
        levels.append((32, 2))
    for clients, threads in levels:
        for url, pids in servers.values():  # warm-up: connections, caches
            if use_wrk:
                wrk_latency(f"{url}/simple/{project}/", clients, 1, accept=PIP_ACCEPT,
                            server_pids=pids, work=work, threads=threads)
            else:
                loadgen_latency(f"{url}/simple/{project}/", clients, 200, accept=PIP_ACCEPT,
                                server_pids=pids)
        for r in range(rep.plan.reps):
            quiet(rep)
            for name, (url, pids) in servers.items():
                label = name if threads == 1 else f"{name}, wrk -t {threads}"
                if use_wrk:
                    lat = measured(rep, functools.partial(
                        wrk_latency, f"{url}/simple/{project}/", clients, secs,
                        accept=PIP_ACCEPT, server_pids=pids, work=work, threads=threads),
                        f"{label} x{clients}")
                else:
                    lat = measured(rep, functools.partial(
                        loadgen_latency, f"{url}/simple/{project}/", clients, n,
                        accept=PIP_ACCEPT, server_pids=pids), f"{label} x{clients}")
                rep.latencies.setdefault((label, clients), []).append(lat)
                log(f"  rep {r + 1} {label} x{clients}: {lat.requests} req, p50 {lat.p50_ms:.2f} ms, "
                    f"p99 {lat.p99_ms:.2f} ms, {lat.rps:,.0f} req/s, "
                    f"{lat.cpu_us_per_req:.0f} CPU-µs/req, {lat.errors} errors, "
                    f"other {lat.other_cores:.2f} cores")


def scenario_rss(rep: Report, gh, url: str, pid: int, huge, *, cached: bool) -> list[Transfer]:
    size = huge.wheel.stat().st_size
    target = f"{url}/files/{huge.wheel.name}"
    runs = rep.plan.reps if cached else 1
    out = []
    for _ in range(runs):
        if cached:
            quiet(rep)
        before = upstream_bytes(gh)
        gets0 = sum(1 for r in list(gh.requests) if r.origin == "objects" and r.method == "GET")
        reset_peak_rss(pid)
        start_rss = status_kib(pid, "VmRSS")["VmRSS"]
        with RssSampler(pid) as s:
            t = drain(target, 8, expect_size=size, server_pids=[pid],
                      timeout=rep.plan.transfer_timeout, sink=rep.sink)
        hwm = status_kib(pid, "VmHWM")["VmHWM"]
        moved = upstream_bytes(gh) - before
        gets = sum(1 for r in list(gh.requests) if r.origin == "objects" and r.method == "GET") - gets0
        label = ("8 clients, cached" if cached else
                 f"8 clients, uncached first download ({gets} upstream GET, "
                 f"{fmt_bytes(moved)} from upstream)")
        rep.rss.append((label, "8", f"{size / MB:.0f} MB",
                        f"{s.peak / 1024:.1f}", f"{hwm / 1024:.1f}"))
        key = "cached" if cached else "uncached"
        rep.rss_peaks[key] = max(rep.rss_peaks.get(key, 0.0), max(s.peak, hwm) / 1024)
        log(f"  {label}: RSS {start_rss / 1024:.1f} → peak {s.peak / 1024:.1f} MiB "
            f"(VmHWM {hwm / 1024:.1f} MiB), {t.mbps:,.0f} MB/s, {t.cpu_per_gb:.2f} CPU-s/GB")
        out.append(t)
    rep.transfers[("rss cached" if cached else "rss uncached", 8)] = out
    return out


# --------------------------------------------------------------------------- profiling
def profile(rep: Report, url: str, pid: int, big, project: str, work: Path) -> None:
    """py-spy samples of the server during one cached transfer and one 32-client page run."""
    spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(spy).exists():
        rep.profile.append("py-spy not installed (`.venv/bin/pip install py-spy`); no profile.")
        return
    size = big.wheel.stat().st_size
    jobs = [
        ("1 client downloading the cached big file",
         lambda: drain(f"{url}/files/{big.wheel.name}", 1, count=repeats_for(rep.plan, 1, size),
                       expect_size=size, server_pids=[pid], timeout=rep.plan.transfer_timeout,
                       sink=rep.sink)),
        ("32 clients on the project page",
         lambda: wrk_latency(f"{url}/simple/{project}/", 32, 5, accept=PIP_ACCEPT,
                             server_pids=[pid], work=work)),
    ]
    for title, job in jobs:
        raw = work / f"pyspy-{len(rep.profile)}.txt"
        spy_proc = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "250", "-f", "raw",
                                     "-o", str(raw), "-d", "60", "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        try:
            job()
        finally:
            spy_proc.send_signal(2)
            try:
                _, err = spy_proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
                err = ""
        if not raw.exists():
            rep.profile.append(f"**{title}**: py-spy failed: {err.strip()[-300:]}")
            continue
        rep.profile.append(f"**{title}** (py-spy, 250 Hz, non-idle samples; "
                           "self = leaf frame, total = anywhere on the stack):\n")
        rep.profile.append(summarize_collapsed(raw.read_text()))


def syscall_profile(rep: Report, servers: dict[str, tuple[str, list[int]]], big,
                    work: Path) -> None:
    """2c: ``strace -c -f`` of each server during one download of the big file (counts)."""
    exe = shutil.which("strace")
    if exe is None:
        rep.notes.append("strace is not installed (`apt-get install -y strace`): no system-call "
                         "counts (section 2c).")
        return
    size = big.wheel.stat().st_size
    for name, (url, pids) in servers.items():
        traced = pids[1:] if name == "nginx" else pids  # nginx: the workers
        out = work / f"strace-{len(rep.syscalls)}.txt"
        argv = [exe, "-c", "-f", "-q", "-o", str(out)]
        for pid in traced:
            argv += ["-p", str(pid)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)  # attached
            drain(f"{url}/files/{big.wheel.name}", 1, expect_size=size, server_pids=pids,
                  timeout=rep.plan.transfer_timeout, sink=rep.sink)
            time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        counts: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in out.read_text().splitlines():
                f = line.split()
                # % time, seconds, usecs/call, calls, [errors,] syscall
                if len(f) >= 5 and f[3].isdigit() and not line.startswith("%"):
                    counts[f[-1]] = int(f[3])
        if counts:
            rep.syscalls[name] = counts
            log(f"  strace {name}: {counts.get('sendfile', 0)} sendfile, "
                f"{counts.get('epoll_wait', 0)} epoll_wait, {counts.get('total', 0)} calls")


def summarize_collapsed(text: str, top: int = 12) -> str:
    self_c: Counter = Counter()
    total_c: Counter = Counter()
    n = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        n += c
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        # drop the thread name frame py-spy puts first
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if frames:
            self_c[frames[-1]] += c
        for f in set(frames):
            total_c[f] += c
    if not n:
        return "(no samples)\n"
    rows = [(f, f"{c / n:.1%}", f"{total_c[f] / n:.1%}") for f, c in self_c.most_common(top)]
    inclusive = [(f, f"{c / n:.1%}") for f, c in total_c.most_common(40)
                 if any(k in f for k in ("_file_body", "to_thread", "run_sync", "send", "h11",
                                         "project_page", "local_view", "dumps", "AccessLog",
                                         "negotiate", "_page", "_etag", "run_in_executor",
                                         "handle_events", "data_received"))][:12]
    return (f"{n} samples\n\n" + md_table(["function (leaf)", "self", "total"], rows) + "\n\n"
            + md_table(["function (inclusive)", "total"], inclusive) + "\n")


# --------------------------------------------------------------------------- report
def verdict(ok: bool) -> str:
    return "✅ met" if ok else "❌ missed"


def ratios_of(a: list[Drain], b: list[Drain]) -> list[float]:
    """Per-repetition throughput ratios a/b (the runs of one repetition sit side by side)."""
    return [x.mbps / y.mbps for x, y in zip(a, b, strict=False)]


def render_throughput(rep: Report) -> list[str]:
    p = rep.plan
    out: list[str] = []
    out.append(
        "Each measurement: N concurrent client processes, each downloading the file k times "
        f"(k chosen so one measurement moves ≥ {(1.2 if p.quick else 6.4):.1f} GB), on a new "
        "connection per download (*fresh*, what pip and `curl` do for one file) or on one "
        "keep-alive connection (*keep-alive*). The Python clients start on a common clock, so "
        "their start-up is not timed. MB/s = all bytes / wall time from the first client's "
        "start to the last one's end. Server CPU = utime+stime of the server's process, all "
        "threads, from /proc/PID/stat (nginx: master + 2 workers). Client CPU = each client "
        "process's own utime+stime over the timed span (`os.times()` in the client; curl: "
        "getrusage of the reaped process); *busiest* is the busiest client process (each is "
        "single-threaded, so 1.0 would mean the client limits the transfer), *all* is all "
        "client processes together (2 cores in all here). Other load = machine CPU "
        "(/proc/stat) minus server and clients. In each repetition the servers run back to "
        "back, the order alternating between repetitions (*first* column).\n")
    # 2a sinks
    if rep.sink_runs:
        out.append("### 2a. Which client drains fastest\n")
        out.append(
            f"One client, fresh connections, {p.sink_reps} repetition(s) per sink and server, "
            "interleaved. Sinks: " + "; ".join(f"**{k}**: {v}" for k, v in SINKS.items())
            + ". Client CPU-s/GB = client CPU / GB moved (medians).\n")
        rows = []
        for sink in SINKS:
            for name in rep.names:
                ts = rep.sink_runs.get((sink, name))
                if not ts:
                    continue
                rows.append((sink + (" (**used below**)" if sink == rep.sink and name == rep.names[0]
                                     else ""), name,
                             " / ".join(f"{t.mbps:,.0f}" for t in ts),
                             f"{median([t.mbps for t in ts]):,.0f}",
                             f"{median([t.client_cpu_per_gb for t in ts]):.3f}",
                             f"{median([t.client_cores_max for t in ts]):.2f}",
                             f"{median([t.cpu_per_gb for t in ts]):.3f}",
                             f"{median([t.other_cores for t in ts]):.2f}"))
        out.append(md_table(["sink", "server", "MB/s per run", "MB/s median", "client CPU-s/GB",
                             "client cores", "server CPU-s/GB", "other load, cores"], rows) + "\n")
        how = ("the cheapest for the client per GB against nginx" if p.sink == "auto"
               else "given with --sink")
        out.append(f"Client used for every other transfer in this report: **{rep.sink}** ({how}).\n")
    # 2b per repetition
    names = rep.names
    ref = "nginx" if "nginx" in names else None
    for conn in p.connections:
        for clients in (1, 8):
            series = {n: rep.drains.get((n, clients, conn), []) for n in names}
            if not any(series.values()):
                continue
            out.append(f"### 2b. {clients} client(s), {conn} connections, sink {rep.sink}\n")
            headers = ["rep", "first"]
            for n in names:
                headers += [f"{n} MB/s", f"{n} CPU-s/GB", f"{n} run: client cores busiest / all",
                            f"{n} run: other load"]
            others = [n for n in names if n != ref] if ref else []
            headers += [f"{n}/nginx" for n in others]
            rows = []
            reps_n = max(len(v) for v in series.values())
            for r in range(reps_n):
                first = next((n for n in names if len(series[n]) > r and series[n][r].order == 0),
                             "?")
                row: list[object] = [r + 1, first]
                for n in names:
                    t = series[n][r] if len(series[n]) > r else None
                    row += ([f"{t.mbps:,.0f}", f"{t.cpu_per_gb:.3f}",
                             f"{t.client_cores_max:.2f} / {t.clients_cores:.2f}",
                             f"{t.other_cores:.2f}"] if t else ["-"] * 4)
                for n in others:
                    a, b = series[n], series[ref]
                    row.append(f"{a[r].mbps / b[r].mbps:.2f}" if len(a) > r and len(b) > r else "-")
                rows.append(row)
            row = ["median", ""]
            for n in names:
                ts = series[n]
                row += ([f"{median([t.mbps for t in ts]):,.0f}",
                         f"{median([t.cpu_per_gb for t in ts]):.3f}",
                         f"{median([t.client_cores_max for t in ts]):.2f} / "
                         f"{median([t.clients_cores for t in ts]):.2f}",
                         f"{median([t.other_cores for t in ts]):.2f}"] if ts else ["-"] * 4)
            for n in others:
                rs = ratios_of(series[n], series[ref])
                row.append(f"**{median(rs):.2f}x**" if rs else "-")
            rows.append(row)
            if others:
                row = ["mean", ""]
                for n in names:
                    ts = series[n]
                    row += [f"{statistics.fmean([t.mbps for t in ts]):,.0f}" if ts else "-",
                            "", "", ""]
                for n in others:
                    rs = ratios_of(series[n], series[ref])
                    row.append(f"{statistics.fmean(rs):.2f}x" if rs else "-")
                rows.append(row)
            out.append(md_table(headers, rows) + "\n")
    if ref:
        out.append("Ratios: each repetition's serve MB/s / nginx MB/s (the two runs side by side); "
                   "**bold** = median of those per-repetition ratios (the figure the goal is "
                   "checked on); *mean* row = arithmetic means (of MB/s, and of the ratios), for "
                   "comparison.\n")
    if rep.syscalls:
        out.append("### 2c. System calls of one transfer\n")
        out.append("`strace -c -f` attached to the server (nginx: its workers) while one client "
                   "downloads the file once on a fresh connection (counts are exact; strace "
                   "slows every call, so no timing here). `epoll_wait` ≈ event-loop "
                   "iterations.\n")
        keys = sorted({k for d in rep.syscalls.values() for k in d},
                      key=lambda k: (-max(d.get(k, 0) for d in rep.syscalls.values()), k))
        rows = [(k, *(f"{rep.syscalls[n].get(k, 0):,}" for n in rep.syscalls)) for k in keys]
        out.append(md_table(["syscall", *rep.syscalls], rows) + "\n")
    return out


def render(rep: Report, machine: list[tuple[str, str]], started: str, argv: list[str]) -> str:
    p = rep.plan
    out: list[str] = []
    out.append(f"# `spacy-index serve` benchmark — {started}\n")
    out.append(f"Mode: **{'quick' if p.quick else 'full'}** "
               f"(`{shlex.join(['bench/serve.py', *argv])}`), {p.reps} repetitions per timing, "
               "medians reported; serve and nginx runs interleaved, the order alternating "
               "between repetitions.\n")
    out.append("## Machine\n")
    out.append(md_table(["", ""], machine) + "\n")
    # ------------------------------------------------------------------ summary
    summary = []
    dry = next((b for label, b, _, _ in rep.upstream if label.startswith("(a)")), None)
    second = next((b for label, b, _, _ in rep.upstream if label.startswith("(c)")), None)
    if dry is not None:
        summary.append(("upstream bytes, `pip install --dry-run` of a big pipeline",
                        fmt_bytes(dry), "≤ 64 KiB", verdict(dry <= GOALS["dry_run_bytes"])))
    if second is not None:
        summary.append(("upstream bytes, second install (new venv)", fmt_bytes(second), "0",
                        verdict(second == 0)))
    for conn in p.connections:
        for clients in (1, 8):
            s = rep.drains.get(("serve", clients, conn))
            n = rep.drains.get(("nginx", clients, conn))
            if not s:
                continue
            what = f"cached {rep.sizes['big'] / MB:.0f} MB file, {clients} client(s), {conn}"
            sm = median([t.mbps for t in s])
            cpu = median([t.cpu_per_gb for t in s])
            if n:
                nm = median([t.mbps for t in n])
                ratios = ratios_of(s, n)
                summary.append((f"{what}: serve/nginx throughput (median of the per-repetition "
                                "ratios)", f"{median(ratios):.2f}x (per repetition "
                                f"{' / '.join(f'{x:.2f}' for x in ratios)}; MB/s medians "
                                f"{sm:,.0f} vs {nm:,.0f})",
                                "≥ 0.95x", verdict(median(ratios) >= GOALS["throughput_ratio"])))
            else:
                summary.append((f"{what}: serve throughput (median)", f"{sm:,.0f} MB/s",
                                "≥ 0.95x nginx", "n/a (no nginx)"))
            summary.append((f"{what}: serve CPU per GB (median)", f"{cpu:.3f} CPU-s/GB", "≤ 0.4",
                            verdict(cpu <= GOALS["cpu_per_gb"])))
    runs = [t for ts in rep.drains.values() for t in ts]
    if runs:
        busiest = max(t.client_cores_max for t in runs)
        together = max(t.clients_cores for t in runs)
        summary.append(("bulk client CPU (scenario 2, every run): busiest client process / all "
                        "client processes together, maximum over the runs",
                        f"{busiest:.2f} / {together:.2f} cores", "< 1 core each",
                        verdict(busiest < 1 and together < 1)))
    lat = rep.latencies.get(("serve", 32))
    if lat:
        p99 = median([x.p99_ms for x in lat])
        summary.append(("project page p99 at 32 clients", f"{p99:.2f} ms", "≤ 3 ms",
                        verdict(p99 <= GOALS["p99_ms_32"])))
        for name in ("nginx", "serve, wrk -t 2", "nginx, wrk -t 2"):
            other = rep.latencies.get((name, 32))
            if other:
                summary.append((f"*{name}*: page p99 at 32 clients",
                                f"{median([x.p99_ms for x in other]):.2f} ms", "≤ 3 ms",
                                "(reference)"))
    for alt in rep.names[1:-1]:  # --compare-python: the same goals, for information
        for clients in (1, 8):
            a = rep.drains.get((alt, clients, p.connections[0]))
            n = rep.drains.get(("nginx", clients, p.connections[0]))
            if a and n:
                ratio = median(ratios_of(a, n))
                summary.append((f"*{alt}*, {clients} client(s): throughput vs nginx, CPU/GB",
                                f"{ratio:.2f}x, {median([t.cpu_per_gb for t in a]):.2f} CPU-s/GB",
                                "≥ 0.95x, ≤ 0.4", "(comparison)"))
        la = rep.latencies.get((alt, 32))
        if la:
            summary.append((f"*{alt}*: page p99 at 32 clients",
                            f"{median([x.p99_ms for x in la]):.2f} ms", "≤ 3 ms", "(comparison)"))
    if "cached" in rep.rss_peaks:
        v = rep.rss_peaks["cached"]
        summary.append((f"peak RSS, 8 clients streaming a cached {rep.sizes['huge'] / MB:.0f} MB file",
                        f"{v:.1f} MiB", "≤ 100 MiB", verdict(v <= GOALS["rss_mib"])))
    if "uncached" in rep.rss_peaks:
        v = rep.rss_peaks["uncached"]
        summary.append(("peak RSS, same, uncached first download", f"{v:.1f} MiB",
                        "≤ 100 MiB", verdict(v <= GOALS["rss_mib"])))
    out.append("## Summary against the goals\n")
    out.append(md_table(["metric", "measured", "goal", ""], summary) + "\n")
    # ------------------------------------------------------------------ 1
    out.append("## 1. Upstream bytes per client action\n")
    out.append("Body bytes FakeGitHub sent on its web + objects origins (release downloads, "
               "Range reads, repository archive) while the client ran; pip without a cache, "
               "fresh venv per action (spaCy cloned in, so only the pipeline is asked for).\n")
    rows = [(label, f"{b:,}", fmt_bytes(b), goal, f"{took:.1f}") for label, b, goal, took in rep.upstream]
    out.append(md_table(["action", "bytes", "", "goal", "client wall s"], rows) + "\n")
    # ------------------------------------------------------------------ 2
    out.append(f"## 2. Throughput, cached {rep.sizes.get('big', 0) / MB:.0f} MB file over loopback\n")
    out += render_throughput(rep)
    # ------------------------------------------------------------------ 3
    out.append("## 3. Project-page latency: `GET /simple/<project>/` with pip's Accept header\n")
    out.append(f"Client: {rep.latency_client}. `requests` below is the total over the "
               "repetitions. The `wrk -t 2` rows are a cross-check with two client threads (the "
               "client of earlier reports): three busy threads on 2 cores, which lengthens "
               "every server's tail. serve runs "
               "with `--log-level warning` (no access log, like nginx's `access_log off`); the "
               "`log-level info` rows are a second serve process with the CLI's default level, "
               "which writes one access-log line per request. nginx serves a static "
               "`index.html` of the same project (reference only). CPU-µs/req = server "
               "CPU-seconds / requests.\n")
    rows = []
    for clients in (1, 8, 32):
        names = (*rep.names[:-1], "serve (log-level info)", rep.names[-1])
        for name in (*names, *(f"{x}, wrk -t 2" for x in names)):
            ls = rep.latencies.get((name, clients))
            if not ls:
                continue
            rows.append((name, clients, sum(x.requests for x in ls),
                         f"{median([x.p50_ms for x in ls]):.3f}",
                         f"{median([x.p90_ms for x in ls]):.3f}",
                         f"{median([x.p99_ms for x in ls]):.3f}",
                         " / ".join(f"{x.p99_ms:.2f}" for x in ls),
                         f"{max(x.max_ms for x in ls):.1f}",
                         f"{median([x.rps for x in ls]):,.0f}",
                         f"{median([x.cpu_us_per_req for x in ls]):,.0f}",
                         sum(x.errors for x in ls),
                         f"{median([x.other_cores for x in ls]):.2f}"))
    out.append(md_table(["server", "clients", "requests", "p50 ms", "p90 ms", "p99 ms",
                         "p99 per run", "max ms", "req/s", "server CPU-µs/req", "errors",
                         "other load, cores"], rows) + "\n")
    # ------------------------------------------------------------------ 4
    out.append("## 4. Server memory while clients stream\n")
    out.append("VmRSS sampled every 10 ms, and VmHWM (peak, reset with `clear_refs` before "
               "each run) of the serve process.\n")
    rows = [(label, c, size, peak, hwm) for label, c, size, peak, hwm in rep.rss]
    out.append(md_table(["transfer", "clients", "file", "peak VmRSS MiB (sampled)",
                         "VmHWM MiB"], rows) + "\n")
    for key, title in (("rss uncached", "uncached first download"),
                       ("rss cached", "cached")):
        ts = rep.transfers.get((key, 8))
        if ts:
            out.append(f"- {title}, 8 clients: {median([t.mbps for t in ts]):,.0f} MB/s, "
                       f"{median([t.cpu_per_gb for t in ts]):.3f} server CPU-s/GB "
                       f"({' / '.join(f'{t.mbps:,.0f}' for t in ts)} MB/s per run)")
    out.append("")
    rep.notes.append(
        "Other load: machine CPU (/proc/stat user+nice+system) during a measurement minus the "
        "server's and the clients' own CPU: work of other processes on this shared 2-core "
        "machine (other sessions' test runs), plus kernel time not charged to either side. "
        f"Before each repetition the run waited for the machine to be quiet (< 0.2 cores busy; "
        f"waited {rep.waited:.0f} s in all, {rep.waits_timed_out} wait(s) gave up); a "
        f"measurement with > {p.other_max} cores of other load was tried up to {p.tries} "
        f"time(s) ({rep.retries} retries; {rep.disturbed} measurement(s) kept despite the load).")
    if rep.notes:
        out.append("## Notes\n")
        out += [f"- {n}" for n in rep.notes]
        out.append("")
    if rep.profile:
        out.append("## Profile of the server (py-spy)\n")
        out += rep.profile
        out.append("")
    out.append("## Phase timings\n")
    out.append(md_table(["phase", "seconds"], [(k, f"{v:.1f}") for k, v in rep.timings.items()]) + "\n")
    return "\n".join(out)


def as_json(rep: Report, machine: list[tuple[str, str]], started: str, argv: list[str]) -> dict:
    """Raw runs (every repetition) + the figures of the summary, for bench/results/*.json."""
    def run(t) -> dict:
        d = dataclasses.asdict(t)
        for prop in ("mbps", "cpu_per_gb", "server_cores", "client_cores", "other_cores",
                     "clients_cores", "client_cores_max", "client_cpu_per_gb", "p50_ms", "rps",
                     "cpu_us_per_req"):
            if hasattr(t, prop) and prop not in d:
                d[prop] = getattr(t, prop)
        return d

    def key(k: tuple) -> str:
        return " | ".join(str(x) for x in k)

    summary = {}
    for (name, clients, conn), ts in rep.drains.items():
        entry = {"mbps_median": median([t.mbps for t in ts]),
                 "cpu_per_gb_median": median([t.cpu_per_gb for t in ts]),
                 "client_cores_max": max(t.client_cores_max for t in ts),
                 "clients_cores_max": max(t.clients_cores for t in ts)}
        ref = rep.drains.get(("nginx", clients, conn))
        if ref and name != "nginx":
            rs = ratios_of(ts, ref)
            entry.update(ratios=rs, ratio_median=median(rs), ratio_mean=statistics.fmean(rs))
        summary[key((name, clients, conn))] = entry
    return {
        "bench": "serve", "quick": rep.plan.quick, "started": started,
        "argv": ["bench/serve.py", *argv], "machine": machine,
        "plan": dataclasses.asdict(rep.plan), "goals": GOALS, "sink": rep.sink,
        "throughput_summary": summary,
        "throughput": {key(k): [run(t) for t in v] for k, v in rep.drains.items()},
        "sinks": {key(k): [run(t) for t in v] for k, v in rep.sink_runs.items()},
        "syscalls": rep.syscalls,
        "latency": {key(k): [run(x) for x in v] for k, v in rep.latencies.items()},
        "rss": [list(r) for r in rep.rss], "rss_peaks_mib": rep.rss_peaks,
        "rss_transfers": {key(k): [run(t) for t in v] for k, v in rep.transfers.items()},
        "upstream": [list(u) for u in rep.upstream], "notes": rep.notes,
        "timings": rep.timings,
        "other_load": {"waited_s": rep.waited, "waits_timed_out": rep.waits_timed_out,
                       "retries": rep.retries, "disturbed": rep.disturbed},
    }


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--keep", action="store_true", help="keep the run folder (logs, caches)")
    ap.add_argument("--compare-python", metavar="PYTHON",
                    help="also run serve with this interpreter (one that can import spacy_index, "
                    "e.g. a venv with uvicorn[standard]) in scenarios 2 and 3, side by side")
    args = ap.parse_args(argv)
    scenarios = set()
    for name in filter(None, (x.strip() for x in args.scenarios.split(","))):
        names = {"2a", "2b"} if name == "2" else {name}
        if not names <= SCENARIOS:
            ap.error(f"--scenarios: unknown scenario {name!r}")
        scenarios |= names
    # a plain `kill` must still stop every server this script started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    argv_shown = list(sys.argv[1:] if argv is None else argv)

    plan = Plan(quick=args.quick, reps=max(1, args.reps or (3 if args.quick else 5)),
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
                scenarios=tuple(sorted(scenarios)))
    rep = Report(plan=plan)
    rep.sink = "trunc" if args.sink == "auto" else args.sink  # until scenario 2a has chosen
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    t_all = time.monotonic()
    if shutil.which("curl") is None:
        print("error: curl is needed (apt-get install -y curl)", file=sys.stderr)
        return 2

    from tests.clients import serve_directory
    from tests.fakegithub import FakeGitHub
    from tests.wheels import meta_archive, write_static_index

    args.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    log(f"work folder {run_dir}")
    try:
        t = time.monotonic()
        big = cached_model(args.work_dir, name="core_web_lg", version=VERSION, pad_bytes=plan.big_pad)
        trf = cached_model(args.work_dir, name="core_web_trf", version=VERSION,
                           pad_bytes=plan.compile_pad)
        huge = cached_model(args.work_dir, name="core_web_xl", version=VERSION, pad_bytes=plan.huge_pad)
        rep.timings["build/reuse wheels"] = time.monotonic() - t
        rep.sizes = {"big": big.wheel.stat().st_size, "huge": huge.wheel.stat().st_size}
        pkgs = [big, trf, huge]

        static = run_dir / "static"
        write_static_index(static, pkgs, metadata=True)
        pypi = run_dir / "pypi"
        placeholder_pypi(pypi)

        with contextlib.ExitStack() as stack:
            gh = stack.enter_context(FakeGitHub(load_fixture=False, archive=meta_archive(pkgs),
                                                token=TOKEN))
            for p in pkgs:
                gh.add_release(f"{p.project}-{p.version}", {p.wheel.name: p.wheel.read_bytes()})
            fake_pypi = stack.enter_context(serve_directory(pypi))
            serve = stack.enter_context(spacy_index_serve(
                cache_dir=run_dir / "cache", upstream=fake_pypi.url + "/simple/",
                api_url=gh.api_url, token=TOKEN, log_dir=run_dir))
            alt = alt_name = None
            if args.compare_python:
                alt_name = f"serve [{args.compare_python}]"
                rep.names = ["serve", alt_name, "nginx"]
                alt = stack.enter_context(spacy_index_serve(
                    cache_dir=run_dir / "cache-alt", upstream=fake_pypi.url + "/simple/",
                    api_url=gh.api_url, token=TOKEN, log_dir=run_dir, python=args.compare_python))
                rep.notes.append(f"`{alt_name}`: the same CLI run by `{args.compare_python}`; "
                                 f"its stack: {alt_stack(args.compare_python)}.")
            ngx = None if args.no_nginx else stack.enter_context(nginx(static, log_dir=run_dir))
            rep.nginx_ok = ngx is not None
            if ngx is None:
                msg = ("nginx was not run (--no-nginx)" if args.no_nginx else
                       "nginx is not installed or failed to start (`apt-get install -y "
                       "nginx-light`): only serve's absolute numbers are reported")
                rep.notes.append(msg)
                log(msg)
            pid = serve.pid
            idle = status_kib(pid, "VmRSS")["VmRSS"]
            rep.rss.append(("idle after start", "0", "-", f"{idle / 1024:.1f}",
                            f"{status_kib(pid, 'VmHWM')['VmHWM'] / 1024:.1f}"))

            import httpx

            t = time.monotonic()
            before = upstream_bytes(gh)
            r = httpx.get(f"{serve.url}/simple/{big.normalized_name}/",
                          headers={"Accept": PIP_ACCEPT}, timeout=60, trust_env=False)
            r.raise_for_status()
            rep.upstream.append(("catalog load (first page: releases API + meta archive)",
                                 upstream_bytes(gh) - before, "-", time.monotonic() - t))

            if "1" in plan.scenarios:
                log("scenario 1: upstream bytes")
                t = time.monotonic()
                scenario_upstream(rep, gh, serve.url, [pid], big, trf, run_dir)
                rep.timings["1 upstream bytes"] = time.monotonic() - t
            else:  # the big file into serve's cache (scenario 1's first install does that)
                drain(f"{serve.url}/files/{big.wheel.name}", 1,
                      expect_size=big.wheel.stat().st_size, server_pids=[pid],
                      timeout=plan.transfer_timeout)

            if "4" in plan.scenarios:
                log("scenario 4a: RSS, 8 clients, uncached first download")
                t = time.monotonic()
                scenario_rss(rep, gh, serve.url, pid, huge, cached=False)
                rep.timings["4a RSS uncached"] = time.monotonic() - t

            servers = {"serve": (serve.url, [pid])}
            if alt is not None:
                servers[alt_name] = (alt.url, alt.pids())
            if ngx is not None:
                servers["nginx"] = (ngx.url, ngx.pids())
            # nginx serves the very inode serve's cache holds: the same bytes *and* the same
            # page-cache pages (folio sizes follow how a file was written: a copy written in
            # large pieces is cheaper for sendfile to read than one written in small ones, by
            # ~10% CPU here), so the ratio compares the servers, not two copies of the file.
            sha = big.sha256
            cached = run_dir / "cache" / "files" / sha[:2] / sha
            served = static / "files" / big.wheel.name
            if ngx is not None and cached.is_file():
                served.unlink()
                os.link(cached, served)
                rep.notes.append("Scenario 2: nginx's copy of the big wheel is a hard link to "
                                 "serve's cache file (one inode, one set of page-cache pages).")
            elif ngx is not None:
                rep.notes.append("Scenario 2: serve's cache file was not found, so nginx serves "
                                 "its own copy of the big wheel (page-cache layouts may differ).")
            @contextlib.contextmanager
            def respawn() -> Iterator[Servers]:
                """New server processes (the same caches and files) for one repetition."""
                with contextlib.ExitStack() as group:
                    s_ = group.enter_context(spacy_index_serve(
                        cache_dir=run_dir / "cache", upstream=fake_pypi.url + "/simple/",
                        api_url=gh.api_url, token=TOKEN, log_dir=run_dir))
                    out: Servers = {"serve": (s_.url, [s_.pid])}
                    if alt is not None:
                        a_ = group.enter_context(spacy_index_serve(
                            cache_dir=run_dir / "cache-alt", upstream=fake_pypi.url + "/simple/",
                            api_url=gh.api_url, token=TOKEN, log_dir=run_dir,
                            python=args.compare_python))
                        out[alt_name] = (a_.url, a_.pids())
                    if ngx is not None:
                        n_ = group.enter_context(nginx(static, log_dir=run_dir))
                        if n_ is None:
                            raise RuntimeError("nginx did not start again")
                        out["nginx"] = (n_.url, n_.pids())
                    yield out

            if "2a" in plan.scenarios or "2b" in plan.scenarios:
                log("scenario 2: throughput")
                t = time.monotonic()
                scenario_throughput(rep, servers, big, None if args.same_processes else respawn)
                rep.timings["2 throughput"] = time.monotonic() - t
            if "2b" in plan.scenarios and not args.same_processes:
                rep.notes.append("Scenario 2b: every repetition ran against newly started server "
                                 "processes (serve on the same cache; nginx on the same files), "
                                 "each warmed by one download first.")
            if args.profile:
                t = time.monotonic()
                syscall_profile(rep, servers, big, run_dir)
                rep.timings["2c syscalls"] = time.monotonic() - t

            if "4" in plan.scenarios:
                log("scenario 4b: RSS, 8 clients, cached")
                t = time.monotonic()
                scenario_rss(rep, gh, serve.url, pid, huge, cached=True)
                rep.timings["4b RSS cached"] = time.monotonic() - t

            if "3" in plan.scenarios:
                log("scenario 3: project-page latency")
                t = time.monotonic()
                scenario_latency(rep, servers, big.normalized_name, run_dir, cross_check=True)
                # the default --log-level (info) writes one access-log line per request
                with spacy_index_serve(cache_dir=run_dir / "cache",
                                       upstream=fake_pypi.url + "/simple/", api_url=gh.api_url,
                                       token=TOKEN, log_dir=run_dir,
                                       log_level="info") as serve_info:
                    httpx.get(f"{serve_info.url}/simple/{big.normalized_name}/",
                              headers={"Accept": PIP_ACCEPT}, timeout=60, trust_env=False)
                    scenario_latency(rep, {"serve (log-level info)":
                                           (serve_info.url, [serve_info.pid])},
                                     big.normalized_name, run_dir)
                rep.timings["3 latency"] = time.monotonic() - t

            if args.profile:
                log("profiling with py-spy")
                t = time.monotonic()
                profile(rep, serve.url, pid, big, big.normalized_name, run_dir)
                rep.timings["profile"] = time.monotonic() - t

            rep.rss.append(("end of run (all scenarios)", "-", "-",
                            f"{status_kib(pid, 'VmRSS')['VmRSS'] / 1024:.1f}", "-"))
            if serve.process.proc.poll() is not None:
                raise RuntimeError("serve died:\n" + serve.process.tail())
            errors = [line for line in serve.process.tail(20000).splitlines()
                      if "Traceback" in line or "ERROR" in line.upper()]
            if errors:
                rep.notes.append(f"serve logged {len(errors)} error line(s), e.g. {errors[0][:200]!r}")
        rep.timings["total"] = time.monotonic() - t_all
    finally:
        if args.keep:
            log(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)

    machine = machine_info()
    text = render(rep, machine, started, argv_shown)
    print(text)
    out = args.out or (REPO / "bench" / "results" /
                       f"{dt.date.today().isoformat()}-serve{'-quick' if args.quick else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(as_json(rep, machine, started, argv_shown),
                                                indent=1) + "\n")
    log(f"wrote {out} and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
