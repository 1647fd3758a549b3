"""The summary and the markdown report of bench/proxy.py, and the variants it names."""

from __future__ import annotations

from collections import Counter

from harness.report import md_table
from harness.util import fmt_bytes, median

VERSION = "3.8.0"
SPACY_REQ = "spacy>=3.8,<3.9"
PYPI = "https://pypi.org/simple/"
INSTALL_VARIANTS = {
    "serve-cold": "pip → spacy-index serve, cold (empty cache)",
    "serve-warm": "pip → spacy-index serve, warm (same server + cache)",
    "serve-restart": "pip → spacy-index serve, warm cache, restarted",
    "direct": "pip → PyPI + pipeline by URL",
    "floor": "pip → a local folder of the same wheels (--no-index --find-links)",
    "devpi-cold": "pip → devpi-server, cold",
    "devpi-warm": "pip → devpi-server, warm",
    "proxpi-cold": "pip → proxpi, cold",
    "proxpi-warm": "pip → proxpi, warm",
}
GROUPS = ("serve", "direct", "floor", "devpi", "proxpi", "pip-compile", "uv")
TOOLS = {"pip-compile": "pip-compile --generate-hashes", "uv": "uv pip compile --generate-hashes"}
COMPILE_VARIANTS = {"serve-cold": "through serve, cold", "serve-warm": "through serve, warm",
                    "direct": "PyPI + --find-links"}
PEER_NAMES = {"devpi": "devpi-server", "proxpi": "proxpi"}
DEVPI_PRELOAD = "six"  # not in spaCy's closure


def upstream_summary(up: dict) -> str:
    """'pypi.org 200x45, 304x3; files.pythonhosted.org 200x40' from serve_counts' upstream."""
    by_host: dict[str, Counter] = {}
    for key, n in up.items():
        host, _method, status = key.split(" ")
        by_host.setdefault(host, Counter())[status] += n
    return "; ".join(f"{h} " + ", ".join(f"{s}x{n}" for s, n in sorted(c.items()))
                     for h, c in sorted(by_host.items())) or "none"


def _ratios(rs: list[dict], base: list[dict], key: str = "wall") -> list[float | None]:
    return [(a[key] / b[key]) if a.get("ok") and b.get("ok") and a.get(key) and b.get(key)
            else None for a, b in zip(rs, base, strict=False)]


def summarize(runs: dict, cruns: dict) -> dict:
    out: dict = {"install": {}, "compile": {}}
    base = runs.get("direct", [])
    for v, rs in runs.items():
        ok = [r["wall"] for r in rs if r.get("ok")]
        ratios = _ratios(rs, base) if base else []
        good = [x for x in ratios if x is not None]
        fetch = [r["fetch"] for r in rs if r.get("ok") and r.get("fetch")]
        fratios = _ratios(rs, base, "fetch") if base else []
        fgood = [x for x in fratios if x is not None]
        out["install"][v] = {"wall": median(ok) if ok else None, "ok": len(ok), "reps": len(rs),
                             "ratios": ratios, "ratio": median(good) if good else None,
                             "fetch": median(fetch) if fetch else None, "fetch_ratios": fratios,
                             "fetch_ratio": median(fgood) if fgood else None}
    for tool, by in cruns.items():
        out["compile"][tool] = {}
        for v, rs in by.items():
            ok = [r["wall"] for r in rs if r.get("ok")]
            ratios = _ratios(rs, by["direct"])
            good = [x for x in ratios if x is not None]
            out["compile"][tool][v] = {"wall": median(ok) if ok else None, "ok": len(ok),
                                       "reps": len(rs), "ratios": ratios,
                                       "ratio": median(good) if good else None}
    return out


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**MISSED**")


def render(data: dict) -> str:
    s = data["summary"]
    runs, cruns = data["install"], data["compile"]
    lines = _goals(s, runs, cruns)
    lines += _install_table(s, runs)
    lines += _serve_moved(runs)
    lines += _peer_logs(runs)
    lines += _compile_tables(s, cruns)
    lines += _closing(data, runs, cruns)
    return "\n".join(lines)


