"""Run every benchmark in bench/ and write one report: bench/results/<date>.md.

    .venv/bin/python bench/run_all.py            # full (about an hour on 2 cores)
    .venv/bin/python bench/run_all.py --quick    # every bench in --quick mode
    .venv/bin/python bench/run_all.py --quick --only build resolve

Each bench runs as its own subprocess (one after the other, never two at once: they would
disturb each other's timings), with ``--quick`` passed through. build, resolve,
second-install and peers leave raw JSON in bench/results/<date>-<name>[-quick].json; this
script renders their tables from it (ratios ours ÷ alternative beside the raw figures,
medians of the repetitions) and embeds bench/serve.py's own markdown report. Finally
bench/plots.py draws the PNGs (skipped with a note when matplotlib is missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.report import machine_info, md_table, results_dir
from harness.util import REPO, VENV_BIN, fmt_bytes, log

BENCH = REPO / "bench"
#: name -> (script, module whose render(data) draws the table, title)
BENCHES = {
    "build": ("build.py", "build", "1. Index build"),
    "resolve": ("resolve.py", "resolve", "2. Resolving a large pipeline"),
    "second-install": ("second_install.py", "second_install", "3. Second install into a new venv"),
    "peers": ("peers.py", "peers", "4. 50 clients, one uncached file: serve vs devpi / proxpi / pypiserver"),
    "serve": ("serve.py", None, "5. `spacy-index serve` vs nginx (bench/serve.py)"),
}


def run_bench(name: str, quick: bool, timeout: float, stamp: str) -> dict:
    script, _, _ = BENCHES[name]
    path = BENCH / script
    if not path.exists():
        return {"rc": None, "seconds": 0.0, "note": f"bench/{script} does not exist"}
    argv = [str(VENV_BIN / "python"), str(path)] + (["--quick"] if quick else [])
    if name == "serve":
        argv += ["--out", str(results_dir() / f"{stamp}-serve{'-quick' if quick else ''}.md")]
    log(f"running {' '.join(argv[1:])}")
    t = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=None, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the benches stop their servers on SIGTERM
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return {"rc": "timeout", "seconds": time.monotonic() - t,
                "note": f"stopped after {timeout:.0f} s"}
    seconds = time.monotonic() - t
    log(f"{name}: exit {proc.returncode} after {seconds:.0f} s")
    return {"rc": proc.returncode, "seconds": seconds, "stdout": out,
            "note": "" if proc.returncode == 0 else f"exit {proc.returncode}"}


def newest(pattern: str, since: float) -> Path | None:
    found = [p for p in results_dir().glob(pattern) if p.stat().st_mtime >= since - 1]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def demote(md: str) -> str:
    """Headings one level down (`# x` → `### x`), for embedding a report."""
    return re.sub(r"(?m)^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", md)


def section(md: str, title: str) -> str:
    m = re.search(rf"(?ms)^## {re.escape(title)}\s*\n(.*?)(?=^## |\Z)", md)
    return m.group(1).strip() if m else ""


def goals(data: dict[str, dict], serve_md: str | None) -> list[list[str]]:
    rows: list[list[str]] = []
    r = data.get("resolve")
    if r:
        worst = [v["serve"]["bytes_max"] for v in r["summary"].values() if v["serve"]["ok"]]
        if worst:
            w = max(worst)
            rows.append(["resolving through serve moves ≤ 64 KiB from upstream (bench/resolve.py, "
                         f"{fmt_bytes(r['wheel_bytes'])} wheel, worst client/run)", fmt_bytes(w),
                         "met" if w <= 64 * 1024 else "MISSED"])
    s = data.get("second-install")
    if s:
        ours = [s["methods"][k]["bytes_max"] for k in ("pip-serve", "spacy-index-install")
                if k in s["methods"] and s["methods"][k]["ok"]]
        if ours:
            rows.append(["second install moves 0 upstream bytes (bench/second_install.py, serve "
                         "and install, worst run)", fmt_bytes(max(ours)),
                         "met" if max(ours) == 0 else "MISSED"])
    if serve_md:
        table = section(serve_md, "Summary against the goals")
        for line in table.splitlines()[2:]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4:
                rows.append([f"{cells[0]} (bench/serve.py; goal {cells[2]})", cells[1], cells[3]])
    return rows


def shown(p: Path) -> str:
    """A results file as the report names it: relative to the checkout when inside it."""
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def header(quick: bool, started: dt.datetime, rows: list[list[str]], runs: dict,
           serve_md_path: Path | None) -> list[str]:
    """Title, mode, machine, the goals and the table of runs."""
    out: list[str] = [f"# spacy-index benchmarks — {started:%Y-%m-%d %H:%M}", ""]
    out.append(f"Mode: **{'quick' if quick else 'full'}** (`bench/run_all.py"
               f"{' --quick' if quick else ''}`). Every figure is a median of repeated runs "
               "(the count is in each section); ratios are ours ÷ alternative, measured side by "
               "side in the same run. Everything ran on 127.0.0.1 against a fake GitHub "
               "(tests/fakegithub/) and real pipeline wheels (tests/wheels.py). The machine is "
               "shared with other sessions: wall times carry their load (see the serve section's "
               "'other load' columns); byte and request counts do not.")
    out += ["", "## Machine", "", md_table(["", ""], machine_info()), ""]
    if rows:
        out += ["## Goals", "", md_table(["goal", "measured", "verdict"], rows), ""]
    out += ["## Runs", "", md_table(
        ["bench", "exit", "seconds", "raw results"],
        [[n, str(r["rc"]), f"{r['seconds']:.0f}",
          r.get("json") or (shown(serve_md_path) if n == "serve" and serve_md_path
                            else r.get("note") or "-")] for n, r in runs.items()]), ""]
    return out


def sections(names: list[str], quick: bool, runs: dict, data: dict,
             serve_md: str | None) -> list[str]:
    """One section per bench: its own report (serve's, headings demoted) or why there is none."""
    out: list[str] = []
    for n in names:
        script, module, title = BENCHES[n]
        out += [f"## {title}", ""]
        if n == "serve":
            if serve_md:
                body = re.sub(r"(?ms)^## Machine\s*\n.*?(?=^## )", "", serve_md)
                out += [demote(body).strip(), ""]
            else:
                out += [f"not run or no report: {runs[n].get('note') or 'no output'}", ""]
            continue
        if n not in data:
            out += [f"no results: {runs[n].get('note') or 'no JSON written'}", ""]
            continue
        d = data[n]
        mod = importlib.import_module(module)
        out += [f"`bench/{script}{' --quick' if quick else ''}`, {d.get('reps')} repetitions, "
                f"{d.get('seconds', 0):.0f} s.", "", mod.render(d), ""]
    return out


def plots(stamp: str, quick: bool) -> list[str]:
    script = BENCH / "plots.py"
    if not script.exists():
        return []
    p = subprocess.run([str(VENV_BIN / "python"), str(script), "--date", stamp]
                       + (["--quick"] if quick else []),
                       capture_output=True, text=True, timeout=300)
    made = [line.strip() for line in p.stdout.splitlines() if line.strip().endswith(".png")]
    if p.returncode == 0 and made:
        return ["## Plots", ""] + [f"![{Path(m).stem}]({Path(m).name})" for m in made] + [""]
    return ["## Plots", "", f"not drawn: {(p.stderr or p.stdout).strip()[-300:]}", ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every bench")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these benches")
    ap.add_argument("--skip", nargs="+", choices=list(BENCHES), default=[])
    ap.add_argument("--timeout", type=float, help="seconds per bench (default 1200 quick, 7200 full)")
    ap.add_argument("--out", type=Path, help="report (default bench/results/<date>.md)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    timeout = args.timeout or (1200 if args.quick else 7200)
    results_dir().mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    started = dt.datetime.now()
    t0 = time.time()
    names = [n for n in (args.only or BENCHES) if n not in args.skip]
    runs = {n: run_bench(n, args.quick, timeout, stamp) for n in names}
    suffix = "-quick" if args.quick else ""
    data: dict[str, dict] = {}
    for n in names:
        if n == "serve":
            continue
        p = newest(f"*-{n}{suffix}.json", t0)
        if p is not None:
            data[n] = json.loads(p.read_text())
            runs[n]["json"] = shown(p)
    serve_md_path = newest(f"*-serve{suffix}.md", t0) if "serve" in names else None
    serve_md = serve_md_path.read_text() if serve_md_path else None
    out = header(args.quick, started, goals(data, serve_md), runs, serve_md_path)
    out += sections(names, args.quick, runs, data, serve_md)
    report = args.out or results_dir() / f"{stamp}.md"
    out += plots(stamp, args.quick)
    report.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    log(f"wrote {report}")
    failed = [n for n, r in runs.items() if r["rc"] not in (0, None)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
