"""Benchmark the cost of *resolving* (locking) a large spaCy pipeline, per client and index kind.

    .venv/bin/python bench/resolve.py            # 450 MB pipeline wheel, 3 repetitions
    .venv/bin/python bench/resolve.py --quick    # 50 MB wheel, 3 repetitions (pip, uv, pip-tools)

Set-up (all on 127.0.0.1, stopped at the end):

* a FakeGitHub holding one real pipeline, ``en_core_web_lg-3.8.50`` padded to the size of a
  large pipeline (tests/wheels.py; cached under --work-dir), with its meta checksum;
* three kinds of index for it:
  - **find-links**: the ``find-links.html`` page written by ``spacy-index build``, used with
    ``--no-index -f`` (the hand-rolled way, but complete and hashed);
  - **static**: the ``spacy-index build`` folder on a static HTTP server (links go to GitHub);
  - **serve**: ``spacy-index serve`` (a real subprocess, fresh cache for every measurement,
    catalog loaded before the clock starts) whose ``--upstream`` is an empty index;
* spaCy's dependency closure comes from a local wheelhouse (tests.clients.build_wheelhouse)
  given to every pip/pip-tools/uv run with ``--find-links`` (poetry and pdm cannot take one:
  they get it from a PyPI-like static index of the same wheels, tests/workflow_support.py).

Clients (cold caches every time): ``pip install --dry-run --ignore-installed --report``,
``pip-compile --generate-hashes`` (``python -m piptools compile``), ``uv pip compile
--generate-hashes``, and ``poetry lock`` / ``pdm lock`` when .tool-venvs/ holds them
(requirements/tools.txt; not installed by this script).

Metric: bytes the fake GitHub sent on its download origins (web + objects) during the client
run, and the client's wall time; medians of the repetitions. Results: stdout and
bench/results/<date>-resolve[-quick].json/.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
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
KINDS = ("find-links", "static", "serve")
CLIENTS = ("pip", "pip-compile", "uv", "poetry", "pdm")
GOAL_BYTES = 64 * 1024


def upstream_bytes(gh) -> int:
    return sum(r.bytes_sent for r in list(gh.requests) if r.origin in ("web", "objects"))


def find_tools():
    """poetry + pdm from .tool-venvs/ (never installed here), or None with the reason."""
    from tests.workflow_support import TOOL_VENVS, TOOLS_REQUIREMENTS, Tools

    key = hashlib.sha256(TOOLS_REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()[:12]
    venv = TOOL_VENVS / f"tools-{key}"
    if not (venv / ".complete").exists():
        return None, (f"not measured: {venv.relative_to(REPO)} does not exist (poetry/pdm are "
                      "installed by the workflow tests, tests/workflow_support.py::ensure_tools)")
    return Tools(venv), ""


class World:
    """Everything the clients talk to; ``index_args(kind)`` gives the pip-style options."""

    def __init__(self, stack: contextlib.ExitStack, run_dir: Path, pkg, wheelhouse: Path) -> None:
        from tests.clients import serve_directory
        from tests.fakegithub import FakeGitHub
        from tests.wheels import meta_archive
        from tests.workflow_support import write_fake_pypi

        self.run_dir, self.pkg, self.wheelhouse = run_dir, pkg, wheelhouse
        self.gh = stack.enter_context(FakeGitHub(load_fixture=False, archive=meta_archive([pkg])))
        self.gh.add_release(f"{pkg.project}-{pkg.version}", {pkg.wheel.name: pkg.wheel.read_bytes()})
        out = spacy_index_build(self.gh.api_url, run_dir)
        self.static = stack.enter_context(serve_directory(out))
        (run_dir / "empty").mkdir()
        self.empty = stack.enter_context(serve_directory(run_dir / "empty"))
        (run_dir / "pypi").mkdir()
        pypi_server = stack.enter_context(serve_directory(run_dir / "pypi"))
        self.pypi = write_fake_pypi(run_dir / "pypi", pypi_server.url, wheelhouse, placeholders=())
        self.serve_url: str | None = None

    @contextlib.contextmanager
    def serve(self, tag: str):
        """A fresh `spacy-index serve` (empty cache), catalog loaded; yields the catalog bytes."""
        import httpx

        before = upstream_bytes(self.gh)
        with spacy_index_serve(cache_dir=self.run_dir / f"serve-cache-{tag}",
                               upstream=self.empty.url + "/simple/", api_url=self.gh.api_url,
                               token=None, log_dir=self.run_dir) as s:
            r = httpx.get(f"{s.url}/simple/{self.pkg.normalized_name}/", timeout=120, trust_env=False)
            r.raise_for_status()
            self.serve_url = s.url
            try:
                yield upstream_bytes(self.gh) - before
            finally:
                self.serve_url = None

    def simple(self, kind: str) -> str:
        return (self.serve_url if kind == "serve" else self.static.url) + "/simple/"

    def pip_args(self, kind: str) -> list[str]:
        if kind == "find-links":
            return ["--no-index", "--find-links", self.static.url + "/find-links.html",
                    "--find-links", str(self.wheelhouse)]
        return ["--index-url", self.simple(kind), "--find-links", str(self.wheelhouse)]

    def source_url(self, kind: str) -> str:
        return self.static.url + "/find-links.html" if kind == "find-links" else self.simple(kind)


def _lock_project(world: World, client: str, kind: str, work: Path, tools) -> tuple[list, dict]:
    """poetry / pdm: a project whose lock asks ``kind`` for the pipeline, PyPI's mirror for
    the rest; (argv, env)."""
    from tests.clients import run
    from tests.workflow_support import base_python, tool_env

    pkg = world.pkg
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = tool_env(work / "home", cache=work / "cache")
    run([base_python(), "-m", "venv", "--without-pip", work / ".venv"])
    url = world.source_url(kind)
    if client == "poetry":
        (work / "pyproject.toml").write_text(
            "[tool.poetry]\npackage-mode = false\n\n[tool.poetry.dependencies]\n"
            f'python = "~{py}"\nspacy = "*"\n'
            f'{pkg.project.replace("_", "-")} = {{ version = "*", source = "spacy" }}\n\n'
            f'[[tool.poetry.source]]\nname = "spacy"\nurl = "{url}"\npriority = "explicit"\n\n'
            f'[[tool.poetry.source]]\nname = "pypi-mirror"\nurl = "{world.pypi.simple}"\n'
            'priority = "primary"\n')
        return [tools.poetry, "--no-ansi", "lock"], env
    source_type = 'type = "find_links"\n' if kind == "find-links" else ""
    (work / "pyproject.toml").write_text(
        '[project]\nname = "bench-app"\nversion = "0.1.0"\n'
        f'requires-python = "=={py}.*"\n'
        f'dependencies = ["spacy", "{pkg.project.replace("_", "-")}"]\n\n'
        "[tool.pdm]\ndistribution = false\n\n"
        f'[[tool.pdm.source]]\nname = "spacy"\nurl = "{url}"\n{source_type}'
        'include_packages = ["en-core-web-*"]\n')
    env = dict(env, PDM_PYPI_URL=world.pypi.simple,
               PDM_PYTHON=str(work / ".venv" / "bin" / "python"))
    return [tools.pdm, "lock"], env


def _client_argv(world: World, client: str, kind: str, work: Path, tools,
                 pip_venv) -> tuple[list, dict]:
    from tests.clients import clean_env, uv_bin

    pkg = world.pkg
    env = clean_env()  # no client cache at all
    if client == "pip":
        return [pip_venv.python, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--quiet", "--report", work / "report.json", *world.pip_args(kind),
                pkg.project], env
    if client == "pip-compile":
        return [VENV_BIN / "python", "-m", "piptools", "compile", "--quiet", "--generate-hashes",
                "--strip-extras", "--no-header", "--cache-dir", work / "piptools-cache",
                *world.pip_args(kind), "-o", work / "requirements.txt",
                work / "requirements.in"], env
    if client == "uv":
        return [uv_bin(), "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
                "--python", VENV_BIN / "python", *world.pip_args(kind), "-o",
                work / "requirements.txt", work / "requirements.in"], env
    if client in ("poetry", "pdm"):
        return _lock_project(world, client, kind, work, tools)
    return [], env


def _check(out: dict, client: str, work: Path, pkg) -> None:
    """Is the pipeline in the client's output, with its sha256?"""
    if client == "pip":
        items = json.loads((work / "report.json").read_text())["install"]
        mine = [i for i in items if i["metadata"]["name"].replace("-", "_").lower() == pkg.project]
        out["ok"] = bool(mine) and mine[0]["metadata"]["version"] == VERSION
        hashes = (mine[0].get("download_info", {}).get("archive_info", {}).get("hashes", {})
                  if mine else {})
        out["hash"] = hashes.get("sha256") == pkg.sha256
        out["resolved"] = len(items)
    else:
        lock = {"pip-compile": "requirements.txt", "uv": "requirements.txt",
                "poetry": "poetry.lock", "pdm": "pdm.lock"}[client]
        text = (work / lock).read_text()
        out["ok"] = VERSION in text
        out["hash"] = pkg.sha256 in text
    if not out["ok"]:
        out["note"] = "the pipeline is not in the output"


