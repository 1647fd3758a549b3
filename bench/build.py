"""Benchmark index building against a fake GitHub holding the real 1,099-release fixture.

    .venv/bin/python bench/build.py            # 5 repetitions per variant
    .venv/bin/python bench/build.py --quick    # 3 repetitions (about a minute)

Variants (every one a real subprocess, timed from process start to exit):

a. **seed script**: what users copy today: one ``GET /repos/explosion/spacy-models/releases``
   (GitHub's default ``per_page=30``, one page), a find-links page of the
   ``browser_download_url``s, no hashes (written inline below, with httpx);
b. ``spacy-index build`` **cold**: fresh cache folder (the bundled snapshot describes
   api.github.com, so it never applies to the fake host: this is the full listing);
c. ``spacy-index build`` **warm**: again, same cache folder and output, nothing changed upstream;
d. ``spacy-index build --offline``: the bundled snapshot, no network at all (every request
   would go to a dead proxy);
e. **snapshot + delta**: ``spacy-index snapshot --out FILE`` against the fake (once), then
   ``build --snapshot FILE`` with a fresh cache folder; and once more after a new release
   appeared upstream (f).

Metrics: releases (distinct name+version among the links of the written find-links page),
files (links), files with a sha256, API requests by status (FakeGitHub.requests), bytes
downloaded from the web origin (the repository archive with the meta checksums) and wall
time (median over the repetitions). Results: stdout, bench/results/<date>-build[-quick].json
and .md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.report import md_table, run_measured, write_results
from harness.util import REPO, VENV_BIN, fmt_bytes, log, median

BLACKHOLE_PROXY = "http://127.0.0.1:9"  # nothing listens there: any non-local request fails

#: The "seed" script, as found in READMEs and gists: one page of releases, no hashes.
SEED_SCRIPT = r'''
import sys
import httpx

api, out = sys.argv[1], sys.argv[2]
r = httpx.get(f"{api}/repos/explosion/spacy-models/releases",
              headers={"Accept": "application/vnd.github+json"}, timeout=60)
r.raise_for_status()
links = [(a["name"], a["browser_download_url"]) for rel in r.json() for a in rel["assets"]]
with open(out, "w") as fh:
    fh.write("<!DOCTYPE html>\n<html><body>\n")
    for name, url in links:
        fh.write(f'<a href="{url}">{name}</a><br>\n')
    fh.write("</body></html>\n")
print(len(links))
'''


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href") or ""

    def handle_data(self, data):
        if self._href is not None:
            self.hrefs.append((self._href, data.strip()))
            self._href = None


def page_counts(page: Path) -> dict[str, int]:
    """releases (distinct project+version), files and hashed files of a find-links page."""
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )

    p = _Links()
    p.feed(page.read_text())
    releases = set()
    for href, text in p.hrefs:
        name = text or href.rsplit("/", 1)[-1].split("#")[0]
        try:
            if name.endswith(".whl"):
                proj, ver, *_ = parse_wheel_filename(name)
            else:
                proj, ver = parse_sdist_filename(name)
            releases.add((proj, str(ver)))
        except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
            m = re.match(r"(.+?)-(\d[^-]*?)(?:\.tar\.gz|\.zip|\.whl)?$", name)
            releases.add((canonicalize_name(m.group(1)) if m else name, m.group(2) if m else ""))
    return {"releases": len(releases), "files": len(p.hrefs),
            "with_sha256": sum(1 for h, _ in p.hrefs if "#sha256=" in h)}


def cli_env(api_url: str | None, *, offline: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("GITHUB_", "SPACY_INDEX_", "PIP_", "UV_"))
           and "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if api_url:
        env["GITHUB_API_URL"] = api_url
    if offline:
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env[k] = BLACKHOLE_PROXY
        env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def run_timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-2000:]}")
    return wall, proc


def requests_since(gh, mark: int) -> dict[str, int]:
    reqs = gh.requests[mark:]
    api = [r for r in reqs if r.origin == "api"]
    by_status = Counter(r.status for r in api)
    return {
        "api": len(api),
        "api_200": by_status.get(200, 0),
        "api_304": by_status.get(304, 0),
        "api_other": len(api) - by_status.get(200, 0) - by_status.get(304, 0),
        "web": sum(1 for r in reqs if r.origin != "api"),
        "web_bytes": sum(r.bytes_sent for r in reqs if r.origin != "api"),
        "api_bytes": sum(r.bytes_sent for r in api),
    }


VARIANTS = {
    "seed": "seed script (1 page, per_page=30, no hashes)",
    "cold": "spacy-index build, cold cache",
    "warm": "spacy-index build, warm cache (no upstream change)",
    "offline": "spacy-index build --offline (bundled snapshot)",
    "snapshot": "spacy-index build --snapshot FILE (fresh cache)",
    "snapshot_new": "spacy-index build --snapshot FILE, 1 new release upstream",
}


def _build(exe: str, gh, env: dict[str, str], out: Path, cache: Path, *pre: str) -> dict:
    """One timed ``spacy-index build [PRE] --out OUT --cache-dir CACHE -q``: wall time,
    upstream requests, the page's counts."""
    mark = len(gh.requests)
    wall, proc = run_timed([exe, "build", *pre, "--out", str(out), "--cache-dir", str(cache),
                            "-q"], env)
    return {"wall": wall, **requests_since(gh, mark), **page_counts(out / "find-links.html"),
            "_stdout": proc.stdout}


