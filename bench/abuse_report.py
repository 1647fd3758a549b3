"""The markdown report of bench/abuse.py and the summary it is built on."""

from __future__ import annotations

import argparse
from collections import Counter

from abuse_clients import FRESH_PREFIX, JSON_TYPE
from harness.report import md_table
from harness.util import median

CONDITIONS = ("baseline", "idle", "slow", "slow-burst")
SLOW = ("slow", "slow-burst")
GOAL_RATIO = 1.5


def summarize(runs: dict[str, list[dict]]) -> dict:
    out: dict[str, dict] = {}
    base = median([r["pages"]["p99"] for r in runs["baseline"]])
    base_held = median([r["pages"]["held_p99"] for r in runs["baseline"]])
    for cond, rs in runs.items():
        p99s = [r["pages"]["p99"] for r in rs]
        held = [r["pages"]["held_p99"] for r in rs]
        by_rep = {r["rep"]: r["pages"]["p99"] for r in runs["baseline"]}
        out[cond] = {
            "p99_ms": median(p99s), "p99_per_rep": p99s,
            "ratio": median(p99s) / base if base else float("nan"),
            "ratio_per_rep": [r["pages"]["p99"] / by_rep[r["rep"]] for r in rs
                              if by_rep.get(r["rep"])],
            "held_p99_ms": median(held),
            "held_ratio": median(held) / base_held if base_held else float("nan"),
            "p50_ms": median([r["pages"]["p50"] for r in rs]),
            "p90_ms": median([r["pages"]["p90"] for r in rs]),
            "p99_9_ms": median([r["pages"]["p99_9"] for r in rs]),
            "max_ms": max(r["pages"]["max"] for r in rs),
            "requests": sum(r["pages"]["requests"] for r in rs),
            "failed": sum(r["pages"]["errors"] for r in rs),
            "serve_cpu_s": median([r["serve_cpu"] for r in rs]),
            "serve_cpu_per_rep": [r["serve_cpu"] for r in rs],
            "serve_cores": median([r["serve_cores"] for r in rs]),
            "hwm_mib": max(r["vmhwm_kib"] for r in rs) / 1024,
            "hwm_per_rep": [r["vmhwm_kib"] / 1024 for r in rs],
            "client_cores": median([r["client_cores"] for r in rs]),
            "abuser_cores": median([r["abuser_cores"] for r in rs]),
            "other_cores": max(r["other_cores"] for r in rs),
            "steal_cores": max(r.get("steal_cores", 0.0) for r in rs),
            "probe_ms": median([x["ms"] for r in rs for x in r["probes"]]),
            "probe_max_ms": max((x["ms"] for r in rs for x in r["probes"]), default=float("nan")),
            "probe_outcomes": dict(Counter(x["outcome"] for r in rs for x in r["probes"])),
        }
    return out


def _f(x: float, fmt: str = "{:.3f}") -> str:
    return "-" if x != x else fmt.format(x)


def render(data: dict, args: argparse.Namespace) -> str:
    s, runs, p = data["summary"], data["runs"], data["params"]
    n_reps = len(runs["baseline"])
    lines = [
        f"## abuse.py: page p99 of well-behaved clients beside abusive ones "
        f"({'quick' if args.quick else 'full'}, {n_reps} repetition{'s' * (n_reps > 1)}, "
        f"`page_fetch = \"{args.page_fetch}\"`)", "",
        f"Measured: `GET /simple/demo/` (`Accept: {JSON_TYPE}`, {data['page_bytes']} B, from "
        f"serve's page cache) on {p['connections']} keep-alive connections, paced at "
        f"{p['rate']:.0f} req/s in all, {p['window']:.0f} s per run; serve at `--log-level "
        f"warning`, default `[limits]`, one process for the whole run. Conditions: **baseline** "
        f"(nothing else); **idle** ({p['idle']} connections held open during the window: half "
        "send nothing, half send `GET /x HTTP/1.1\\r\\n` and stop); **slow** (the upstream "
        f"answers `slowpoke*` pages after {p['slow_delay']:.0f} s; {p['slow_same']} clients ask "
        f"for one such project (the next one once it has been answered), "
        f"{p['slow_distinct']} for a new uncached name each time; in each "
        f"group half wait, half give up after {p['impatient']:.0f} s and ask again; their first "
        f"requests spread over {p['stagger']:g} s); **slow-burst** (the same, all starting at "
        "once, so the impatient ones give up and ask again in step). Conditions "
        "interleaved, order rotated per repetition.", "",
        f"Ratio = median over the repetitions of the condition's p99 ÷ the median of "
        f"baseline's p99 (goal ≤ {GOAL_RATIO}x); \"within each rep\": the condition's p99 ÷ "
        "the same repetition's baseline p99 (the machine's speed drifts between repetitions). "
        "Latency = request written to last body byte; "
        "\"held-up p99\" also counts the wait of a request sent late because the previous "
        "answer was late.", ""]
    lines += _summary_table(s)
    lines += _every_run(runs)
    lines += _idle_table(runs)
    lines += _slow_table(runs)
    lines += _probes_and_logs(data)
    return "\n".join(lines)


