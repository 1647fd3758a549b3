"""What `/metrics` costs `spacy-index serve`: project-page latency with metrics on and off.

    .venv/bin/python bench/metrics.py            # 21 interleaved repetitions of 3 s per server
    .venv/bin/python bench/metrics.py --quick    # 5 repetitions of 2 s (≈ 1 min)

Three `spacy-index serve` processes run side by side on 127.0.0.1, all started through the
real CLI (`spacy_index.cli.main(["serve", ...])`, same protocol, loop and logging); the only
difference is `create_app(server, metrics=False)` in the two "off" ones (no counting in the
access log middleware or the fast path's `log_fast`, no `/metrics`). The second "off" server
("off-b", `--no-control` skips it) is an A/A control: its ratio to "off" is the noise floor of
this shared machine at that moment. All answer a cached project page from a fake GitHub
(tests/fakegithub/) catalog, so nearly every request takes the task-free fast path
(`Server.fast_response`), the path whose cost matters most.

Load: `wrk -t 1 -c 32` (C, keep-alive, exact µs percentiles from a Lua `done()`, see
bench/harness/clients.py `wrk_latency`), one server at a time, the order rotating per repetition. The
goal is a p99 ratio (on ÷ off, the median of the per-repetition ratios) ≤ 1.05. A repetition
disturbed by other work on the machine (more than --max-other cores) is run again, up to
--tries times, and the least disturbed run is kept. Also reported: requests/s and server CPU
µs per request, and in-process micro timings of the fast path's counting (`AccessLog.log_fast`
with and without metrics) and of the `[auth]` guard that opens `Server.fast_response`
(`if self.auth_enabled: return None`).

Results: stdout and bench/results/<date>-metrics[-quick].md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import wrk_latency
from harness.procfs import wait_quiet
from harness.servers import ManagedProcess, start_on_free_port
from harness.util import REPO, log
from metrics_report import CLIENTS, GOAL, report

TOKEN = "fake-ghp-BENCHMETRICStoken0123456789abcd"
PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
              "text/html; q=0.01")


# --------------------------------------------------------------------------- the servers
def child(mode: str, argv: list[str]) -> int:
    """The server process: the real CLI, with ``create_app(metrics=False)`` for "off"."""
    from spacy_index.server import wiring as app_module

    if mode.startswith("off"):
        real = app_module.create_app
        app_module.create_app = lambda server, **kw: real(server, metrics=False)
    from spacy_index.cli import main

    return main(["serve", *argv])


@contextlib.contextmanager
def serve(mode: str, *, run_dir: Path, upstream: str, api_url: str, log_level: str):
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("PIP_", "UV_", "GITHUB_")) and "proxy" not in k.lower()}
    env.update(GITHUB_API_URL=api_url, GITHUB_TOKEN=TOKEN, PYTHONPATH=str(REPO / "src"))
    proc, url = start_on_free_port(
        lambda port: [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--",
                      "--host", "127.0.0.1", "--port", str(port), "--cache-dir",
                      str(run_dir / f"cache-{mode}"), "--upstream", upstream,
                      "--log-level", log_level],
        env=env, log_for=lambda port: run_dir / f"serve-{mode}-{port}.log",
        what=f"serve ({mode})", timeout=60)
    try:
        yield url, proc
    finally:
        proc.stop()


# --------------------------------------------------------------------------- micro timings
def micro(work: Path) -> dict[str, float]:
    """ns per call: log_fast with/without metrics (access log off); fast_response of a
    rendered page; the auth guard's attribute test on its own."""
    import logging

    from spacy_index.server.accesslog import AccessLog
    from spacy_index.server.metrics import Metrics
    from spacy_index.server.state import Server

    logging.getLogger("spacy_index.access").setLevel(logging.WARNING)

    class Owner:
        cache_dir = work

    on = AccessLog(None, metrics=Metrics(Owner()))  # type: ignore[arg-type]
    off = AccessLog(None)  # type: ignore[arg-type]
    scope = {"method": "GET", "path": "/simple/en-core-web-sm/", "query_string": b"",
             "headers": [(b"accept", PIP_ACCEPT.encode())]}
    n = 300_000

    def best(fn) -> float:
        return min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e9

    out = {"log_fast_on_ns": best(lambda: on.log_fast(scope, 200, 1000)),
           "log_fast_off_ns": best(lambda: off.log_fast(scope, 200, 1000))}
    guard = Server.__new__(Server)
    guard.auth_enabled = False
    out["auth_guard_ns"] = best(lambda: guard.auth_enabled) - best(lambda: None)
    return out


# --------------------------------------------------------------------------- main
def parse_args(args_in: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 repetitions of 2 s (≈ 1 min)")
    ap.add_argument("--reps", type=int, help="repetitions (default 21; 5 with --quick)")
    ap.add_argument("--seconds", type=int, help="seconds per wrk run (default 3; 2 with --quick)")
    ap.add_argument("--access-log", action="store_true",
                    help="run both servers at --log-level info (access log on); default warning")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the second metrics-off server (\"off-b\") whose p99 ratio to \"off\" "
                    "shows how far two identical servers differ on this machine now")
    ap.add_argument("--tries", type=int, default=3, help="runs of a repetition's pair while other "
                    "work on the machine disturbs it (the least disturbed is kept)")
    ap.add_argument("--max-other", type=float, default=0.3,
                    help="cores of other work above which a pair is run again")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="longest wait for a quiet machine before each pair (s)")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "spacy-index-bench")
    ap.add_argument("--out", type=Path, help="report (default bench/results/<date>-metrics[-quick].md)")
    args = ap.parse_args(args_in)
    args.reps = max(1, args.reps or (5 if args.quick else 21))
    args.seconds = max(1, args.seconds or (2 if args.quick else 3))
    args.log_level = "info" if args.access_log else "warning"
    return args