def _repetition(i: int, exe: str, py: str, gh, env: dict[str, str], run_dir: Path,
                runs: dict[str, list[dict]]) -> None:
    """Seed script, cold and warm build, offline build."""
    cache, out = run_dir / f"cache-{i}", run_dir / f"out-{i}"
    page = run_dir / f"seed-{i}.html"
    mark = len(gh.requests)
    wall, _ = run_timed([py, "-c", SEED_SCRIPT, gh.api_url, str(page)], env)
    runs["seed"].append({"wall": wall, **requests_since(gh, mark), **page_counts(page)})
    for kind in ("cold", "warm"):
        r = _build(exe, gh, env, out, cache)
        r["unchanged"] = "nothing rewritten" in r.pop("_stdout")
        runs[kind].append(r)
    off = run_dir / f"offline-{i}"
    r = _build(exe, gh, cli_env(None, offline=True), off, run_dir / f"cache-off-{i}",
               "--offline")
    r.pop("_stdout")
    runs["offline"].append(r)
    shutil.rmtree(off, ignore_errors=True)


def _summary(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for kind, rs in runs.items():
        if not rs:
            continue
        keys = [k for k, v in rs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        summary[kind] = {k: median([r[k] for r in rs]) for k in keys}
        summary[kind]["label"] = VARIANTS[kind]
        summary[kind]["walls"] = [round(r["wall"], 3) for r in rs]
    return summary


def measure(reps: int, run_dir: Path) -> dict:
    from tests.fakegithub import FakeGitHub

    exe = str(VENV_BIN / "spacy-index")
    py = str(VENV_BIN / "python")
    runs: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    extra: dict[str, object] = {}
    with FakeGitHub() as gh:
        env = cli_env(gh.api_url)
        _ = gh.archive  # pack the fixture archive (~1 s) before anything is timed
        for i in range(reps):
            log(f"repetition {i + 1}/{reps}")
            _repetition(i, exe, py, gh, env, run_dir, runs)
        # e. snapshot + delta
        snap = run_dir / "snap.json.gz"
        mark = len(gh.requests)
        wall, _ = run_timed([exe, "snapshot", "--out", str(snap), "--cache-dir",
                                str(run_dir / "cache-snap")], env)
        extra["snapshot_generation"] = {"wall": wall, **requests_since(gh, mark),
                                        "size": snap.stat().st_size}
        for kind, name, cache in (("snapshot", "snap", "cache-s"),
                                  ("snapshot_new", "snapnew", "cache-sn")):
            if kind == "snapshot_new":  # a new release upstream (mutates the fake: last)
                gh.add_release("en_core_web_sm-3.9.0",
                               {"en_core_web_sm-3.9.0-py3-none-any.whl": b"wheel"})
            for i in range(reps):
                r = _build(exe, gh, env, run_dir / f"out-{name}-{i}", run_dir / f"{cache}{i}",
                           "--snapshot", str(snap))
                r.pop("_stdout")
                runs[kind].append(r)
    return {"runs": runs, "summary": _summary(runs), "extra": extra}


def render(data: dict) -> str:
    s = data["summary"]
    seed, cold = s["seed"], s["cold"]

    def ratio(a: float, b: float) -> str:
        return "-" if not b else f"{a / b:.2f}x"

    rows = []
    for kind in VARIANTS:
        if kind not in s:
            continue
        r = s[kind]
        rows.append([
            r["label"], f"{r['releases']:,.0f}", f"{r['files']:,.0f}", f"{r['with_sha256']:,.0f}",
            f"{r['api']:.0f} ({r['api_200']:.0f} / {r['api_304']:.0f}"
            + (f" / {r['api_other']:.0f} other" if r["api_other"] else "") + ")",
            f"{r['web']:.0f} ({fmt_bytes(r['web_bytes'])})",
            f"{r['wall']:.2f}", ratio(r["wall"], seed["wall"]),
        ])
    out = [md_table(["variant", "releases", "files", "with sha256", "API requests (200 / 304)",
                     "web downloads", "wall s (median)", "time ÷ seed"], rows)]
    g = data["extra"].get("snapshot_generation")
    if g:
        out.append(f"\n`spacy-index snapshot --out FILE` against the fake: {g['api']:.0f} API "
                   f"requests, {fmt_bytes(g['web_bytes'])} from the web origin, {g['wall']:.2f} s, "
                   f"file {fmt_bytes(g['size'])} (run once).")
    out.append(
        f"\nCold build ÷ seed: {ratio(cold['releases'], seed['releases'])} the releases, "
        f"{ratio(cold['files'], seed['files'])} the files, hashes on {cold['with_sha256']:,.0f} "
        f"files vs {seed['with_sha256']:.0f}, for {ratio(cold['api'], seed['api'])} the API requests "
        f"and {ratio(cold['wall'], seed['wall'])} the wall time. Warm: "
        f"{s['warm']['api_200']:.0f} rate-limited requests ({s['warm']['api_304']:.0f} answered 304).")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions instead of 5")
    ap.add_argument("--reps", type=int, help="repetitions per variant")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true", help="keep the run folder")
    args = ap.parse_args(argv)
    args.reps = reps = args.reps or (3 if args.quick else 5)
    data = run_measured("build", args, lambda a, run_dir: measure(a.reps, run_dir))
    data.update(fixture="tests/data/spacy-models: 1,099 releases of explosion/spacy-models")
    text = f"## Index build ({'quick' if args.quick else 'full'}, median of {reps})\n\n" + render(data)
    print(text)
    write_results("build", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
