"""Page latency of well-behaved clients while others abuse ``spacy-index serve`` (issue 14).

    .venv/bin/python bench/abuse.py            # 3 repetitions, 10 s windows (~4-6 min)
    .venv/bin/python bench/abuse.py --quick    # 1 repetition, 5 s windows (~1-2 min)

Set-up (127.0.0.1 only; every server and client process is stopped by the script, also on
error and SIGTERM):

* a fake **upstream** (a thread of this process, ``http.server``): a PEP 691 index whose
  ``/simple/demo/`` is a small JSON page (one sdist with a sha256) answered at once, as are
  ``fresh-*`` names; every project whose name starts with ``slowpoke`` is answered only after
  ``--slow-delay`` seconds (10); any other name is 404. It logs every request (path, delay, how many were in flight);
* ``spacy-index serve --config <toml> --upstream <upstream>/simple/ --log-level warning``, one
  process for the whole run, the TOML holding only ``[server] spacy_models = false`` (nothing
  goes to GitHub) and ``[limits] page_fetch`` (``--page-fetch``, default ``process``; the
  other limits at their defaults: 1000 connections, header_timeout 15 s, idle_timeout 5 s).
  ``/simple/demo/`` is requested once through it before the measurements, so every measured
  answer comes from serve's page cache (fresh for ``page_ttl`` 60 s, then
  stale-while-revalidate: answered from the cache while a background refresh runs);
* the **well-behaved clients**: one client process (``python -S bench/abuse_clients.py pages``,
  asyncio streams) with 8 keep-alive connections asking ``GET /simple/demo/`` with ``Accept:
  application/vnd.pypi.simple.v1+json`` at a fixed total rate (1000 req/s, staggered, each
  connection waits for its answer before the next request) for a fixed window. Paced, not
  closed-loop: a closed loop (wrk, bench/loadgen.py pages) would saturate serve's core and the
  machine's two, and measure queueing at saturation rather than what a well-behaved client
  waits. Latency = request written to last body byte (``time.monotonic_ns``); "held-up"
  latency also counts, for a request that could not be sent on time because the previous
  answer was late, the time it waited (coordinated omission; the client's own timer lag is
  not counted). Every answer must be 200 with the warm-up's body length.

Conditions, one after the other in each repetition (order rotated between repetitions):

1. ``baseline``: nothing else;
2. ``idle``: an abuser process holds 300 connections: 150 that connect and send nothing, 150
   that send ``GET /x HTTP/1.1\\r\\n`` and never finish the head. They are opened before the
   window and the window ends ~11 s after the first one opened, inside header_timeout (15 s);
   one closed before the window ends is re-opened (counted). After the window the abuser
   waits (≤ 20 s after opening) for serve to close them and reports when and how it did;
3. ``slow``: an abuser process with 24 clients asking for slow pages from 1 s before the
   window to its end: 8 ask for one slow project (``slowpoke-<tag>-s<g>``; once serve has
   answered it, i.e. cached it, the next one), 16 for a new uncached slow name each time
   (``slowpoke-<tag>-<client>-<k>``); in each group half wait for the
   answer (≤ 30 s), half give up after 2 s and ask again on a new connection. Their first
   requests are spread over 1 s (``--stagger``);
4. ``slow-burst``: the same, all 24 starting at once, so the impatient ones give up and ask
   again in step (12 new requests at the same moment every 2 s).

After each window a well-behaved client asks for 3 new uncached names at once (the upstream
answers ``fresh-*`` at once; 20 s timeout), while the abuse, or serve's upstream fetches for
the slow clients that have gone, still run: what a name serve has not cached costs then (not
part of the p99). Then the upstream answers the delayed requests at once, and the next run
waits (≤ 15 s) until none is in flight.

Per run: p50/p90/p99/p99.9/max of the well-behaved requests, failed requests, serve's CPU-s
(``/proc/PID/stat``) over the window, its peak RSS (VmHWM, reset with ``clear_refs`` before
each condition, read after the abusers are gone), the client's and the abuser's CPU, and the
other load (machine CPU from ``/proc/stat`` minus all of ours). The goal is on the **ratio of
the medians (over the repetitions) of p99**: condition ÷ baseline ≤ 1.5. Before each run the
script waits (bounded) for a quiet machine; a run with more than 0.3 cores of other load is
retried once (quick: never), keeping the less disturbed try. Results: stdout and
bench/results/<date>-abuse[-quick].md (+ .json: every run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from abuse_clients import JSON_TYPE, SLOW_PREFIX, probe
from abuse_report import CONDITIONS, SLOW, render, summarize
from abuse_upstream import Upstream
from harness.procfs import cpu_seconds, reset_peak_rss, status_kib, system_cpu, wait_quiet
from harness.report import machine_info, run_measured, write_results
from harness.servers import ManagedProcess, spacy_index_serve
from harness.util import REPO, log

#: the client processes (``python -S``: standard library and bench/harness only)
CLIENTS = Path(__file__).resolve().parent / "abuse_clients.py"


# --------------------------------------------------------------------------- serve
@contextlib.contextmanager
def start_serve(config: Path, upstream: str, cache: Path, log_dir: Path):
    """``spacy-index serve --config`` on a free 127.0.0.1 port (harness.servers.spacy_index_serve);
    yields the ManagedProcess, its URL and its port. GitHub is never asked
    (``spacy_models = false``)."""
    with spacy_index_serve(cache_dir=cache, upstream=upstream, api_url="http://127.0.0.1:9",
                           token=None, log_dir=log_dir,
                           extra_args=["--config", str(config)]) as handle:
        yield handle.process, handle.url, int(handle.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def spawn(argv: list[str]):
    """A client process (stdout piped), killed at exit if still running."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.communicate(timeout=5)


