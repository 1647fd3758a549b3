"""The catalogue page of the full catalogue (104 pipelines, 1,921 files, the bundled snapshot):
its weight and its time to DOMContentLoaded in headless Chromium, from a static build behind
``http.server`` and from ``spacy-index serve``, both on 127.0.0.1.

    .venv/bin/python bench/catalogue_page.py [--reps 15] [--quick] [--screenshots docs/]

Goals: the page (document + script + style) under 300 KB, DOMContentLoaded under 300 ms.
Each load is cold (browser cache disabled through the DevTools protocol) in a new tab of one
Chromium (Debian's /usr/bin/chromium, new empty profile). Writes
``bench/results/<date>-catalogue[-quick].json`` and ``.md``. ``--screenshots DIR`` also
writes DIR/catalogue.png and DIR/catalogue-pipeline.png (the README shows one).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.report import machine_info, md_table, write_results  # noqa: E402
from tests.browser import (  # noqa: E402
    CHROMIUM,
    PageLog,
    chromium,
    csp_violations,
    navigation_timing,
    playwright,
    static_server,
)
from tests.catalogue_support import catalogue_server, offline_catalog  # noqa: E402
from tests.servers import run_app  # noqa: E402

from spacy_index.api import build_index  # noqa: E402
from spacy_index.server.wiring import create_app  # noqa: E402

WEIGHT_GOAL = 300_000
DCL_GOAL_MS = 300.0
PAGES = {"index": "index.html", "pipeline (en_core_web_sm)": "catalogue/en-core-web-sm.html"}


def measure(context, url: str, reps: int) -> dict:
    runs = []
    for _ in range(reps):
        log = PageLog()
        page = log.attach(context.new_page())
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        page.goto(url, wait_until="load")
        runs.append(navigation_timing(page))
        problems = log.errors + csp_violations(page)
        page.close()
        if problems:
            raise SystemExit(f"{url}: {problems}")
    dcl = [r["domContentLoaded"] for r in runs]
    first = runs[0]
    return {
        "url": url,
        "bytes": first["documentBytes"] + first["resourceBytes"],
        "document_bytes": first["documentBytes"],
        "resources": first["resources"],
        "dcl_ms_median": statistics.median(dcl),
        "dcl_ms_max": max(dcl),
        "dcl_ms": [round(x, 1) for x in dcl],
        "load_ms_median": statistics.median(r["load"] for r in runs),
    }


def screenshots(context, base: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    page = context.new_page()
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(base + "index.html", wait_until="load")
    page.select_option("#lang", "en")
    page.select_option("#spacy", "3.7")
    page.screenshot(path=str(out / "catalogue.png"))
    page.goto(base + "catalogue/en-core-web-sm.html", wait_until="load")
    page.click('button[data-copy="pip"]')
    page.wait_for_timeout(100)
    page.screenshot(path=str(out / "catalogue-pipeline.png"))
    page.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="5 loads per page")
    ap.add_argument("--screenshots", type=Path, metavar="DIR")
    args = ap.parse_args()
    reps = 5 if args.quick else args.reps
    if not CHROMIUM.is_file():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    catalog = offline_catalog()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_index(root / "www" / "public", catalog)
        build_s = time.perf_counter() - t0
        index = (root / "www" / "public" / "index.html").read_bytes()
        server = catalogue_server(root / "cache")
        with static_server(root / "www") as static, run_app(create_app(server)) as served, \
                playwright() as pw, chromium(pw) as context:
            hosts = {"static": f"{static}/public/", "serve": f"{served}/"}
            for host, base in hosts.items():
                for label, path in PAGES.items():
                    results[f"{host}: {label}"] = measure(context, base + path, reps)
            if args.screenshots:
                screenshots(context, hosts["static"], args.screenshots)
    projects, files, _ = catalog.counts()
    rows = [
        [name, f"{r['bytes']:,}", f"{r['document_bytes']:,}", f"{r['dcl_ms_median']:.1f}",
         f"{r['dcl_ms_max']:.1f}", f"{r['load_ms_median']:.1f}"]
        for name, r in results.items()
    ]
    index_key = "static: index"
    ok_weight = all(r["bytes"] < WEIGHT_GOAL for r in results.values())
    ok_dcl = all(r["dcl_ms_median"] < DCL_GOAL_MS for r in results.values())
    text = "\n".join([
        f"# Catalogue page ({projects} pipelines, {files:,} files){' (quick)' if args.quick else ''}",
        "",
        f"Started {started}; {reps} cold loads per page in headless Chromium ({CHROMIUM}), "
        "browser cache disabled, everything on 127.0.0.1.",
        "",
        md_table(["page", "bytes (doc + js + css)", "document", "DOMContentLoaded median ms",
                  "max ms", "load median ms"], rows),
        "",
        f"- weight goal < {WEIGHT_GOAL:,} B: {'met' if ok_weight else 'NOT met'} "
        f"(index.html gzipped: {len(gzip.compress(index, 9)):,} B)",
        f"- DOMContentLoaded goal < {DCL_GOAL_MS:.0f} ms: {'met' if ok_dcl else 'NOT met'}",
        f"- static build of the whole index (all pages, in memory and to disk): {build_s:.2f} s",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in machine_info()),
    ])
    data = {"bench": "catalogue", "quick": args.quick, "reps": reps, "started": started,
            "results": results, "index_gzip_bytes": len(gzip.compress(index, 9)),
            "build_seconds": round(build_s, 2), "machine": machine_info()}
    write_results("catalogue", args.quick, data, text)
    print(text)
    return 0 if ok_weight and ok_dcl and results[index_key] else 1


if __name__ == "__main__":
    sys.exit(main())
