"""The summary and the markdown report of bench/cache.py."""

from __future__ import annotations

from collections import Counter

from harness.report import md_table
from harness.util import fmt_bytes, median

METRICS = (  # key, label, format, higher is better
    ("hit_rate", "hit rate (1 - (upstream file downloads + failed requests) / requests)",
     "{:.1%}", True),
    ("misses", "upstream file downloads (GET 200)", "{:.0f}", False),
    ("failed_requests", "failed requests (not 200 with the right body)", "{:.0f}", False),
    ("upstream_bytes", "upstream file bytes", "bytes", False),
    ("upstream_requests", "upstream requests (all: pages, HEADs, GETs)", "{:.0f}", False),
    ("p50_ms", "request latency p50 (ms)", "{:.1f}", False),
    ("p90_ms", "request latency p90 (ms)", "{:.1f}", False),
    ("p99_ms", "request latency p99 (ms)", "{:.1f}", False),
    ("max_ms", "request latency max (ms)", "{:.1f}", False),
    ("hit_p50_ms", "latency p50, requests with no upstream fetch of their file meanwhile (ms)",
     "{:.1f}", False),
    ("hit_p99_ms", "latency p99, same (ms)", "{:.1f}", False),
    ("miss_p50_ms", "latency p50, requests during an upstream fetch of their file (ms)",
     "{:.1f}", False),
    ("miss_p99_ms", "latency p99, same (ms)", "{:.1f}", False),
    ("client_wall", "wall time of the sequence (s)", "{:.2f}", False),
    ("log_hit_rate", "hit rate in the server's own log (serve: cache column; proxpi: none)",
     "{:.1%}", True),
    ("server_cpu", "server CPU (s)", "{:.2f}", False),
    ("peak_bounded", "peak cache size (serve: files/ + metadata/; proxpi: complete files)",
     "bytes", False),
    ("peak_held_100ms", "largest cache size held ≥ 100 ms (5 samples)", "bytes", False),
    ("peak_all", "peak cache folder, all (partial downloads, sqlite included)", "bytes", False),
)


def _value(r: dict, key: str) -> float | None:
    if key == "upstream_bytes":
        return r["upstream"]["file_bytes"]
    if key == "upstream_requests":
        return r["upstream"]["requests"]
    if key == "peak_all":
        return r["disk_peak"].get("all", 0)
    return r.get(key)


def summarize(runs: dict) -> dict:
    out: dict = {}
    for key, *_ in METRICS:
        per = {s: [_value(r, key) for r in rs] for s, rs in runs.items()}
        row = {s: median([v for v in vs if v is not None]) if vs else None for s, vs in per.items()}
        if "serve" in per and "proxpi" in per:
            ratios = [a / b if a is not None and b else None
                      for a, b in zip(per["serve"], per["proxpi"], strict=False)]
            good = [x for x in ratios if x is not None]
            row["ratios"] = ratios
            row["ratio"] = median(good) if good else None
        row["per_rep"] = per
        out[key] = row
    return out


def _fmt(v: float | None, fmt: str) -> str:
    if v is None or v != v:
        return "-"
    return fmt_bytes(v) if fmt == "bytes" else fmt.format(v)


def render(data: dict) -> str:
    _s, runs = data["summary"], data["runs"]
    p = data["params"]
    cap, ws = data["cap"], data["working_set"]
    list(runs)
    lines = [
        f"{p['files']} wheels, {p['min_mb']:g}-{p['max_mb']:g} MB, {fmt_bytes(ws)} in all; both "
        f"caches capped at {fmt_bytes(cap)} ({p['cap_fraction']:.3g} of it; largest file "
        f"{fmt_bytes(data['largest'])}). Zipf s = {p['zipf_s']} sequence of {p['requests']} "
        f"requests (seed {p['seed']}, {data['distinct_requested']} distinct files, "
        f"{fmt_bytes(data['requested_bytes'])} requested), {p['workers']} concurrent workers, the "
        f"same sequence for every run; fresh caches per run; {len(next(iter(runs.values()), []))} "
        "repetition(s), order alternating.", ""]
    lines += _metrics(data)
    lines += _bound_table(data)
    lines += _runs_table(data)
    lines += _failures_and_notes(data)
    return "\n".join(lines)


def _metrics(data: dict) -> list[str]:
    """The metrics, serve beside proxpi, and the simulated references."""
    s = data["summary"]
    runs = data["runs"]
    p = data["params"]
    servers = list(runs)
    lines: list[str] = []
    rows = []
    for key, label, fmt, _hb in METRICS:
        row = s[key]
        cells = [_fmt(row.get(sv), fmt) for sv in servers]
        if "ratio" in row:
            per = " / ".join(_fmt(x, "{:.2f}") for x in row["ratios"])
            cells += [_fmt(row["ratio"], "{:.2f}") + (f" ({per})" if len(row["ratios"]) > 1
                                                      and row["ratio"] is not None else "")]
        rows.append([label, *cells])
    head = ["metric (median of reps)", *("spacy-index serve" if sv == "serve" else "proxpi"
                                         for sv in servers)]
    if "serve" in servers and "proxpi" in servers:
        head.append("serve ÷ proxpi (per rep)")
    lines += [md_table(head, rows), ""]
    sim = data["simulated"]
    lines.append(
        f"Reference, the same sequence and cap played sequentially: LRU {sim['lru']['hit_rate']:.1%} "
        f"hit rate ({fmt_bytes(sim['lru']['missed_bytes'])} missed), proxpi-like LFU "
        f"{sim['lfu']['hit_rate']:.1%} ({fmt_bytes(sim['lfu']['missed_bytes'])}); an unbounded "
        f"cache {1 - data['compulsory_misses'] / p['requests']:.1%} "
        f"({data['compulsory_misses']} compulsory misses).")
    lines.append("")
    return lines