def read_line(p: subprocess.Popen, timeout: float) -> dict:
    """The next JSON line of ``p``'s stdout within ``timeout`` s."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box or not box[0].strip():
        err = ""
        if p.poll() is not None:
            err = p.stderr.read()[-2000:]
        raise RuntimeError(f"{p.args[3]} client: no answer within {timeout}s {err}")
    return json.loads(box[0])


def finish(p: subprocess.Popen, timeout: float) -> dict:
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{p.args[3]} client failed ({p.returncode}): {err[-2000:]}")
    lines = [x for x in out.splitlines() if x.strip()]
    return json.loads(lines[-1])


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests (``steal`` in /proc/stat), all cores."""
    with open("/proc/stat") as fh:
        return int(fh.readline().split()[8]) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- one run
def run_condition(cond: str, rep: int, w: dict, args: argparse.Namespace) -> dict:
    """One measurement of ``cond``: abuser up, window of well-behaved requests, abuser down."""
    up: Upstream = w["upstream"]
    mp: ManagedProcess = w["serve"]
    pid = mp.pid
    tag = f"r{rep}{cond[0]}{w['tries']}"
    w["tries"] += 1
    log_offset = mp.log_path.stat().st_size
    up.released.clear()
    mark = up.mark()
    hwm_reset = reset_peak_rss(pid)
    cpu_cond0 = cpu_seconds([pid])
    now = time.monotonic()
    t_abuse = now + 1.5  # abuser ready by then (300 connections take < 0.5 s)
    start = t_abuse + (1.0 if cond in SLOW else 0.5)
    end = start + args.window
    result: dict[str, Any] = {"condition": cond, "rep": rep, "tag": tag,
                              "hwm_reset": hwm_reset}
    with contextlib.ExitStack() as stack:
        abuser = _start_abuser(cond, stack, tag, (now, t_abuse, end), w, args, result)
        _window(cond, stack, abuser, start, w, args, result)
        # slow: its clients are gone by now (not serve's upstream fetches for them)
        slow_out = finish(abuser, 60) if abuser is not None and cond in SLOW else None
        result["probes"] = probe(w["port"], tag, args.probes, 2 * args.slow_delay)
        if abuser is not None:
            result["abuser"] = slow_out or finish(abuser, 60)
    # the slow well-behaved requests: how many began just after the slow clients sent requests
    sent = sorted(e[0] for e in result.get("abuser", {}).get("events", []))
    result["over_5ms_after_slow_requests"] = sum(
        1 for t, _ms in result["pages"]["slow_at"] if any(0 <= t - x <= 0.15 for x in sent))
    _after_window(up, mark, mp, log_offset, cpu_cond0, result)
    p = result["pages"]
    log(f"  {cond} (rep {rep + 1}): p50 {p['p50']:.3f} p99 {p['p99']:.3f} max {p['max']:.1f} ms"
        f", {p['requests']} requests, {p['errors']} failed; serve {result['serve_cores']:.2f} "
        f"cores, VmHWM {result['vmhwm_kib'] / 1024:.1f} MiB; client {result['client_cores']:.2f}, "
        f"abuser {result['abuser_cores']:.2f}, other {result['other_cores']:.2f} cores; "
        f"{result['serve_log_lines']} serve log lines")
    return result