def start_servers(stack: contextlib.ExitStack, args: argparse.Namespace, run_dir: Path,
                  modes: list[str]) -> tuple[Any, dict[str, tuple[str, ManagedProcess]]]:
    """The pipeline, FakeGitHub, a placeholder PyPI and one serve per mode, each page warm."""
    import httpx
    from tests.clients import serve_directory
    from tests.fakegithub import FakeGitHub
    from tests.wheels import build_model_package, default_spacy_version, meta_archive

    pkg = build_model_package(run_dir / "wheel", name="core_web_sm", version="3.8.50",
                              pad_bytes=0, spacy_version=default_spacy_version())
    (run_dir / "pypi").mkdir()
    gh = stack.enter_context(FakeGitHub(load_fixture=False, archive=meta_archive([pkg]),
                                        token=TOKEN))
    gh.add_release(f"{pkg.project}-{pkg.version}", {pkg.wheel.name: pkg.wheel.read_bytes()})
    pypi = stack.enter_context(serve_directory(run_dir / "pypi"))
    servers = {}
    for mode in modes:
        url, proc = stack.enter_context(serve(mode, run_dir=run_dir, upstream=pypi.url + "/simple/",
                                              api_url=gh.api_url, log_level=args.log_level))
        servers[mode] = (url, proc)
        page = f"{url}/simple/{pkg.normalized_name}/"
        for _ in range(3):  # load the catalog, render, then answered by the fast path
            httpx.get(page, headers={"Accept": PIP_ACCEPT}, timeout=60,
                      trust_env=False).raise_for_status()
    assert httpx.get(servers["off"][0] + "/metrics", trust_env=False).status_code == 404
    return pkg, servers


def one_pair(args: argparse.Namespace, rep: int, order: list[str], servers: dict, page: str,
             run_dir: Path) -> tuple[float, dict]:
    """Repetition ``rep``: the least disturbed of up to ``--tries`` runs of every server in
    ``order``; (other load in cores, latency per mode)."""
    best: tuple[float, dict] | None = None
    for attempt in range(args.tries):
        waited, load = wait_quiet(max_wait=args.quiet_wait)
        if load >= 0.2:
            log(f"  machine still busy ({load:.2f} cores of other work) after {waited:.0f}s")
        pair = {}
        for mode in order:
            url, proc = servers[mode]
            lat = wrk_latency(url + page, CLIENTS, args.seconds,
                              accept=PIP_ACCEPT, server_pids=[proc.pid], work=run_dir)
            if lat.errors:
                raise RuntimeError(f"{mode}: {lat.errors} failed requests")
            pair[mode] = lat
        disturbed = max(p.other_cores for p in pair.values())
        log(f"rep {rep + 1}/{args.reps} try {attempt + 1}: " + "; ".join(
            f"{m} p50 {p.p50_ms:.2f} ms p99 {p.p99_ms:.2f} ms {p.rps:,.0f} req/s "
            f"{p.cpu_us_per_req:.1f} µs CPU/req" for m, p in pair.items())
            + f"; other load {disturbed:.2f} cores")
        if best is None or disturbed < best[0]:
            best = (disturbed, pair)
        if disturbed <= args.max_other:
            break
    assert best is not None
    return best


def measure(args: argparse.Namespace, run_dir: Path, modes: list[str]) -> dict:
    """Every repetition, the order of the modes rotating (and reversed every other one)."""
    import httpx

    runs: dict[str, list] = {m: [] for m in modes}
    other: list[float] = []
    with contextlib.ExitStack() as stack:
        pkg, servers = start_servers(stack, args, run_dir, modes)
        page = f"/simple/{pkg.normalized_name}/"
        for url, proc in servers.values():  # warm-up, not measured
            wrk_latency(url + page, CLIENTS, 1, accept=PIP_ACCEPT,
                        server_pids=[proc.pid], work=run_dir)
        for rep in range(args.reps):
            order = modes[rep % len(modes):] + modes[:rep % len(modes)]
            if rep % 2:
                order.reverse()
            disturbed, pair = one_pair(args, rep, order, servers, page, run_dir)
            for mode, lat in pair.items():
                runs[mode].append(lat)
            other.append(disturbed)
        text = httpx.get(servers["on"][0] + "/metrics", trust_env=False).text
        fast = next((float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("spacy_index_fast_path_responses_total ")), 0.0)
    return {"runs": runs, "other": other, "fast": fast}


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["--child"]:
        mode = args_in[1]
        rest = args_in[3:] if args_in[2:3] == ["--"] else args_in[2:]
        return child(mode, rest)
    args = parse_args(args_in)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("wrk") is None:
        print("error: wrk is needed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=args.work_dir))
    log(f"work folder {run_dir}")
    modes = ["on", "off", *(["off-b"] if args.control else [])]
    got = measure(args, run_dir, modes)
    micro_ns = micro(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = "bench/metrics.py" + ("" if argv is None and not sys.argv[1:] else " " + " ".join(args_in))
    ratio = report(args, modes, got, micro_ns, started, cmd)
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
