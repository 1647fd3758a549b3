"""The markdown report and the JSON of bench/serve.py."""

from __future__ import annotations

import dataclasses
import shlex
import statistics

from harness.clients import SINKS, Drain
from harness.report import md_table
from harness.util import MB, fmt_bytes, median
from serve_profile import syscalls_section
from serve_scenarios import GOALS, Report


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
    out.append(_placement(p))
    out += _sinks_section(rep)
    names = rep.names
    ref = "nginx" if "nginx" in names else None
    for conn in p.connections:
        for clients in (1, 8):
            out += _transfer_table(rep, conn, clients, ref)
    if ref:
        out.append("Ratios: each repetition's serve MB/s / nginx MB/s (the two runs side by side); "
                   "**bold** = median of those per-repetition ratios (the figure the goal is "
                   "checked on); *mean* row = arithmetic means (of MB/s, and of the ratios), for "
                   "comparison.\n")
    out += syscalls_section(rep)
    return out


def _placement(p) -> str:
    if p.pin is None:
        return ("Placement (`--pin off`): the scheduler placed servers and clients on any CPU, "
                "so a client could share a core with the server it measured.\n")
    server, client = (",".join(map(str, sorted(c))) for c in p.pin)
    return (f"Placement (`--pin {server}:{client}`): every thread of each server (and its "
            f"child processes) ran on CPU {server} and the client processes on CPU {client}, "
            "as a client on another machine would be: the client never takes CPU from the "
            "server it measures, and nginx and serve get the same CPU. This removes one "
            "source of the run-to-run spread (where the scheduler puts each side), not "
            "all of it.\n")


def _sinks_section(rep: Report) -> list[str]:
    """2a: the sinks side by side, and which one the rest of the report used."""
    p = rep.plan
    out: list[str] = []
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
    return out


def _transfer_table(rep: Report, conn: str, clients: int, ref: str | None) -> list[str]:
    """2b, one connection mode and client count: every repetition, then median and mean."""
    names = rep.names
    series = {n: rep.drains.get((n, clients, conn), []) for n in names}
    if not any(series.values()):
        return []
    out: list[str] = []
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
    out += _summary(rep)
    out += _upstream_section(rep)
    out.append(f"## 2. Throughput, cached {rep.sizes.get('big', 0) / MB:.0f} MB file over loopback\n")
    out += render_throughput(rep)
    out += _latency_section(rep)
    out += _rss_section(rep)
    out += _closing(rep)
    return "\n".join(out)


def _summary(rep: Report) -> list[str]:
    """The table of goals: each measured figure beside its goal."""
    out: list[str] = []
    summary = _summary_transfers(rep) + _summary_others(rep)
    out.append("## Summary against the goals\n")
    out.append(md_table(["metric", "measured", "goal", ""], summary) + "\n")
    return out


def _summary_transfers(rep: Report) -> list[str]:
    """Summary rows of scenarios 1 and 2."""
    p = rep.plan
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
    return summary


def _summary_others(rep: Report) -> list[str]:
    """Summary rows of scenarios 3 and 4, and of --compare-python."""
    p = rep.plan
    summary = []
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
    return summary


def _upstream_section(rep: Report) -> list[str]:
    """Section 1: upstream bytes per client action."""
    out: list[str] = []
    out.append("## 1. Upstream bytes per client action\n")
    out.append("Body bytes FakeGitHub sent on its web + objects origins (release downloads, "
               "Range reads, repository archive) while the client ran; pip without a cache, "
               "fresh venv per action (spaCy cloned in, so only the pipeline is asked for).\n")
    rows = [(label, f"{b:,}", fmt_bytes(b), goal, f"{took:.1f}") for label, b, goal, took in rep.upstream]
    out.append(md_table(["action", "bytes", "", "goal", "client wall s"], rows) + "\n")
    return out


def _latency_section(rep: Report) -> list[str]:
    """Section 3: project-page latency."""
    out: list[str] = []
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
    return out


def _rss_section(rep: Report) -> list[str]:
    """Section 4: server memory while clients stream."""
    out: list[str] = []
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
    return out


def _closing(rep: Report) -> list[str]:
    """Notes (with how much other load there was), the profile and the phase timings."""
    p = rep.plan
    out: list[str] = []
    rep.notes.append(
        "Other load: machine CPU (/proc/stat user+nice+system) during a measurement minus the "
        "server's and the clients' own CPU: work of other processes on this shared 2-core "
        "machine (other sessions' test runs), plus kernel time not charged to either side. "
        f"Before each repetition the run waited for the machine to be quiet (< 0.2 cores busy; "
        f"waited {rep.steady.waited:.0f} s in all, {rep.steady.waits_timed_out} wait(s) gave up); a "
        f"measurement with > {p.other_max} cores of other load was tried up to {p.tries} "
        f"time(s) ({rep.steady.retries} retries; {rep.steady.disturbed} measurement(s) kept despite the load).")
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
    return out


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
        "plan": {**dataclasses.asdict(rep.plan),
                 "pin": [sorted(c) for c in rep.plan.pin] if rep.plan.pin else None},
        "goals": GOALS, "sink": rep.sink,
        "throughput_summary": summary,
        "throughput": {key(k): [run(t) for t in v] for k, v in rep.drains.items()},
        "sinks": {key(k): [run(t) for t in v] for k, v in rep.sink_runs.items()},
        "syscalls": rep.syscalls,
        "latency": {key(k): [run(x) for x in v] for k, v in rep.latencies.items()},
        "rss": [list(r) for r in rep.rss], "rss_peaks_mib": rep.rss_peaks,
        "rss_transfers": {key(k): [run(t) for t in v] for k, v in rep.transfers.items()},
        "upstream": [list(u) for u in rep.upstream], "notes": rep.notes,
        "timings": rep.timings,
        "other_load": {"waited_s": rep.steady.waited, "waits_timed_out": rep.steady.waits_timed_out,
                       "retries": rep.steady.retries, "disturbed": rep.steady.disturbed},
    }
