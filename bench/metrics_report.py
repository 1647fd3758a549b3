"""The report of bench/metrics.py: the goal, every server's runs, the micro timings."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math

from harness.report import machine_info, md_table, results_dir
from harness.util import log, median

GOAL = 1.05
CLIENTS = 32


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(r) for r in xs) / len(xs))


def _ratios(got: dict, control: bool) -> dict:
    """Per-repetition ratios, metrics on ÷ off (and the control off-b ÷ off)."""
    runs = got["runs"]
    pairs = list(zip(runs["on"], runs["off"], strict=True))
    out = {"p99": [a.p99_ms / b.p99_ms for a, b in pairs],
           "p50": [a.p50_ms / b.p50_ms for a, b in pairs],
           "cpu": [a.cpu_us_per_req / b.cpu_us_per_req for a, b in pairs],
           "control": ([a.p99_ms / b.p99_ms for a, b in zip(runs["off-b"], runs["off"], strict=True)]
                       if control else [])}
    out["ratio"] = median(out["p99"])
    out["geo"] = _geomean(out["p99"])
    return out


def _tables(modes: list[str], got: dict, r: dict) -> list[str]:
    verdict = "**met**" if r["ratio"] <= GOAL else "**MISSED**"
    control = r["control"]
    rows = []
    for mode in modes:
        rs = got["runs"][mode]
        rows.append([f"metrics {mode}", " / ".join(f"{x.p99_ms:.2f}" for x in rs),
                     f"{median([x.p50_ms for x in rs]):.2f}", f"{median([x.p99_ms for x in rs]):.2f}",
                     f"{median([x.rps for x in rs]):,.0f}", f"{median([x.cpu_us_per_req for x in rs]):.1f}"])
    return [
        md_table(["goal", "target", "measured (median of per-rep ratios)", "verdict"], [
            [f"page p99 at {CLIENTS} clients, metrics on ÷ off", f"≤ {GOAL:.2f}x", f"{r['ratio']:.3f}x", verdict],
            ["(for reference) p99, geometric mean of the per-rep ratios", "-", f"{r['geo']:.3f}x", "-"],
            ["(for reference) p50 on ÷ off", "-", f"{median(r['p50']):.3f}x", "-"],
            ["(for reference) server CPU per request on ÷ off", "-", f"{median(r['cpu']):.3f}x", "-"],
            *([["(control) p99, two identical metrics-off servers: off-b ÷ off", "-",
                f"{median(control):.3f}x (geometric mean "
                f"{_geomean(control):.3f}x)", "-"]]
              if control else []),
        ]),
        md_table(["server", "p99 ms per rep", "p50 ms (median)", "p99 ms (median)", "req/s (median)",
                  "server CPU µs/req (median)"], rows)]


def _findings(args: argparse.Namespace, got: dict, r: dict, micro_ns: dict) -> list[str]:
    control, other, fast = r["control"], got["other"], got["fast"]
    total_on = sum(x.requests for x in got["runs"]["on"])
    return [
        (f"The control measures this machine's noise floor: two identical servers differ by "
         f"{abs(median(control) - 1) * 100:.1f}% (median of the per-rep ratios; "
         f"{abs(_geomean(control) - 1) * 100:.1f}% "
         "geometric mean) in the same run; on ÷ off differences within that are noise. "
         if control else "")
        + f"Per-repetition p99 ratios: {', '.join(f'{x:.3f}' for x in r['p99'])}; other work on the "
        f"machine during the kept pairs: median {median(other):.2f} cores, max {max(other):.2f} "
        f"(a pair disturbed by more than {args.max_other} cores is run again, up to {args.tries} "
        "times, the least disturbed kept). The \"on\" server "
        f"counted {fast:,.0f} fast-path answers ({total_on:,} requests were sent to it in the "
        "kept runs, plus warm-up and runs tried again): nearly every page took the task-free path, so its counting is "
        "what was measured.",
        "In-process micro timings (best of 7 x 300,000 calls): "
        f"`AccessLog.log_fast` {micro_ns['log_fast_off_ns']:.0f} ns without metrics, "
        f"{micro_ns['log_fast_on_ns']:.0f} ns with (+{micro_ns['log_fast_on_ns'] - micro_ns['log_fast_off_ns']:.0f} ns "
        "per fast-path answer: two dict updates); the `[auth]` guard at the top of "
        f"`Server.fast_response` (`if self.auth_enabled`) {max(0.0, micro_ns['auth_guard_ns']):.0f} ns "
        "when auth is off."]


def report(args: argparse.Namespace, modes: list[str], got: dict, micro_ns: dict,
           started: str, cmd: str) -> float:
    """Print and write the report (.md and .json); returns the median p99 ratio."""
    r = _ratios(got, args.control)
    quick = "-quick" if args.quick else ""
    date = dt.date.today().isoformat()
    out_md = args.out or results_dir() / f"{date}-metrics{quick}.md"
    machine = machine_info()
    md = "\n\n".join([
        f"## `/metrics` overhead on project pages ({'quick, ' if args.quick else ''}{args.reps} "
        f"repetitions, interleaved; {started})",
        f"`.venv/bin/python {cmd}`: `spacy-index serve` processes side by side (the real "
        f"CLI, `--log-level {args.log_level}`), the only difference `create_app(server, metrics=False)` "
        f"in \"off\"; `wrk -t 1 -c {CLIENTS} -d {args.seconds}s` on one cached project page per run, "
        "one server at a time, the order rotating per repetition.",
        *_tables(modes, got, r),
        *_findings(args, got, r, micro_ns),
        "Machine: " + "; ".join(f"{k} {v}" for k, v in machine),
    ]) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(md)
    out_md.with_suffix(".json").write_text(json.dumps({
        "started": started, "reps": args.reps, "seconds": args.seconds, "clients": CLIENTS,
        "log_level": args.log_level, "p99_ratio": r["ratio"], "p99_ratios": r["p99"],
        "p99_ratio_geomean": r["geo"], "p50_ratio": median(r["p50"]), "control_p99_ratios": r["control"], "cpu_ratio": median(r["cpu"]), "goal": GOAL,
        "fast_path_answers_on": got["fast"], "micro_ns": micro_ns, "other_cores": got["other"],
        "runs": {m: [x.__dict__ for x in rs] for m, rs in got["runs"].items()},
    }, indent=2) + "\n")
    print(md)
    log(f"written to {out_md}")
    return r["ratio"]