def _bound_table(data: dict) -> list[str]:
    """Each run's cache size against the cap and serve's bound."""
    runs = data["runs"]
    cap = data["cap"]
    servers = list(runs)
    lines: list[str] = []
    brows = []
    for sv in servers:
        for r in runs[sv]:
            pk = r["disk_peak"]
            brows.append([f"{sv} #{r['rep'] + 1}", fmt_bytes(r["peak_bounded"]),
                          ("+" if r["over_cap"] >= 0 else "-") + fmt_bytes(abs(r["over_cap"])), fmt_bytes(r["peak_held_100ms"]),
                          fmt_bytes(pk.get("partial", 0)), fmt_bytes(pk.get("all", 0)),
                          fmt_bytes(r["disk_final"].get("bounded" if sv == "serve" else "files", 0)),
                          "yes" if r["bound_ok"] else "**NO**",
                          f"{r['samples_over_cap'] / max(1, r['disk_samples']):.0%} / "
                          f"{r['samples_over_limit'] / max(1, r['disk_samples']):.0%}",
                          f"{r['longest_over_cap_s'] * 1000:.0f} / "
                          f"{r['longest_over_limit_s'] * 1000:.0f}",
                          str(r["evictions"]) if r["evictions"] is not None else "-",
                          str(r["disk_samples"])])
    lines += [f"Bound: cap {fmt_bytes(cap)} + largest file {fmt_bytes(data['largest'])} = "
              f"{fmt_bytes(cap + data['largest'])} (serve documents \"within one file's size\"; "
              "sampled every 20 ms, apparent sizes):", "",
              md_table(["run", "peak cached", "peak - cap", "held ≥ 100 ms", "peak partial", "peak folder (all)",
                        "after the run", "≤ cap + 1 file", "samples over cap / over cap + 1 file",
                        "longest over cap / over cap + 1 file (ms)",
                        "evictions (serve log)", "samples"],
                       brows), ""]
    return lines


def _runs_table(data: dict) -> list[str]:
    """One row per run."""
    runs = data["runs"]
    servers = list(runs)
    lines: list[str] = []
    rrows = []
    for sv in servers:
        for r in runs[sv]:
            u = r["upstream"]
            extra = (f"log: {', '.join(f'{k} {v}' for k, v in sorted(r['log']['files'].items()))}"
                     if sv == "serve" else
                     f"gunicorn: {', '.join(f'{k} {v}' for k, v in sorted(r['log']['requests'].items()))}")
            rrows.append([f"{sv} #{r['rep'] + 1}", f"{r['ok']}/{r['requests']}",
                          f"{r['hit_rate']:.1%}", str(u["file_gets_200"]), str(u["file_heads"]),
                          str(u["client_gets"]), fmt_bytes(u["file_bytes"]), str(r["miss_requests"]),
                          f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}", f"{r['client_wall']:.1f}",
                          f"{r['server_cpu']:.1f}", f"{r['other_cores']:.2f}",
                          str(r["pages"]["requests"]), extra])
    lines += ["Per run (upstream = the local index's own request log; \"redirected\" = GETs by a "
              "client that proxpi sent to the upstream):", "",
              md_table(["run", "ok", "hit rate", "upstream GET 200", "upstream HEAD",
                        "redirected GETs", "upstream file bytes", "requests during a fetch",
                        "p50 / p99 ms", "wall s",
                        "server CPU s", "other load (cores)", "page-resolution upstream requests",
                        "server's own log"], rrows), ""]
    return lines


def _failures_and_notes(data: dict) -> list[str]:
    """Failed requests, the peer's settings and the notes."""
    runs = data["runs"]
    servers = list(runs)
    lines: list[str] = []
    fails = [(sv, r) for sv in servers for r in runs[sv] if r["ok"] != r["requests"]]
    for sv, r in fails:
        how = Counter(f"HTTP {x['status']}" if x["status"] else (x["error"] or "?")[:80]
                      for x in r["failed"])
        exc = ", ".join(f"{k} x{v}" for k, v in sorted(r["exceptions"].items())) or "none"
        lines.append(f"- {sv} #{r['rep'] + 1}: {r['requests'] - r['ok']} request(s) failed "
                     f"(first 5: {', '.join(f'{k} x{v}' for k, v in how.items())}); exceptions in "
                     f"its log: {exc}; e.g. "
                     + "; ".join(f"`{x[:110]}`" for x in r["exception_examples"][:3]))
    lines.append(f"Peer: {data['proxpi_version']} (gunicorn, 1 worker, 64 threads; defaults but "
                 "PROXPI_INDEX_URL, PROXPI_CACHE_DIR, PROXPI_CACHE_SIZE). Latency = request "
                 "sent to last body byte in the client (httpx, one keep-alive connection per "
                 "worker); every body's size is checked, and the sha256 of each file's first "
                 "request.")
    for note in data["notes"]:
        lines.append(f"- {note}")
    return lines