def _goals(s: dict, runs: dict, cruns: dict) -> list[str]:
    """The goals, each with its target and what was measured."""
    lines: list[str] = []
    si = s["install"]
    goals = []

    def ratio_goal(label: str, v: dict | None, limit: float) -> None:
        r = v["ratio"] if v else None
        goals.append([label, f"≤ {limit:.2f}x", _f(r) + "x" if r is not None else "-",
                      verdict(None if r is None else r <= limit)])

    ratio_goal("install, serve warm ÷ direct", si.get("serve-warm"), 0.80)
    ratio_goal("install, serve cold ÷ direct", si.get("serve-cold"), 1.15)
    floor = (si.get("floor") or {}).get("ratio")
    if floor is not None:
        # no index can install faster than pip from a folder on the same disk: when this
        # ratio is above a goal, that goal is out of any index's reach on this machine
        goals.append(["(for reference) pip's floor, a local folder ÷ direct", "-",
                      f"{floor:.2f}x", "-"])
        warm = (si.get("serve-warm") or {}).get("ratio")
        if warm is not None:
            goals.append(["(for reference) serve warm ÷ the floor (median ratios)", "-",
                          f"{warm / floor:.2f}x", "-"])
    for v in ("serve-warm", "serve-cold"):
        fr = (si.get(v) or {}).get("fetch_ratio")
        if fr is not None:
            goals.append([f"(for reference) {v}: resolve+download phase ÷ direct's", "-",
                          f"{fr:.2f}x", "-"])
    warm = runs.get("serve-warm", [])
    if warm:
        moved = [(r["serve"]["file_misses"] + r["serve"]["metadata_misses"], r["serve"]["miss_bytes"],
                  r["gh_bytes"]) for r in warm if "serve" in r]
        worst = max((m[1] + m[2] for m in moved), default=None)
        misses = max((m[0] for m in moved), default=None)
        goals.append(["install, serve warm: file bytes from upstream", "0",
                      f"{fmt_bytes(worst)} ({misses} misses)" if worst is not None else "-",
                      verdict(None if worst is None else worst == 0 and misses == 0)])
    for tool, by in s["compile"].items():
        ratio_goal(f"{tool}, serve warm ÷ direct", by.get("serve-warm"), 1.00)
        whole = [r["serve"]["whole_files"] for v in ("serve-cold", "serve-warm")
                 for r in cruns[tool][v] if "serve" in r]
        goals.append([f"{tool}, whole files through serve (cold + warm)", "0",
                      str(max(whole)) if whole else "-",
                      verdict(None if not whole else max(whole) == 0)])
    lines += ["### Goals", "", md_table(["goal", "target", "measured (median of per-rep ratios)",
                                         "verdict"], goals), ""]
    return lines


def _install_table(s: dict, runs: dict) -> list[str]:
    """The install variants, every repetition, and how much of a direct install is pip's own work."""
    si = s["install"]
    lines: list[str] = []
    nrep = max((len(rs) for rs in runs.values()), default=0)
    rows = []
    for v, rs in runs.items():
        sv = si[v]
        cells = [(_f(r["wall"], "{:.1f}") if r.get("ok") else "fail") for r in rs]
        cells += [""] * (nrep - len(cells))
        rows.append([INSTALL_VARIANTS[v], *cells, _f(sv["wall"], "{:.1f}"),
                     " / ".join(_f(x) for x in sv["ratios"]) if v != "direct" else "1",
                     _f(sv["ratio"]) if v != "direct" else "1",
                     _f(sv.get("fetch"), "{:.1f}"),
                     (" / ".join(_f(x) for x in sv.get("fetch_ratios", [])) + " → "
                      + _f(sv.get("fetch_ratio"))) if v != "direct" else "1",
                     *_cpu_cells(rs)])
    if rows:
        lines += [f"### `pip install --no-cache-dir '{SPACY_REQ}' en_core_web_sm` into a new venv",
                  "", md_table(["variant", *[f"rep {i + 1} s" for i in range(nrep)], "median s",
                                "÷ direct per rep", "÷ direct (median)",
                                "resolve+download s", "÷ direct per rep → median", "pip CPU s",
                                "server CPU s", "other load (cores)"], rows), ""]
    direct = [r for r in runs.get("direct", []) if r.get("ok")]
    if direct:
        share = median([r["client_cpu"] / r["wall"] for r in direct])
        local = [1 - r["fetch"] / r["wall"] for r in direct if r.get("fetch")]
        lines += [f"pip's own CPU time is {share:.0%} of a direct install's wall time (median)"
                  + (f"; {median(local):.0%} of that wall time comes after pip printed "
                     "`Installing collected packages` (unpacking, byte-compiling: local work "
                     "no index changes)" if local else "")
                  + ". Resolve+download = from the start to that line; it is the part an index "
                  "can shorten, and the part least disturbed by other load.", ""]
    return lines


