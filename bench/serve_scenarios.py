"""The scenarios of bench/serve.py (what they measure: see its docstring), their plan and the
report they fill."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.clients import SINKS, Drain, Latency, Transfer, drain, loadgen_latency, wrk_latency
from harness.procfs import RssSampler, reset_peak_rss, set_affinity, status_kib
from harness.timing import Steady, in_order
from harness.util import GB, MB, VENV_BIN, fmt_bytes, log, median

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
    #: scenario 2: (server CPUs, client CPUs), or None to let the scheduler place both
    pin: tuple[frozenset[int], frozenset[int]] | None = None

    @property
    def client_cpus(self) -> frozenset[int] | None:
        return self.pin[1] if self.pin else None


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
    steady: Steady = field(init=False)

    def __post_init__(self) -> None:
        p = self.plan
        self.steady = Steady(quiet_wait=p.quiet_wait, quiet_budget=p.quiet_budget,
                             other_max=p.other_max, tries=p.tries)


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


def repeats_for(plan: Plan, clients: int, size: int) -> int:
    """Downloads per client so that one measurement moves ≥ ~1.2 GB (quick) / 6.4 GB (full):
    over a second at loopback speeds (3-6 GB/s with sendfile), so that 10 ms CPU ticks are
    precise and one scheduling hiccup does not decide a repetition (1.6 GB runs of ~0.35 s
    varied ±30% between repetitions, nginx's as much as serve's)."""
    target = (1.2 if plan.quick else 6.4) * GB
    return max(1, -(-int(target) // (clients * size)))


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
            rep.steady.quiet()
            for pos, name in enumerate(in_order(list(servers), r + i)):
                url, pids = servers[name]
                t = rep.steady.measured(functools.partial(
                    drain, url + path, 1, count=count, expect_size=size, server_pids=pids,
                    timeout=rep.plan.transfer_timeout, sink=sink, fresh=True,
                    affinity=rep.plan.client_cpus),
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


@contextlib.contextmanager
def pinned(plan: Plan, servers: Servers):
    """Scenario 2's servers (every thread, child processes too) on ``plan.pin``'s server CPUs
    while inside, back on every CPU after; nothing when ``plan.pin`` is None."""
    if plan.pin is None:
        yield
        return
    pids = [pid for _url, group in servers.values() for pid in group]
    set_affinity(pids, plan.pin[0])
    try:
        yield
    finally:
        set_affinity(pids, None)


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
            drain(url + path, 1, expect_size=size, server_pids=pids, timeout=timeout,
                  affinity=rep.plan.client_cpus)

    with pinned(rep.plan, servers):
        warm(servers)
        if "2a" in rep.plan.scenarios:
            rep.sink = scenario_sinks(rep, servers, big)
    log(f"  bulk client: {rep.sink}")
    for conn in rep.plan.connections:
        for r in range(rep.plan.reps):
            with (respawn() if respawn else contextlib.nullcontext(servers)) as group, \
                    pinned(rep.plan, group):
                if respawn:
                    warm(group)
                run_repetition(rep, group, big, conn, r)


def run_repetition(rep: Report, servers: Servers, big, conn: str, r: int) -> None:
    """Repetition ``r`` of 2b: 1 then 8 clients, the servers back to back (order alternating)."""
    size = big.wheel.stat().st_size
    path = f"/files/{big.wheel.name}"
    for clients in rep.plan.clients:
        count = repeats_for(rep.plan, clients, size)
        rep.steady.quiet()
        for pos, name in enumerate(in_order(list(servers), r)):
            url, pids = servers[name]
            t = rep.steady.measured(functools.partial(
                drain, url + path, clients, count=count, expect_size=size, server_pids=pids,
                timeout=rep.plan.transfer_timeout, sink=rep.sink, fresh=conn == "fresh",
                affinity=rep.plan.client_cpus),
                f"{name} x{clients} {conn}")
            t.order = pos
            rep.drains.setdefault((name, clients, conn), []).append(t)
            log(f"  {conn} rep {r + 1} {name} x{clients} (x{count} each): "
                f"{t.mbps:,.0f} MB/s, server {t.cpu_per_gb:.3f} CPU-s/GB "
                f"({t.server_cores:.2f} cores), clients {t.clients_cores:.2f} cores "
                f"(busiest {t.client_cores_max:.2f}), other {t.other_cores:.2f} cores")


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
            rep.steady.quiet()
            for name, (url, pids) in servers.items():
                label = name if threads == 1 else f"{name}, wrk -t {threads}"
                if use_wrk:
                    lat = rep.steady.measured(functools.partial(
                        wrk_latency, f"{url}/simple/{project}/", clients, secs,
                        accept=PIP_ACCEPT, server_pids=pids, work=work, threads=threads),
                        f"{label} x{clients}")
                else:
                    lat = rep.steady.measured(functools.partial(
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
            rep.steady.quiet()
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