def run_client(world: World, client: str, kind: str, work: Path, tools, pip_venv) -> dict:
    """One cold resolution; returns {ok, wall, bytes, hash, note}."""
    from tests.clients import run

    pkg = world.pkg
    work.mkdir(parents=True)
    (work / "requirements.in").write_text(f"{pkg.project}\n")
    argv, env = _client_argv(world, client, kind, work, tools, pip_venv)
    before = upstream_bytes(world.gh)
    t = time.monotonic()
    proc = run(argv, env=env, cwd=work, check=False, timeout=1800)
    wall = time.monotonic() - t
    moved = upstream_bytes(world.gh) - before
    out: dict = {"ok": proc.returncode == 0, "wall": wall, "bytes": moved, "hash": False, "note": ""}
    if proc.returncode != 0:
        out["note"] = f"exit {proc.returncode}: " + (proc.stderr or proc.stdout).strip()[-400:]
        return out
    _check(out, client, work, pkg)
    return out


def measure(args, run_dir: Path) -> dict:
    from tests.clients import build_wheelhouse, make_venv

    pad = (50 if args.quick else 450) * MB
    t = time.monotonic()
    pkg = cached_model(args.work_dir, name="core_web_lg", version=VERSION, pad_bytes=pad)
    wheelhouse = build_wheelhouse(run_dir / "wheelhouse")
    log(f"wheel {pkg.wheel.name}: {pkg.wheel.stat().st_size / MB:.1f} MB; wheelhouse "
        f"{len(list(wheelhouse.glob('*.whl')))} wheels ({time.monotonic() - t:.1f} s)")
    tools, tools_note = find_tools()
    clients = [c for c in args.clients if tools is not None or c not in ("poetry", "pdm")]
    notes = []
    if tools is None and set(args.clients) & {"poetry", "pdm"}:
        notes.append(f"poetry, pdm: {tools_note}")
    skipped = [c for c in CLIENTS if c not in args.clients]
    if skipped:
        notes.append(f"{', '.join(skipped)}: not measured in this run (--clients; quick mode "
                     "leaves poetry and pdm out: each lock re-resolves spaCy's whole closure)")
    runs: dict[str, dict[str, list[dict]]] = {c: {k: [] for k in KINDS} for c in clients}
    catalog_bytes: list[int] = []
    with contextlib.ExitStack() as stack:
        world = World(stack, run_dir, pkg, wheelhouse)
        pip_venv = make_venv(run_dir / "pip-venv", with_spacy=False)
        n = 0
        for rep in range(args.reps):
            for kind in KINDS:
                for client in clients:
                    n += 1
                    tag = f"{rep}-{kind}-{client}"
                    log(f"rep {rep + 1}/{args.reps}: {client} / {kind}")
                    with contextlib.ExitStack() as per:
                        if kind == "serve":
                            catalog_bytes.append(per.enter_context(world.serve(tag)))
                        r = run_client(world, client, kind, run_dir / "runs" / tag, tools, pip_venv)
                    shutil.rmtree(run_dir / "runs" / tag, ignore_errors=True)
                    runs[client][kind].append(r)
                    log(f"  {'ok' if r['ok'] else 'FAILED'} {r['wall']:.1f} s, "
                        f"{fmt_bytes(r['bytes'])} from GitHub {r['note'][:200]}")
    summary: dict = {}
    for client, by_kind in runs.items():
        for kind, rs in by_kind.items():
            ok = [r for r in rs if r["ok"]]
            summary.setdefault(client, {})[kind] = {
                "ok": len(ok) == len(rs) and bool(rs), "runs": len(rs),
                "wall": median([r["wall"] for r in ok]) if ok else None,
                "bytes": median([r["bytes"] for r in ok]) if ok else None,
                "bytes_max": max(r["bytes"] for r in ok) if ok else None,
                "hash": all(r["hash"] for r in ok) if ok else False,
                "note": next((r["note"] for r in rs if r["note"]), ""),
            }
    return {"runs": runs, "summary": summary, "notes": notes,
            "catalog_bytes": median(catalog_bytes) if catalog_bytes else None,
            "wheel_bytes": pkg.wheel.stat().st_size, "wheel": pkg.wheel.name,
            "clients": clients, "kinds": list(KINDS),
            "tools": tools.versions() if tools is not None else None}