def _summary_table(s: dict) -> list[str]:
    """One row per condition: the medians, the ratio to baseline, the goal."""
    lines: list[str] = []
    rows = []
    for cond in CONDITIONS:
        c = s[cond]
        ok = "-" if cond == "baseline" else ("✅ met" if c["ratio"] <= GOAL_RATIO else "❌ missed")
        rows.append([cond, _f(c["p99_ms"]), " / ".join(_f(x) for x in c["p99_per_rep"]),
                     "1" if cond == "baseline" else f"{c['ratio']:.2f}x", ok,
                     "-" if cond == "baseline" else " / ".join(f"{x:.2f}"
                                                               for x in c["ratio_per_rep"]),
                     f"{c['held_ratio']:.2f}x", _f(c["p50_ms"]), _f(c["p99_9_ms"]),
                     _f(c["max_ms"], "{:.1f}"), f"{c['requests']:,}", str(c["failed"]),
                     f"{c['serve_cpu_s']:.2f} ({c['serve_cores']:.2f} cores)",
                     f"{c['hwm_mib']:.1f}", f"{c['client_cores']:.2f}",
                     f"{c['abuser_cores']:.2f}", f"{c['other_cores']:.2f}",
                     f"{c['steal_cores']:.2f}"])
    lines += [md_table(["condition", "p99 ms (median)", "p99 per rep", "ratio to baseline",
                        f"goal ≤ {GOAL_RATIO}x", "ratio within each rep", "held-up p99 ratio", "p50 ms", "p99.9 ms",
                        "max ms (all reps)", "requests (all reps)", "failed",
                        "serve CPU s per window (median)", "serve peak RSS MiB (VmHWM, max)",
                        "client cores", "abuser cores", "other load, cores (max)",
                        "steal, cores (max)"], rows), ""]
    return lines


def _every_run(runs: dict[str, list[dict]]) -> list[str]:
    """One row per run, in run order within a repetition."""
    lines: list[str] = []
    rrows = []
    for cond in CONDITIONS:
        for r in runs[cond]:
            q = r["pages"]
            rrows.append([f"{cond} #{r['rep'] + 1}", f"{q['requests']:,}", _f(q["p50"]),
                          _f(q["p90"]), _f(q["p99"]), _f(q["held_p99"]), _f(q["p99_9"]),
                          _f(q["max"], "{:.1f}"),
                          f"{q['over_5ms']}"
                          + (f" ({r['over_5ms_after_slow_requests']})" if r["condition"] in SLOW
                             else ""), str(q["over_10ms"]),
                          str(q["errors"]) + (f" {q['error_kinds']}" if q["errors"] else ""),
                          f"{r['serve_cpu']:.2f}", f"{r['serve_cpu_condition']:.2f}",
                          f"{r['vmhwm_kib'] / 1024:.1f}", f"{r['vmrss_kib'] / 1024:.1f}",
                          f"{r['client_cores']:.2f}", f"{r['abuser_cores']:.2f}",
                          f"{r['main_cores']:.2f}", f"{r['other_cores']:.2f}",
                          f"{r.get('steal_cores', 0):.2f}", str(r["attempt"] + 1)])
    lines += ["Every run (in run order within a repetition; \"serve CPU s, condition\" also "
              "counts setting up and tearing down the abusers):", "",
              md_table(["run", "requests", "p50 ms", "p90 ms", "p99 ms", "held-up p99 ms",
                        "p99.9 ms", "max ms", "> 5 ms (slow: of the first 200, began ≤ 150 "
                        "ms after a slow client's request)", "> 10 ms", "failed", "serve CPU s, window",
                        "serve CPU s, condition", "VmHWM MiB", "VmRSS after MiB",
                        "client cores", "abuser cores", "bench + upstream cores",
                        "other cores", "steal cores", "try"], rrows), ""]
    return lines