def _serve_moved(runs: dict) -> list[str]:
    """What serve did per install, from its access log."""
    lines: list[str] = []
    srows = []
    for v in ("serve-cold", "serve-warm", "serve-restart"):
        for i, r in enumerate(runs.get(v, [])):
            c = r.get("serve")
            if not c:
                continue
            sl = c["slowest"][0] if c["slowest"] else None
            srows.append([f"{v} #{i + 1}", _fmt_counter(c["files"]), _fmt_counter(c["metadata"]),
                          fmt_bytes(c["miss_bytes"]), fmt_bytes(r["gh_bytes"]),
                          _fmt_counter(c["pages"]),
                          f"{c['request_seconds']:.2f} / {c['page_seconds']:.2f}",
                          upstream_summary(c["upstream"]) if c["upstream"] else "not logged",
                          f"`{sl['request']}` {sl['seconds']:.3f} s ({sl['answer']})" if sl else "-"])
    if srows:
        lines += ["What serve did per install (its access log; upstream = its httpx log lines). "
                  "Bytes of misses = bodies streamed while downloading (hits go out by sendfile "
                  "and log 0 B); s in requests = sum of the logged request durations:", "",
                  md_table(["run", "/files (cache)", ".metadata (cache)", "bytes of misses",
                            "fake GitHub bytes", "pages (status)", "s in requests / pages",
                            "upstream requests (status)", "slowest request"], srows), ""]
    return lines


def _peer_logs(runs: dict) -> list[str]:
    """What the peers did, from their logs."""
    lines: list[str] = []
    prows = []
    for v in ("devpi-cold", "devpi-warm", "proxpi-cold", "proxpi-warm"):
        for i, r in enumerate(runs.get(v, [])):
            lg = r.get("log")
            if not lg:
                continue
            if v.startswith("devpi"):
                pre = lg.get("preload_seconds")
                prows.append([f"{v} #{i + 1}", str(lg["requests"]),
                              _fmt_counter(lg["remote_reads"]), "-", "-",
                              f"project list preload {pre:.1f} s (untimed)"
                              if pre is not None and v.endswith("cold") else ""])
            else:
                sl = lg["slowest"][0] if lg["slowest"] else None
                prows.append([f"{v} #{i + 1}", _fmt_counter(lg["requests"]), "-",
                              str(lg["file_redirects"]), f"{lg['request_seconds']:.2f}",
                              f"slowest `{sl['request']}` {sl['seconds']:.3f} s ({sl['answer']})"
                              if sl else ""])
    if prows:
        lines += ["The peers, from their logs (devpi: `reading remote` lines = upstream fetches; "
                  "proxpi: gunicorn access log; a file not downloaded within "
                  "PROXPI_DOWNLOAD_TIMEOUT = 0.9 s is redirected to PyPI):", "",
                  md_table(["run", "requests", "upstream reads (host)", "file redirects",
                            "s in requests", "note"], prows), ""]
    sets = {v: {tuple(r["set"]) for r in rs if r.get("ok") and "set" in r} for v, rs in runs.items()}
    all_sets = set().union(*sets.values()) if sets else set()
    if len(all_sets) > 1:
        lines.append(f"Note: the installed sets differ between runs ({len(all_sets)} distinct sets).")
    return lines