def render(data: dict) -> str:
    s = data["summary"]
    rows = []
    for client in data["clients"]:
        row = [client]
        serve = s[client]["serve"]
        for kind in KINDS:
            r = s[client][kind]
            if not r["ok"]:
                row.append(f"fails ({r['note'][:80]})")
                continue
            row.append(f"{fmt_bytes(r['bytes'])}, {r['wall']:.1f} s"
                       + ("" if r["hash"] else ", no hash"))
        for kind in ("find-links", "static"):
            alt = s[client][kind]
            if serve["ok"] and alt["ok"]:
                b = "0" if not serve["bytes"] else (
                    f"{serve['bytes'] / alt['bytes']:.5f}" if alt["bytes"] else "inf")
                row.append(f"bytes {b}, time {serve['wall'] / alt['wall']:.2f}")
            else:
                row.append("-")
        rows.append(row)
    table = md_table(["client", "find-links: GitHub bytes, wall", "static index", "serve",
                      "serve ÷ find-links", "serve ÷ static"], rows)
    lines = [table, ""]
    goal = [s[c]["serve"]["bytes_max"] for c in data["clients"] if s[c]["serve"]["ok"]]
    if goal:
        worst = max(goal)
        lines.append(f"Goal: resolving through serve moves ≤ 64 KiB from upstream: worst run "
                     f"{fmt_bytes(worst)} → **{'met' if worst <= GOAL_BYTES else 'MISSED'}**.")
    lines.append(f"Pipeline wheel: {data['wheel']} = {fmt_bytes(data['wheel_bytes'])}. "
                 "spaCy's dependency closure came from a local wheelhouse (build_wheelhouse, "
                 "`--find-links`) for pip, pip-tools and uv; poetry and pdm read it from a "
                 "PyPI-like static index of the same wheels. serve: fresh cache per run; its "
                 f"catalog load (releases API + meta archive, {fmt_bytes(data['catalog_bytes'] or 0)} "
                 "from the web origin) happened before the clock started and is not counted. "
                 "Ratios: ours ÷ alternative (bytes, wall time).")
    if data.get("tools"):
        lines.append("poetry/pdm versions: " + ", ".join(f"{k} {v}" for k, v in data["tools"].items()))
    lines += [f"- {n}" for n in data["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 MB wheel; pip, pip-tools and uv only")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", nargs="+", choices=CLIENTS,
                    help="clients to run (default: all; --quick: pip pip-compile uv)")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if args.clients is None:
        args.clients = ["pip", "pip-compile", "uv"] if args.quick else list(CLIENTS)
    data = run_measured("resolve", args, measure)
    text = (f"## Resolving a {fmt_bytes(data['wheel_bytes'])} pipeline "
            f"({'quick' if args.quick else 'full'}, median of {args.reps})\n\n" + render(data))
    print(text)
    write_results("resolve", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
