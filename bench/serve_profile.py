"""Where bench/serve.py's server spends its time (--profile): py-spy samples and strace counts."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from harness.clients import drain, wrk_latency
from harness.report import md_table
from harness.util import VENV_BIN, log
from serve_scenarios import PIP_ACCEPT, Report, repeats_for


def profile(rep: Report, url: str, pid: int, big, project: str, work: Path) -> None:
    """py-spy samples of the server during one cached transfer and one 32-client page run."""
    spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(spy).exists():
        rep.profile.append("py-spy not installed (`.venv/bin/pip install py-spy`); no profile.")
        return
    size = big.wheel.stat().st_size
    jobs = [
        ("1 client downloading the cached big file",
         lambda: drain(f"{url}/files/{big.wheel.name}", 1, count=repeats_for(rep.plan, 1, size),
                       expect_size=size, server_pids=[pid], timeout=rep.plan.transfer_timeout,
                       sink=rep.sink)),
        ("32 clients on the project page",
         lambda: wrk_latency(f"{url}/simple/{project}/", 32, 5, accept=PIP_ACCEPT,
                             server_pids=[pid], work=work)),
    ]
    for title, job in jobs:
        raw = work / f"pyspy-{len(rep.profile)}.txt"
        spy_proc = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "250", "-f", "raw",
                                     "-o", str(raw), "-d", "60", "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        try:
            job()
        finally:
            spy_proc.send_signal(2)
            try:
                _, err = spy_proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
                err = ""
        if not raw.exists():
            rep.profile.append(f"**{title}**: py-spy failed: {err.strip()[-300:]}")
            continue
        rep.profile.append(f"**{title}** (py-spy, 250 Hz, non-idle samples; "
                           "self = leaf frame, total = anywhere on the stack):\n")
        rep.profile.append(summarize_collapsed(raw.read_text()))


def syscall_profile(rep: Report, servers: dict[str, tuple[str, list[int]]], big,
                    work: Path) -> None:
    """2c: ``strace -c -f`` of each server during one download of the big file (counts)."""
    exe = shutil.which("strace")
    if exe is None:
        rep.notes.append("strace is not installed (`apt-get install -y strace`): no system-call "
                         "counts (section 2c).")
        return
    size = big.wheel.stat().st_size
    for name, (url, pids) in servers.items():
        traced = pids[1:] if name == "nginx" else pids  # nginx: the workers
        out = work / f"strace-{len(rep.syscalls)}.txt"
        argv = [exe, "-c", "-f", "-q", "-o", str(out)]
        for pid in traced:
            argv += ["-p", str(pid)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)  # attached
            drain(f"{url}/files/{big.wheel.name}", 1, expect_size=size, server_pids=pids,
                  timeout=rep.plan.transfer_timeout, sink=rep.sink)
            time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        counts: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in out.read_text().splitlines():
                f = line.split()
                # % time, seconds, usecs/call, calls, [errors,] syscall
                if len(f) >= 5 and f[3].isdigit() and not line.startswith("%"):
                    counts[f[-1]] = int(f[3])
        if counts:
            rep.syscalls[name] = counts
            log(f"  strace {name}: {counts.get('sendfile', 0)} sendfile, "
                f"{counts.get('epoll_wait', 0)} epoll_wait, {counts.get('total', 0)} calls")


def summarize_collapsed(text: str, top: int = 12) -> str:
    self_c: Counter = Counter()
    total_c: Counter = Counter()
    n = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        n += c
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        # drop the thread name frame py-spy puts first
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if frames:
            self_c[frames[-1]] += c
        for f in set(frames):
            total_c[f] += c
    if not n:
        return "(no samples)\n"
    rows = [(f, f"{c / n:.1%}", f"{total_c[f] / n:.1%}") for f, c in self_c.most_common(top)]
    inclusive = [(f, f"{c / n:.1%}") for f, c in total_c.most_common(40)
                 if any(k in f for k in ("_file_body", "to_thread", "run_sync", "send", "h11",
                                         "project_page", "local_view", "dumps", "AccessLog",
                                         "negotiate", "page_response", "body_etag", "run_in_executor",
                                         "handle_events", "data_received"))][:12]
    return (f"{n} samples\n\n" + md_table(["function (leaf)", "self", "total"], rows) + "\n\n"
            + md_table(["function (inclusive)", "total"], inclusive) + "\n")


def syscalls_section(rep: Report) -> list[str]:
    out: list[str] = []
    if rep.syscalls:
        out.append("### 2c. System calls of one transfer\n")
        out.append("`strace -c -f` attached to the server (nginx: its workers) while one client "
                   "downloads the file once on a fresh connection (counts are exact; strace "
                   "slows every call, so no timing here). `epoll_wait` ≈ event-loop "
                   "iterations.\n")
        keys = sorted({k for d in rep.syscalls.values() for k in d},
                      key=lambda k: (-max(d.get(k, 0) for d in rep.syscalls.values()), k))
        rows = [(k, *(f"{rep.syscalls[n].get(k, 0):,}" for n in rep.syscalls)) for k in keys]
        out.append(md_table(["syscall", *rep.syscalls], rows) + "\n")
    return out
