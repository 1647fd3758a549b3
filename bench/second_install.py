"""Benchmark the *second* install of a pipeline into a brand-new venv (the CI / Docker case).

    .venv/bin/python bench/second_install.py            # 5 fresh venvs per method
    .venv/bin/python bench/second_install.py --quick    # 3 fresh venvs per method

A FakeGitHub (127.0.0.1) holds one real pipeline, ``en_core_web_sm-3.8.50`` padded to the size
of the real one (12 MB; ``--pad-mb``). For every method: install it into venv A (the first
install, also measured), then into brand-new venvs B1..Bn (spaCy cloned in, tests.clients.
make_venv) one after the other, each time counting the bytes the fake GitHub sends on its
download origins (web + objects) and the install's wall time. Client caches are shared
between A and every B of a method, as a user's or a CI runner's are:

* pip, direct URL: ``pip install "en_core_web_sm @ <browser_download_url>"``, what
  ``python -m spacy download`` runs (``pip install <url>``); shared ``PIP_CACHE_DIR``;
* pip, find-links: ``pip install --no-index -f <find-links.html>`` (the page from
  ``spacy-index build``, links to GitHub); shared ``PIP_CACHE_DIR``;
* the same with ``--trusted-host 127.0.0.1``, which turns pip's HTTP cache on for plain http
  (as https would): it still cannot hit, because every GitHub download redirects to a freshly
  signed URL (the fake signs with a nonce, as GitHub's signed URLs differ per request);
* pip, serve: ``pip install --index-url <spacy-index serve>/simple/``: one server for the
  whole method (its cache is what a team shares); shared ``PIP_CACHE_DIR``;
* ``spacy-index install en_core_web_sm --python <venv>``: shared ``SPACY_INDEX_CACHE_DIR``;
* for reference, uv with the direct URL and with the find-links page (shared ``UV_CACHE_DIR``).

pip stores HTTP responses only for https:// and --trusted-host origins, and does not put
wheels it downloaded into its wheel cache, so for pip the shared cache cannot help here.
Results: stdout and bench/results/<date>-second-install[-quick].json/.md.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.report import md_table, run_measured, write_results
from harness.servers import spacy_index_build, spacy_index_serve
from harness.util import MB, REPO, VENV_BIN, fmt_bytes, log, median
from harness.wheels import cached_model

VERSION = "3.8.50"
METHODS = {
    "pip-url": "pip, direct URL (`spacy download`)",
    "pip-find-links": "pip, find-links page",
    "pip-find-links-trusted": "pip, find-links page, --trusted-host (HTTP cache on)",
    "pip-serve": "pip, spacy-index serve",
    "spacy-index-install": "spacy-index install",
    "uv-url": "uv, direct URL",
    "uv-find-links": "uv, find-links page",
}
OURS = ("pip-serve", "spacy-index-install")


def gh_counts(gh, mark: int) -> tuple[int, int]:
    reqs = list(gh.requests)[mark:]
    return (sum(r.bytes_sent for r in reqs if r.origin in ("web", "objects")),
            sum(1 for r in reqs if r.origin == "api"))


def argv_for(method: str, venv, spec: str, find_links: str, serve_url: str | None) -> list:
    from tests.clients import uv_bin

    project = spec.split(" @ ")[0]
    if method == "pip-url":
        return [venv.python, "-m", "pip", "install", "--quiet", spec]
    if method in ("pip-find-links", "pip-find-links-trusted"):
        trusted = ["--trusted-host", "127.0.0.1"] if method.endswith("trusted") else []
        return [venv.python, "-m", "pip", "install", "--quiet", *trusted, "--no-index",
                "--find-links", find_links, project]
    if method == "pip-serve":
        return [venv.python, "-m", "pip", "install", "--quiet", "--index-url",
                f"{serve_url}/simple/", project]
    if method == "spacy-index-install":
        return [VENV_BIN / "spacy-index", "install", project, "--python", venv.python]
    if method == "uv-url":
        return [uv_bin(), "pip", "install", "--quiet", "--python", venv.python, spec]
    return [uv_bin(), "pip", "install", "--quiet", "--python", venv.python, "--no-index",
            "--find-links", find_links, project]


def one_method(method: str, args, gh, pkg, mdir: Path, *, spec: str, find_links: str,
               upstream: str) -> dict:
    """A first install (A) and ``args.reps`` second ones (B…), each into a new venv."""
    from tests.clients import clean_env, make_venv, run

    mdir.mkdir()
    env = clean_env(cache_dir=mdir / "client-cache")
    with contextlib.ExitStack() as per:
        serve_url = None
        if method == "pip-serve":
            s = per.enter_context(spacy_index_serve(
                cache_dir=mdir / "serve-cache", upstream=upstream,
                api_url=gh.api_url, token=None, log_dir=mdir))
            serve_url = s.url
            import httpx

            httpx.get(f"{serve_url}/simple/{pkg.normalized_name}/", timeout=60,
                      trust_env=False).raise_for_status()  # catalog load, not counted
        if method == "spacy-index-install":
            env = dict(env, GITHUB_API_URL=gh.api_url,
                       SPACY_INDEX_CACHE_DIR=str(mdir / "spacy-index-cache"))
        rows = []
        for i in range(args.reps + 1):
            label = "A (first)" if i == 0 else f"B{i}"
            venv = make_venv(mdir / f"venv-{i}", env=env)
            mark = len(gh.requests)
            t = time.monotonic()
            proc = run(argv_for(method, venv, spec, find_links, serve_url),
                       env=venv._env(env), check=False, timeout=900)
            wall = time.monotonic() - t
            moved, api = gh_counts(gh, mark)
            ok = proc.returncode == 0 and venv.installed().get("en-core-web-sm") == VERSION
            rows.append({"venv": label, "ok": ok, "wall": wall, "bytes": moved, "api": api,
                         "note": "" if ok else (proc.stderr or proc.stdout)[-400:]})
            log(f"  {label}: {'ok' if ok else 'FAILED'} {wall:.2f} s, {fmt_bytes(moved)} "
                f"from GitHub, {api} API requests")
            if i > 0:
                shutil.rmtree(venv.path, ignore_errors=True)
    second = [r for r in rows[1:] if r["ok"]]
    return {
        "label": METHODS[method], "runs": rows,
        "ok": all(r["ok"] for r in rows),
        "first_bytes": rows[0]["bytes"], "first_wall": rows[0]["wall"],
        "bytes": median([r["bytes"] for r in second]) if second else None,
        "bytes_max": max((r["bytes"] for r in second), default=None),
        "api": median([r["api"] for r in second]) if second else None,
        "wall": median([r["wall"] for r in second]) if second else None,
    }


def measure(args, run_dir: Path) -> dict:
    from tests.clients import serve_directory
    from tests.fakegithub import FakeGitHub
    from tests.wheels import meta_archive

    pkg = cached_model(args.work_dir, name="core_web_sm", version=VERSION,
                       pad_bytes=int(args.pad_mb * MB))
    log(f"wheel {pkg.wheel.name}: {pkg.wheel.stat().st_size / MB:.1f} MB")
    methods = [m for m in METHODS if m in args.methods]
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        gh = stack.enter_context(FakeGitHub(load_fixture=False, archive=meta_archive([pkg])))
        gh.add_release(f"{pkg.project}-{pkg.version}", {pkg.wheel.name: pkg.wheel.read_bytes()})
        url = (f"{gh.web_url}/explosion/spacy-models/releases/download/"
               f"{pkg.project}-{pkg.version}/{pkg.wheel.name}")
        spacy_index_build(gh.api_url, run_dir)
        static = stack.enter_context(serve_directory(run_dir / "public"))
        (run_dir / "empty").mkdir()
        empty = stack.enter_context(serve_directory(run_dir / "empty"))
        for method in methods:
            log(f"{METHODS[method]}")
            results[method] = one_method(
                method, args, gh, pkg, run_dir / method, spec=f"{pkg.project} @ {url}",
                find_links=static.url + "/find-links.html", upstream=empty.url + "/simple/")
    return {"methods": results, "wheel": pkg.wheel.name, "wheel_bytes": pkg.wheel.stat().st_size}


def render(data: dict) -> str:
    m = data["methods"]
    rows = []
    for key, r in m.items():
        if not r["ok"]:
            rows.append([r["label"], "fails", "-", "-", "-", "-", "-"])
            continue
        rows.append([r["label"], f"{fmt_bytes(r['first_bytes'])}, {r['first_wall']:.2f} s",
                     fmt_bytes(r["bytes"]), f"{r['api']:.0f}", f"{r['wall']:.2f}",
                     *[(f"{(r['bytes'] / m[o]['bytes']) if m[o]['bytes'] else 0:.2f} / "
                        f"{r['wall'] / m[o]['wall']:.2f}") if (key in OURS and o in m and m[o]["ok"])
                       else "-" for o in ("pip-url", "pip-find-links")]])
    lines = [md_table(["method", "first install (venv A): bytes, s", "new venv B: GitHub bytes",
                       "API req.", "wall s", "÷ pip direct URL (bytes / time)",
                       "÷ pip find-links (bytes / time)"], rows), ""]
    ours = [m[k]["bytes_max"] for k in OURS if k in m and m[k]["ok"]]
    if ours:
        worst = max(ours)
        lines.append(f"Goal: a second install moves 0 bytes from upstream: worst run of serve / "
                     f"install {fmt_bytes(worst)} → **{'met' if worst == 0 else 'MISSED'}**.")
    lines.append(f"Pipeline wheel {data['wheel']} = {fmt_bytes(data['wheel_bytes'])}. Client "
                 "caches shared between A and every B (PIP_CACHE_DIR / UV_CACHE_DIR / "
                 "SPACY_INDEX_CACHE_DIR). pip caches HTTP responses only for https:// and "
                 "--trusted-host origins and keeps no downloaded wheel, so with pip only serve's "
                 "own cache makes the second install free; the --trusted-host row shows that "
                 "pip's HTTP cache does not help either: every GitHub download redirects to a "
                 "freshly signed URL, never the same twice. Ratios: ours ÷ alternative; "
                 "bytes ratio 0 = nothing moved.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 fresh venvs per method instead of 5")
    ap.add_argument("--reps", type=int, help="fresh venvs B per method")
    ap.add_argument("--pad-mb", type=float, default=12.0, help="wheel padding in MB (default 12)")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 5)
    data = run_measured("second-install", args, measure)
    text = (f"## Second install into a new venv ({'quick' if args.quick else 'full'}, "
            f"median of {args.reps} fresh venvs)\n\n" + render(data))
    print(text)
    write_results("second-install", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