def _idle_table(runs: dict[str, list[dict]]) -> list[str]:
    """What the idle/half-sent connections saw."""
    lines: list[str] = []
    irows = []
    for r in runs["idle"]:
        a = r.get("abuser", {})
        sil, half = a.get("silent_closed_after_s", {}), a.get("half_closed_after_s", {})
        irows.append([f"idle #{r['rep'] + 1}", str(a.get("opened")),
                      f"{a.get('open_s', 0):.2f}", str(a.get("open_at_window_end")),
                      str(a.get("closed_in_window")), str(a.get("reopened")),
                      f"{sil.get('n', 0)}: {sil.get('min', '-')} / {sil.get('median', '-')} / "
                      f"{sil.get('max', '-')}",
                      f"{half.get('n', 0)}: {half.get('min', '-')} / {half.get('median', '-')} "
                      f"/ {half.get('max', '-')}",
                      ", ".join(f"{k} x{v}" for k, v in a.get("answers", {}).items()),
                      str(a.get("still_open_at_hold_end"))])
    lines += ["Idle/half-sent connections (held from before the window to 20 s after opening; "
              "serve's header_timeout is 15 s):", "",
              md_table(["run", "opened", "open took s", "open at window end",
                        "closed before window end", "re-opened", "silent: closed by serve "
                        "after s (n: min / median / max)", "half-sent: closed after s",
                        "what serve sent before closing", "still open at 20 s"], irows), ""]
    return lines


def _slow_table(runs: dict[str, list[dict]]) -> list[str]:
    """What the slow-upstream clients and the upstream saw."""
    lines: list[str] = []
    srows = []
    for r in (r for c in SLOW for r in runs[c]):
        a = r.get("abuser", {})
        u = r["upstream"]
        per = "; ".join(
            f"{g}: {v['requests']} ({', '.join(f'{k} x{n}' for k, n in v['outcomes'].items())}"
            + (f"; 200 after {v['ok_seconds']['median']:.2f} s median)" if v["ok_seconds"]
               else ")")
            for g, v in a.get("summary", {}).items())
        srows.append([f"{r['condition']} #{r['rep'] + 1}", str(a.get("requests")), per,
                      str(a.get("shared_projects")), str(u["slow"]),
                      str(u["slow_distinct_names"]), str(u["peak_delayed_in_flight"]),
                      str(u["slow_unsent"]), str(u["demo"])])
    lines += ["Slow-upstream clients (per group: requests and outcomes; \"cut\" = still waiting "
              "when the window ended) and what the upstream saw:", "",
              md_table(["run", "slow-client requests", "by group",
                        "shared slow projects asked", "upstream slow-page GETs",
                        "distinct slow names", "peak delayed GETs in flight at the upstream",
                        "answers serve no longer read", "upstream GETs of demo"], srows), ""]
    return lines


def _probes_and_logs(data: dict) -> list[str]:
    """The probes of new names, serve's log, its RSS and the machine."""
    s, runs, p = data["summary"], data["runs"], data["params"]
    lines: list[str] = []
    prows = [[cond, _f(s[cond]["probe_ms"], "{:.1f}"), _f(s[cond]["probe_max_ms"], "{:.1f}"),
              ", ".join(f"{k} x{v}" for k, v in s[cond]["probe_outcomes"].items())]
             for cond in CONDITIONS]
    lines += [f"New uncached names (`/simple/{FRESH_PREFIX}-*/`, answered by the upstream at "
              f"once), {p['probes']} asked together by a well-behaved client right after each "
              "window, while the abuse (or, for slow, serve's upstream fetches for the slow "
              f"clients that have gone) still runs; {2 * p['slow_delay']:.0f} s timeout. Not "
              "part of the p99 above:", "",
              md_table(["condition", "median ms", "max ms", "outcomes"], prows), ""]
    demo_all = sum(r["upstream"]["demo"] for rs in runs.values() for r in rs)
    lines.append(f"Upstream GETs of `/simple/demo/` during all runs: {demo_all} (background "
                 "revalidations after page_ttl; the measured answers come from the cache).")
    logs = [(f"{r['condition']} #{r['rep'] + 1}", r["serve_log_lines"], r["serve_log"])
            for rs in runs.values() for r in rs]
    total = sum(n for _, n, _ in logs)
    lines.append(f"serve's log (`--log-level warning`) during the runs: {total} line(s)"
                 + (":" if total else "."))
    shown = 0
    for name, n, ls in logs:
        if n and shown < 8:
            shown += 1
            lines.append(f"- {name}: {n} line(s), e.g. "
                         + "; ".join(f"`{x[:160]}`" for x in ls[:3]))
    rs0, rs1 = data["rss_start_kib"], data["rss_end_kib"]
    lines += ["", f"serve RSS: {rs0['VmRSS'] / 1024:.1f} MiB after start, "
                  f"{rs1['VmRSS'] / 1024:.1f} MiB at the end. Runs retried for other load: "
                  f"{data['retries']}; waited {data['quiet_waited']:.0f} s for a quiet machine.",
              ""]
    lines += ["### Machine", "", md_table(["", ""], data["machine"])]
    return lines