def _start_abuser(cond: str, stack: contextlib.ExitStack, tag: str,
                  times: tuple[float, float, float], w: dict, args: argparse.Namespace,
                  result: dict[str, Any]) -> subprocess.Popen | None:
    """The abuser process of ``cond`` (None for baseline), once it says it is ready."""
    now, t_abuse, end = times
    me, port = [sys.executable, "-S", str(CLIENTS)], str(w["port"])
    abuser = None
    if cond == "idle":
        abuser = stack.enter_context(spawn(
            [*me, "idle", "--port", port, "--n", str(args.idle), "--window-end", repr(end),
             "--hold-until", repr(now + 20.0)]))
        ready = read_line(abuser, 20)
        result["abuser_ready"] = ready
        if ready["ready"] != args.idle:
            log(f"  idle: only {ready['ready']}/{args.idle} connections opened")
    elif cond in SLOW:
        abuser = stack.enter_context(spawn(
            [*me, "slow", "--port", port, "--tag", tag, "--same", str(args.slow_same),
             "--distinct", str(args.slow_distinct), "--impatient", str(args.impatient),
             "--begin", repr(t_abuse), "--window-end", repr(end),
             "--stagger", "0" if cond == "slow-burst" else str(args.stagger)]))
        result["abuser_ready"] = read_line(abuser, 20)
    return abuser


