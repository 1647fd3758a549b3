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
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_report import render, summarize
from cache_servers import resolve_urls, run_client, start_proxpi, start_serve
from cache_upstream import Upstream, upstream_counts
from cache_workload import (
    CLIENT_FIELDS,
    DiskPeak,
    build_wheels,
    longest_over,
    pct,
    proxpi_kind,
    serve_kind,
    simulate,
    split_by_upstream,
    zipf_sequence,
)
from harness.logs import LogTail, gunicorn_counts, serve_counts
from harness.procfs import Meter, wait_quiet
from harness.report import run_measured, write_results
from harness.timing import in_order
from harness.util import REPO, fmt_bytes, log
from peers import PEERS, ensure_peer

# bench/ first on sys.path shadows packages with a bench module's name (bench/catalogue.py vs
# ``catalogue``); the bench modules are imported, so drop it (as bench/proxy.py does)
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _BENCH]

SERVERS = ("serve", "proxpi")


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
    out = {"server": server, "rep": rep, **_requests(res, seq, up.since(mark), files, upc),
           "wall": wall, "client_wall": res["wall"], "quiet_wait": waited,
           "load_before": load_before, "server_cpu": server_cpu, "client_cpu": client_cpu,
           "other_cores": max(0.0, (system - server_cpu - client_cpu) / span)}
    out = _ordered(out, pages, disk)
    out.update(_server_log(server, text, len(seq)))
    out.update(_bound(disk, cap, world["largest"], text))
    log(f"  {tag}: {out['ok']}/{len(seq)} ok in {res['wall']:.1f} s, hit rate "
        f"{out['hit_rate']:.1%} ({out['misses']} upstream GETs, {fmt_bytes(upc['file_bytes'])}, "
        f"{upc['file_heads']} HEADs, {out['redirected']} redirected), p50 {out['p50_ms']:.1f} ms "
        f"p99 {out['p99_ms']:.1f} ms, peak cache {fmt_bytes(out['peak_bounded'])} (cap "
        f"{fmt_bytes(cap)}; all {fmt_bytes(disk.peak.get('all', 0))})")
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
    return out


#: the keys of one run's record, in the order the JSON has always had them
_RUN_KEYS = (
    "server", "rep", "requests", "completed", "ok", "failed", "wall", "client_wall",
    "quiet_wait", "load_before", "server_cpu", "client_cpu", "other_cores", "misses",
    "failed_requests", "hit_rate", "upstream", "pages", "p50_ms", "p90_ms", "p99_ms", "max_ms",
    "mean_ms", "ttfb_p50_ms", "hit_requests", "miss_requests", "hit_p50_ms", "hit_p99_ms",
    "miss_p50_ms", "miss_p99_ms", "redirected", "client_bytes", "disk_peak", "disk_peak_at",
    "disk_final", "disk_samples", "samples_over_cap", "samples_over_limit", "disk_series",
    "latencies_ms")


def _ordered(out: dict, pages: dict, disk: DiskPeak) -> dict:
    out.update(pages=pages, disk_peak=disk.peak, disk_peak_at=disk.peak_at,
               disk_final=disk.last, disk_samples=disk.samples,
               samples_over_cap=disk.over_cap, samples_over_limit=disk.over_limit,
               disk_series=disk.series)
    return {k: out[k] for k in _RUN_KEYS}


def _requests(res: dict, seq: list[int], reqs: list[dict], files: list[dict],
              upc: dict) -> dict:
    """What the client saw: completions, failures, hit rate, latency (all, and split by
    whether an upstream fetch of the file was under way)."""
    rows = [r for r in res["results"] if r is not None]
    done = [r for r in rows if r[9]]
    lat = [r[6] * 1000 for r in done]
    missed = split_by_upstream(done, reqs, files)
    lat_miss = [x for x, m in zip(lat, missed, strict=True) if m]
    lat_hit = [x for x, m in zip(lat, missed, strict=True) if not m]
    n = len(seq)
    misses = upc["file_gets_200"]
    failed = n - len(done)
    return {
        "requests": n, "completed": len(rows), "ok": len(done),
        "failed": [dict(zip(CLIENT_FIELDS, r, strict=False)) for r in rows if not r[9]][:5],
        "misses": misses, "failed_requests": failed, "hit_rate": 1 - (misses + failed) / n,
        "upstream": upc,
        "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat, default=float("nan")), "mean_ms": sum(lat) / len(lat) if lat else None,
        "ttfb_p50_ms": pct([r[7] * 1000 for r in done], 0.50),
        "hit_requests": len(lat_hit), "miss_requests": len(lat_miss),
        "hit_p50_ms": pct(lat_hit, 0.50), "hit_p99_ms": pct(lat_hit, 0.99),
        "miss_p50_ms": pct(lat_miss, 0.50), "miss_p99_ms": pct(lat_miss, 0.99),
        "redirected": sum(1 for r in rows if r[8]),
        "client_bytes": sum(r[4] for r in rows),
        "latencies_ms": [round(r[6] * 1000, 2) for r in rows],
    }


def _server_log(server: str, text: str, n: int) -> dict:
    """What the server's own log says: hits/misses and evictions (serve), redirects
    (proxpi)."""
    out: dict = {}
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
    return out


def _bound(disk: DiskPeak, cap: int, largest: int, text: str) -> dict:
    """The cache folder's size against the cap and serve's documented bound (cap + the
    largest file), and the exceptions the server logged."""
    out: dict = {}
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
    out["longest_over_limit_s"] = longest_over(disk.series, cap + largest)
    out["longest_over_cap_s"] = longest_over(disk.series, cap)
    out["bound_ok"] = bounded <= cap + largest
    out["over_cap"] = bounded - cap
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
            order = in_order(servers, rep)
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


# --------------------------------------------------------------------------- main


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