def _compile_tables(s: dict, cruns: dict) -> list[str]:
    """One table per resolver."""
    lines: list[str] = []
    for tool, by in cruns.items():
        rows = []
        for v, rs in by.items():
            sv = s["compile"][tool][v]
            cells = [(_f(r["wall"], "{:.1f}") if r.get("ok") else "fail") for r in rs]
            whole = [str(r["serve"]["whole_files"]) if "serve" in r else
                     f"{r.get('static_wheel_gets', 0)} (static)" for r in rs]
            rows.append([COMPILE_VARIANTS[v], *cells, _f(sv["wall"], "{:.1f}"),
                         " / ".join(_f(x) for x in sv["ratios"]) if v != "direct" else "1",
                         _f(sv["ratio"]) if v != "direct" else "1", " / ".join(whole),
                         " / ".join(fmt_bytes(r.get("gh_bytes", 0)) for r in rs),
                         *_cpu_cells(rs)])
        n = max(len(rs) for rs in by.values())
        lines += [f"### `{TOOLS[tool]}` of `{SPACY_REQ}` + `en_core_web_sm`", "",
                  md_table(["variant", *[f"rep {i + 1} s" for i in range(n)], "median s",
                            "÷ direct per rep", "÷ direct (median)",
                            "whole files fetched (per rep)", "fake GitHub bytes", "client CPU s",
                            "server CPU s", "other load (cores)"], rows), ""]
        slow = [(r["serve"]["slowest"][0], v, i) for v, rs in by.items() for i, r in enumerate(rs)
                if r.get("serve", {}).get("slowest")]
        if slow:
            worst = max(slow, key=lambda x: x[0]["seconds"])
            lines.append(f"Slowest serve request ({worst[1]} #{worst[2] + 1}): "
                         f"`{worst[0]['request']}` {worst[0]['seconds']:.3f} s "
                         f"({worst[0]['answer']}).")
            lines.append("")
    return lines


def _closing(data: dict, runs: dict, cruns: dict) -> list[str]:
    """Failures, the upstream as seen from here, and the conditions of the run."""
    spacy_v = sorted({r.get("spacy") for rs in runs.values() for r in rs if r.get("spacy")})
    lines: list[str] = []
    fails = [(v, i, r["note"]) for v, rs in runs.items() for i, r in enumerate(rs) if not r.get("ok")]
    fails += [(f"{t} {v}", i, r["note"]) for t, by in cruns.items() for v, rs in by.items()
              for i, r in enumerate(rs) if not r.get("ok")]
    for v, i, note in fails:
        lines.append(f"- FAILED {v} #{i + 1}: {note[-300:]}")
    loads = [r.get("other_cores", 0) for rs in runs.values() for r in rs if r.get("wall")]
    loads += [r.get("other_cores", 0) for by in cruns.values() for rs in by.values() for r in rs
              if r.get("wall")]
    probe = data.get("upstream_probe", {})
    pj, ph = probe.get("json", {}), probe.get("html", {})
    if pj or ph:
        lines.append(
            f"Upstream `{PYPI}` as seen from this machine (`/simple/spacy/`): JSON "
            f"{pj.get('status')} {fmt_bytes(pj.get('bytes', 0))} in {pj.get('seconds')} s, "
            f"ETag {pj.get('etag') or 'none'}, Last-Modified {pj.get('last_modified') or 'none'}, "
            f"Cache-Control {pj.get('cache_control') or 'none'}, files with PEP 658 metadata "
            f"{pj.get('with_core_metadata')}/{pj.get('files')}; HTML: "
            f"{ph.get('with_core_metadata')} data-core-metadata attributes. Without metadata on "
            "the pages, clients that go straight to it download whole wheels to resolve (pip, "
            "pip-compile) or read them by Range (uv), and serve reads each wheel's metadata by "
            "Range once and serves it as PEP 658; without validators serve re-reads a page in "
            "full when it expires.")
        lines.append("")
    if data.get("serve_log_level") != "debug":
        lines.append("Serve ran with `--log-level info`: its upstream requests are not logged "
                     "(`--serve-log-level debug` lists them).")
    lines.append(
        f"Pipeline: {data['wheel']} ({fmt_bytes(data['wheel_bytes'])}); spaCy resolved: "
        f"{', '.join(spacy_v) or '?'}. Peers: {'; '.join(data['peer_versions'].values()) or 'none'}. "
        "Every variant starts from a venv holding only pip (not timed); no client cache; "
        "wall times include the real PyPI (through this machine's TLS-inspecting proxy), so "
        "only the per-repetition ratios are comparable across runs. Other machine load during "
        f"the timed runs: median {median(loads) if loads else float('nan'):.2f} cores, max "
        f"{max(loads, default=0):.2f}.")
    for note in data["notes"]:
        lines.append(f"- {note}")
    return lines


def _cpu_cells(rs: list[dict]) -> list[str]:
    """Medians of client CPU, server CPU and other machine load over the runs that finished."""
    done = [r for r in rs if r.get("wall")]
    if not done:
        return ["-", "-", "-"]
    return [f"{median([r['client_cpu'] for r in done]):.1f}",
            f"{median([r['server_cpu'] for r in done]):.1f}",
            f"{median([r['other_cores'] for r in done]):.2f}"]


def _fmt_counter(c: dict) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "-"