def _window(cond: str, stack: contextlib.ExitStack, abuser: subprocess.Popen | None,
            start: float, w: dict, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The well-behaved client's window, with every party's CPU over it."""
    pid = w["serve"].pid
    pages = stack.enter_context(spawn(
        [sys.executable, "-S", str(CLIENTS), "pages", "--port", str(w["port"]),
         "--connections", str(args.connections), "--rate",
         str(args.rate), "--start", repr(start), "--seconds", str(args.window),
         "--expect-bytes", str(w["page_bytes"])]))
    if time.monotonic() > start - 0.2:
        log(f"  {cond}: the client started late ({time.monotonic() - start:+.2f} s)")
    time.sleep(max(0.0, start - time.monotonic()))
    apids = [abuser.pid] if abuser else []
    s0, sys0, a0, m0 = cpu_seconds([pid]), system_cpu(), cpu_seconds(apids), os.times()
    st0 = steal_seconds()
    res = finish(pages, args.window + 60)
    s1, sys1, m1 = cpu_seconds([pid]), system_cpu(), os.times()
    st1 = steal_seconds()
    try:  # not reaped yet: a finished abuser's /proc entry (a zombie) still has its times
        a1 = cpu_seconds(apids)
    except OSError:
        a1 = a0
    wall = res["seconds"]
    serve_cpu = s1 - s0
    abuser_cpu = a1 - a0
    main_cpu = (m1.user + m1.system) - (m0.user + m0.system)
    other = (sys1 - sys0) - serve_cpu - res["cpu"] - abuser_cpu - main_cpu
    result.update(pages=res, serve_cpu=serve_cpu, serve_cores=serve_cpu / wall,
                  client_cores=res["cpu"] / wall, abuser_cores=abuser_cpu / wall,
                  main_cores=main_cpu / wall, other_cores=max(0.0, other / wall),
                  steal_cores=(st1 - st0) / wall,
                  window=wall)


def _after_window(up: Upstream, mark: int, mp: ManagedProcess, log_offset: int,
                  cpu_cond0: float, result: dict[str, Any]) -> None:
    """Release the delayed pages, then serve's memory, CPU, upstream requests and log."""
    pid = mp.pid
    up.released.set()  # delayed pages answer now; wait until none is held
    for _ in range(300):
        with up.lock:
            if up.in_flight == 0:
                break
        time.sleep(0.05)
    time.sleep(0.3)  # serve parses and stores what just arrived
    st = status_kib(pid, "VmHWM", "VmRSS")
    reqs = up.since(mark)
    result.update(
        vmhwm_kib=st["VmHWM"], vmrss_kib=st["VmRSS"], serve_cpu_condition=cpu_seconds([pid])
        - cpu_cond0,
        upstream={"requests": len(reqs),
                  "demo": sum(1 for r in reqs if r["name"] == "demo"),
                  "slow": sum(1 for r in reqs if (r["name"] or "").startswith(SLOW_PREFIX)),
                  "slow_unsent": sum(1 for r in reqs if not r["sent"]),
                  "slow_distinct_names": len({r["name"] for r in reqs
                                              if (r["name"] or "").startswith(SLOW_PREFIX)}),
                  "peak_delayed_in_flight": up.peak_in_flight})
    text = mp.log_path.read_bytes()[log_offset:].decode(errors="replace")
    lines = [x for x in text.splitlines() if x.strip()]
    result["serve_log_lines"] = len(lines)
    result["serve_log"] = lines[:12]
    result["serve_alive"] = mp.proc.poll() is None


def measured(cond: str, rep: int, w: dict, args: argparse.Namespace) -> dict:
    """``run_condition`` after a quiet wait; retried when other load disturbed it."""
    best = None
    for attempt in range(args.tries):
        budget = min(args.quiet_wait, args.quiet_budget - w["waited"])
        if budget > 0:
            waited, load = wait_quiet(max_wait=budget)
            w["waited"] += waited
            if load >= 0.2:
                log(f"  machine still busy ({load:.2f} cores) after {waited:.0f}s; going on")
        r = run_condition(cond, rep, w, args)
        r["attempt"] = attempt
        if best is None or r["other_cores"] < best["other_cores"]:
            best = r
        if r["other_cores"] <= args.other_max:
            break
        w["retries"] += attempt < args.tries - 1
        log(f"  {cond}: {r['other_cores']:.2f} cores of other load; "
            + ("retrying" if attempt < args.tries - 1 else "keeping the less disturbed try"))
    return best


def measure(args: argparse.Namespace, run_dir: Path) -> dict:
    import httpx

    config = run_dir / "serve.toml"
    config.write_text(f"[server]\nspacy_models = false\n\n[limits]\n"
                      f"page_fetch = \"{args.page_fetch}\"\n")
    runs: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(Upstream(args.slow_delay))
        mp, url, port = stack.enter_context(
            start_serve(config, up.url + "/simple/", run_dir / "cache", run_dir))
        log(f"serve pid {mp.pid} at {url}, upstream {up.url}")
        rss_start = status_kib(mp.pid, "VmRSS", "VmHWM")
        r = httpx.get(url + "/simple/demo/", headers={"Accept": JSON_TYPE}, timeout=30,
                      trust_env=False)
        if r.status_code != 200 or r.headers.get("content-type", "").split(";")[0] != JSON_TYPE:
            raise RuntimeError(f"warm-up: {r.status_code} {r.headers} {r.text[:300]}")
        page = r.json()
        w = {"upstream": up, "serve": mp, "port": port, "page_bytes": len(r.content),
             "tries": 0, "waited": 0.0, "retries": 0}
        # untimed warm-up of the client path (and serve's) at the measured rate
        with spawn([sys.executable, "-S", str(CLIENTS), "pages", "--port",
                    str(port), "--connections", str(args.connections), "--rate",
                    str(args.rate), "--start", repr(time.monotonic() + 0.5), "--seconds", "2",
                    "--expect-bytes", str(w["page_bytes"])]) as p:
            warm = finish(p, 60)
        if warm["errors"]:
            raise RuntimeError(f"warm-up run failed: {warm}")
        log(f"warm-up: {warm['requests']} requests, p99 {warm['p99']:.3f} ms")
        for rep in range(args.reps):
            k = rep % len(CONDITIONS)
            order = list(CONDITIONS[k:] + CONDITIONS[:k])
            log(f"rep {rep + 1}/{args.reps}: {' → '.join(order)}")
            for cond in order:
                runs[cond].append(measured(cond, rep, w, args))
        rss_end = status_kib(mp.pid, "VmRSS")
        log_tail = mp.tail(4000)
    return {"runs": runs, "summary": summarize(runs), "page_bytes": w["page_bytes"],
            "page": page, "warm_up": warm, "rss_start_kib": rss_start, "rss_end_kib": rss_end,
            "serve_log_tail": log_tail, "retries": w["retries"], "quiet_waited": w["waited"],
            "params": {k: getattr(args, k) for k in (
                "window", "rate", "connections", "idle", "slow_same", "slow_distinct",
                "slow_delay", "impatient", "stagger", "probes", "tries", "other_max")}}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, 5 s windows")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--window", type=float, help="seconds per measurement (10, quick 5; ≤ 11: "
                    "the idle connections must outlive it within header_timeout)")
    ap.add_argument("--rate", type=float, default=1000, help="well-behaved req/s in all (1000)")
    ap.add_argument("--connections", type=int, default=8, help="well-behaved connections (8)")
    ap.add_argument("--idle", type=int, default=300, help="idle + half-sent connections (300)")
    ap.add_argument("--slow-same", type=int, default=8,
                    help="slow clients asking for the one slow project (8)")
    ap.add_argument("--slow-distinct", type=int, default=16,
                    help="slow clients asking for a new uncached slow name each time (16)")
    ap.add_argument("--slow-delay", type=float, default=10.0, help="upstream delay, s (10)")
    ap.add_argument("--impatient", type=float, default=2.0,
                    help="seconds the impatient slow clients wait before asking again (2)")
    ap.add_argument("--stagger", type=float, default=1.0,
                    help="condition slow: the slow clients' first requests spread over this "
                    "many seconds (slow-burst: all at once) (1)")
    ap.add_argument("--probes", type=int, default=3,
                    help="new uncached names asked after each window (3)")
    ap.add_argument("--quiet-wait", type=float, help="max s to wait for a quiet machine before "
                    "each run (default 20, quick 3)")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (serve's log)")
    ap.add_argument("--page-fetch", choices=("process", "thread"), default="process",
                    help="serve's [limits] page_fetch: upstream page fetches in a process of "
                    "their own (the default) or in a thread of serve's process")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.window = args.window or (5.0 if args.quick else 10.0)
    if args.window > 11:
        ap.error("--window must be ≤ 11 s (header_timeout 15 s)")
    if args.quiet_wait is None:
        args.quiet_wait = 3.0 if args.quick else 20.0
    args.quiet_budget = 30.0 if args.quick else 180.0
    args.tries = 1 if args.quick else 2
    args.other_max = 0.3
    data = run_measured("abuse", args, measure)
    if "machine" not in data:
        data["machine"] = machine_info()
    text = render(data, args)
    print(text)
    write_results("abuse", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
