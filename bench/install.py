"""Installing a 575 MB pipeline that is already on the machine into a fresh venv, and the
no-op when it is already installed: `spacy-index install` (uv and pip) beside plain pip and
uv on the cached wheel and `python -m spacy download`'s way.

    .venv/bin/python bench/install.py            # 5 fresh venvs per method
    .venv/bin/python bench/install.py --quick    # 1 fresh venv per method

One real pipeline wheel (``spacy package`` via tests/wheels.py, padded to 575 MB like
``en_core_web_lg``/``_trf``; built once into bench/work/wheels/) is served by a FakeGitHub on
127.0.0.1, and is downloaded once into spacy-index's cache before anything is timed: every
method starts from a copy on this machine. Methods take turns (round robin, after waiting for
the shared machine to be quiet). Each method, per repetition: a brand-new venv
(spaCy cloned in, tests.clients.make_venv; not timed), the install timed from process start
to exit, then the same command again in that venv (the no-op), timed the same way.

* ``spacy-index install en_core_web_lg --python NEW --no-deps``: uv (auto; uv's cache is
  warmed by the first run, which is reported apart), and ``--installer pip``;
* ``pip install --no-deps --no-index <cached wheel>`` (NEW's pip);
* ``uv pip install --python NEW --no-deps <cached wheel>``, uv's cache warm;
* ``python -m spacy download en_core_web_lg-3.8.0 --direct --no-deps``, spaCy's own CLI with
  its download URL pointed at a static server on 127.0.0.1 holding the same file (spaCy
  rejects a ``--url`` outside github.com, so ``spacy.about.__download_url__`` is set in the
  process that runs it); pip's HTTP cache off, as GitHub's freshly signed URLs make it in
  practice. It runs ``NEW/bin/python -m pip install --no-deps <url>``.

Every client runs isolated from the machine's pip/uv settings (tests.clients.clean_env) with
byte-code written as a user's Python writes it (PYTHONDONTWRITEBYTECODE dropped), every tool
run once before timing.
Goals: the uv path ≤ 0.5 s and ≥ 8x faster than spaCy download's way; the no-op ≤ 0.15 s
and faster than pip's. Results: stdout and bench/results/<date>-install[-quick].json/.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# bench/ goes after site-packages: bench/catalogue.py must not shadow spaCy's `catalogue`
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.append(str(BENCH))

from harness.procfs import wait_quiet  # noqa: E402
from harness.report import md_table, run_measured, write_results  # noqa: E402
from harness.util import MB, REPO, VENV_BIN, log, median  # noqa: E402
from harness.wheels import cached_model  # noqa: E402

PAD = 575_000_000
NAME, VERSION = "core_web_lg", "3.8.0"
UV_GOAL_S, UV_RATIO_GOAL, NOOP_GOAL_S = 0.5, 8.0, 0.15
METHODS = {
    "si-uv": "`spacy-index install` (uv)",
    "si-pip": "`spacy-index install --installer pip`",
    "pip": "`pip install --no-deps --no-index <cached wheel>`",
    "uv": "`uv pip install --no-deps <cached wheel>` (warm uv cache)",
    "spacy-download": "`python -m spacy download --direct` (pip install <url>)",
}

SPACY_DOWNLOAD = (
    "import sys, spacy.about as about\n"
    "about.__download_url__ = sys.argv[1]\n"
    "sys.argv = ['spacy', 'download', sys.argv[2], '--direct', *sys.argv[3:]]\n"
    "from spacy.cli import setup_cli\n"
    "setup_cli()\n"
)


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return took


@dataclasses.dataclass
class Setup:
    """What every timed command needs: the wheel, the environments, the static download site."""

    pkg: Any
    run: Path
    base_env: dict[str, str]
    env: dict[str, str]
    spacy_env: dict[str, str]
    static_url: str

    @property
    def project(self) -> str:
        return self.pkg.project

    def venv(self, tag: str) -> Any:
        from tests.clients import make_venv

        return make_venv(self.run / "venvs" / tag, env=self.base_env)

    def command(self, method: str, python: Path) -> tuple[list[str], dict[str, str]]:
        spacy_index, project, env = str(VENV_BIN / "spacy-index"), self.project, self.env
        if method == "si-uv":
            return [spacy_index, "install", project, "--python", str(python), "--no-deps"], env
        if method == "si-pip":
            return [spacy_index, "install", project, "--python", str(python), "--no-deps",
                    "--installer", "pip"], env
        if method == "pip":
            return [str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                    str(self.pkg.wheel)], env
        if method == "uv":
            return [str(VENV_BIN / "uv"), "pip", "install", "--python", str(python),
                    "--no-deps", str(self.pkg.wheel)], env
        return [str(python), "-c", SPACY_DOWNLOAD, self.static_url, f"{project}-{VERSION}",
                "--no-deps"], self.spacy_env

    def warm_up(self) -> None:
        """Not timed: the wheel into spacy-index's cache (`cache warm` downloads and verifies
        it), and every tool run once so that its byte-code exists."""
        spacy_index = str(VENV_BIN / "spacy-index")
        log(f"warm-up: {self.pkg.wheel.name} ({self.pkg.wheel.stat().st_size / MB:,.0f} MB) "
            "into spacy-index's cache")
        timed([spacy_index, "cache", "warm", self.project], self.env)
        warm = self.venv("warm")
        for argv in ([spacy_index, "install", self.project, "--python", str(warm.python),
                      "--dry-run"],
                     [str(warm.python), "-m", "pip", "--version"],
                     [str(warm.python), "-m", "spacy", "info"]):
            timed(argv, self.env)

    def one(self, method: str, tag: str) -> tuple[float, float]:
        """One install into a fresh venv, then the same command again (the no-op)."""
        v = self.venv(tag)
        argv, menv = self.command(method, v.python)
        wait_quiet(max_wait=15)  # other sessions share this machine
        took = timed(argv, menv)
        installed = v.installed()
        if installed.get(self.project.replace("_", "-")) != VERSION:
            raise RuntimeError(f"{method}: {self.project} not installed: {installed}")
        noop = timed(argv, menv)
        shutil.rmtree(v.path, ignore_errors=True)  # pip's copies are 575 MB each
        return took, noop


def measure(args: argparse.Namespace, run: Path) -> dict:
    from tests.clients import clean_env, serve_directory
    from tests.fakegithub import FakeGitHub
    from tests.wheels import meta_archive

    pkg = cached_model(args.work_dir, name=NAME, version=VERSION, pad_bytes=PAD)
    project = pkg.project
    base_env = clean_env(cache_dir=run / "clients", PYTHONDONTWRITEBYTECODE=None)
    # spaCy's download URL layout: <base>/<name>-<version>/<name>-<version>-py3-none-any.whl
    site = run / "downloads" / f"{project}-{VERSION}"
    site.mkdir(parents=True)
    os.link(pkg.wheel, site / pkg.wheel.name)
    results: dict[str, dict] = {m: {"install": [], "noop": []} for m in args.methods}
    with FakeGitHub(load_fixture=False, archive=meta_archive([pkg])) as gh, \
            serve_directory(run / "downloads") as static:
        gh.add_release(f"{project}-{VERSION}", {pkg.wheel.name: pkg.wheel.read_bytes()})
        env = {**base_env, "GITHUB_API_URL": gh.api_url,
               "SPACY_INDEX_CACHE_DIR": str(run / "spacy-index")}
        setup = Setup(pkg=pkg, run=run, base_env=base_env, env=env,
                      spacy_env={**env, "PIP_NO_CACHE_DIR": "1"}, static_url=static.url)
        setup.warm_up()
        first_uv = None
        # uv's cache starts cold: its first run unpacks the wheel (reported apart)
        for method in ("si-uv", "uv"):
            if method in args.methods:
                took, _ = setup.one(method, f"{method}-cold")
                first_uv = took if method == "si-uv" else first_uv
                log(f"{method}: first run (uv cache cold) {took:.2f} s")
        # round robin, so that a busy moment of the machine hits every method alike
        for rep in range(args.reps):
            for method in args.methods:
                took, noop = setup.one(method, f"{method}-{rep}")
                results[method]["install"].append(took)
                results[method]["noop"].append(noop)
                log(f"{method} #{rep}: install {took:.3f} s, no-op {noop:.3f} s")
    medians = {m: {k: median(v) for k, v in r.items()} for m, r in results.items()}
    return {"wheel": pkg.wheel.name, "size": pkg.wheel.stat().st_size, "sha256": pkg.sha256,
            "runs": results, "medians": medians, "first_uv_seconds": first_uv}


def report(data: dict, quick: bool) -> str:
    med = data["medians"]
    base = med.get("spacy-download", {})
    pip_noop = med.get("pip", {}).get("noop")
    rows = []
    for method, label in METHODS.items():
        if method not in med:
            continue
        m = med[method]
        vs = f"{base['install'] / m['install']:.1f}x" if base and m["install"] else "—"
        noop_vs = f"{pip_noop / m['noop']:.1f}x" if pip_noop and m["noop"] else "—"
        rows.append([label, f"{m['install']:.3f}", vs, f"{m['noop']:.3f}", noop_vs,
                     " ".join(f"{x:.2f}" for x in data["runs"][method]["install"])])
    si = med.get("si-uv", {})
    lines = [
        f"# Install a cached {data['size'] / MB:,.0f} MB pipeline into a fresh venv"
        + (" (quick)" if quick else ""),
        "",
        f"`{data['wheel']}` ({data['size']:,} bytes, a real `spacy package` wheel padded), "
        f"already on this machine; {data['reps']} fresh venv(s) per method; wall time from "
        "process start to exit, median. \"x faster\" is spaCy download's way ÷ this method "
        "(install), and pip's no-op ÷ this method (no-op).",
        "",
        md_table(["method", "install s", "x faster than spacy download", "no-op s",
                  "no-op x faster than pip's", "install runs s"], rows),
        "",
    ]
    if data.get("first_uv_seconds") is not None:
        lines.append(f"- The first `spacy-index install` with uv's cache cold (uv unpacks the "
                     f"wheel into its cache once): {data['first_uv_seconds']:.2f} s.")
    if si:
        ratio = base["install"] / si["install"] if base else float("nan")
        ok_uv = si["install"] <= UV_GOAL_S and ratio >= UV_RATIO_GOAL
        ok_noop = si["noop"] <= NOOP_GOAL_S and (pip_noop is None or si["noop"] < pip_noop)
        lines += [
            f"- Goal: uv path ≤ {UV_GOAL_S} s and ≥ {UV_RATIO_GOAL:.0f}x faster than spaCy "
            f"download's way: {si['install']:.3f} s, {ratio:.1f}x — "
            f"{'met' if ok_uv else 'NOT met'}.",
            f"- Goal: no-op ≤ {NOOP_GOAL_S} s and faster than pip's: {si['noop']:.3f} s "
            f"(pip {pip_noop:.3f} s) — {'met' if ok_noop else 'NOT met'}.",
        ]
    lines += ["", "Commands (NEW is the fresh venv's python, WHEEL the cached wheel):", ""]
    lines += [
        "```",
        "spacy-index install en_core_web_lg --python NEW --no-deps",
        "spacy-index install en_core_web_lg --python NEW --no-deps --installer pip",
        "NEW -m pip install --no-deps --no-index WHEEL",
        "uv pip install --python NEW --no-deps WHEEL",
        "NEW -m spacy download en_core_web_lg-3.8.0 --direct --no-deps   # URL -> 127.0.0.1",
        "```",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in data["machine"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 fresh venv per method instead of 5")
    ap.add_argument("--reps", type=int, help="fresh venvs per method")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 5)
    data = run_measured("install", args, measure)
    text = report(data, args.quick)
    write_results("install", args.quick, data, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
