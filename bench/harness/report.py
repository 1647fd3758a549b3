"""Results: markdown helpers, the machine description, and ``bench/results/`` files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .util import REPO, log


def _version(cmd: list[str], pattern: str = r"(\S+)") -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    m = re.search(pattern, text[0]) if text else None
    return m.group(1) if m else (text[0] if text else "?")


def machine_info() -> list[tuple[str, str]]:
    import importlib.metadata as md

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem = f"{int(fh.readline().split()[1]) / (1 << 20):.1f} GiB"
    os_name = "?"
    with contextlib.suppress(OSError), open("/etc/os-release") as fh:
        for line in fh:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    pkgs = []
    for name in ("spacy-index", "starlette", "uvicorn", "h11", "httptools", "uvloop", "anyio",
                 "httpx", "pip", "pip-tools", "spacy"):
        try:
            pkgs.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pkgs.append(f"{name} (absent)")
    commit = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = head + (" (src/ has uncommitted changes)" if dirty else " (src/ clean)")
    return [
        ("spacy-index commit", commit),
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu),
        ("memory", mem),
        ("OS", os_name),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("packages", ", ".join(pkgs)),
        ("nginx", _version(["nginx", "-v"], r"nginx/(\S+)")),
        ("curl", _version(["curl", "--version"], r"curl (\S+)")),
        ("wrk", _version(["wrk", "-v"], r"wrk (\S+)")),
    ]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def results_dir() -> Path:
    """Where reports go: ``bench/results/`` when a bench is run by hand; ``BENCH_RESULTS_DIR``
    sends a trial run elsewhere, so that it leaves the tracked results alone."""
    return Path(os.environ.get("BENCH_RESULTS_DIR") or REPO / "bench" / "results")


def write_results(name: str, quick: bool, data: dict, text: str) -> Path:
    """Write ``<results_dir()>/<date>-<name>[-quick].json`` and ``.md``; returns the stem path."""
    import datetime as _dt

    res = results_dir()
    res.mkdir(parents=True, exist_ok=True)
    stem = res / f"{_dt.date.today().isoformat()}-{name}{'-quick' if quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(text + "\n")
    log(f"wrote {stem}.json/.md")
    return stem


def run_measured(name: str, args: Any, measure: Callable[[Any, Path], dict]) -> dict:
    """Run ``measure(args, run_dir)`` in a fresh run folder under ``args.work_dir`` (removed
    afterwards unless ``args.keep``), stop cleanly on SIGTERM, and stamp the result with the
    bench name, mode, repetitions, start time, duration and machine details."""
    import datetime as _dt

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.work_dir))
    started = _dt.datetime.now().isoformat(timespec="seconds")
    t0 = time.monotonic()
    try:
        data = measure(args, run_dir)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    data.update(bench=name, quick=args.quick, reps=args.reps, started=started,
                seconds=round(time.monotonic() - t0, 1), machine=machine_info())
    return data

