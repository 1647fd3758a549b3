"""serve's CPU per lookup of a name it has not cached, from a slow upstream, that the client
abandons (what bench/abuse.py's slow-upstream condition costs serve, one request at a time).

    .venv/bin/python bench/uncached_cost.py              # 300 lookups, 3 repetitions
    .venv/bin/python bench/uncached_cost.py --quick      # 100 lookups, 1 repetition
    .venv/bin/python bench/uncached_cost.py --profile    # also a py-spy profile (needs py-spy)

Set-up (127.0.0.1 only; everything started here is stopped here): a fake upstream (a thread
of this process, ``http.server``) whose ``/simple/slow-*/`` pages take ``--delay`` seconds
(20) and notice a closed connection; ``spacy-index serve --config <toml>`` (``[server]
spacy_models = false``: nothing goes to GitHub). A client opens a new connection every 50 ms,
asks ``GET /simple/slow-<n>/`` (a new name each time) and closes it 2 s later, unanswered:
serve accepts, routes, starts an upstream request on its page loop, notices the disconnect and
cancels the fetch. serve's CPU = utime + stime of its process (all threads, /proc/PID/stat)
over the run, divided by the lookups; its child processes' (the page-fetch process) apart.
With ``--profile``, py-spy samples serve at 250 Hz and the report lists where its non-idle
samples went (by frame below ``Handle._run``).
Results: stdout and bench/results/<date>-uncached-cost[-quick].md (+ .json).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.procfs import children, cpu_seconds
from harness.report import md_table, run_measured, write_results
from harness.servers import spacy_index_serve
from harness.upstream import FakeUpstream, QuietHandler
from harness.util import REPO, log, median


class SlowIndex(QuietHandler):
    """``/simple/slow-*/`` after ``delay`` s (or until the peer closes); others at once."""

    protocol_version = "HTTP/1.1"
    delay = 20.0
    asked = 0
    closed_early = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        name = self.path.strip("/").rsplit("/", 1)[-1]
        if name.startswith("slow"):
            with self.lock:
                SlowIndex.asked += 1
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline:
                ready, _, _ = select.select([self.connection], [], [], 0.05)
                if ready and not self.connection.recv(1, socket.MSG_PEEK):
                    with self.lock:
                        SlowIndex.closed_early += 1
                    return
        body = json.dumps({"meta": {"api-version": "1.0"}, "name": name, "files": [
            {"filename": f"{name}-1.0.tar.gz", "url": f"/f/{name}-1.0.tar.gz",
             "hashes": {"sha256": hashlib.sha256(name.encode()).hexdigest()}}]}).encode()
        with contextlib.suppress(OSError):  # the peer closed meanwhile
            self.send_body(200, body, "application/vnd.pypi.simple.v1+json")


def abandon(port: int, lookups: int, rep: int) -> float:
    """``lookups`` new names, one every 50 ms, each connection closed 2 s later; seconds."""
    started = time.monotonic()
    open_: list[tuple[float, socket.socket]] = []
    for i in range(lookups):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET /simple/slow-{rep}-{i}/ HTTP/1.1\r\nHost: bench\r\n"
                     "Accept: application/vnd.pypi.simple.v1+json\r\n\r\n".encode())
        open_.append((time.monotonic(), sock))
        time.sleep(0.05)
        while open_ and time.monotonic() - open_[0][0] > 2.0:
            open_.pop(0)[1].close()
    for _, sock in open_:
        sock.close()
    return time.monotonic() - started


def where(profile: Path, top: int = 12) -> list[tuple[str, int]]:
    """py-spy raw samples, not idle, by the three frames below ``Handle._run``."""
    by: Counter[str] = Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any("select (selectors.py" in f for f in frames):
            continue
        if frames[-1].startswith("read_frame ("):  # the page-fetch reader thread, waiting
            continue
        at = next((i for i, f in enumerate(frames) if f.startswith("Handle._run")), None)
        picked = frames[at + 1:at + 4] if at is not None else frames[-3:]
        by[" ; ".join(f.split(" (")[0] for f in picked)] += int(count)
    return by.most_common(top)


def measure(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    SlowIndex.delay = args.delay
    config = run_dir / "serve.toml"
    config.write_text("[server]\nspacy_models = false\n")
    runs: list[dict[str, Any]] = []
    profile: list[tuple[str, int]] = []
    with FakeUpstream(SlowIndex) as upstream, \
            spacy_index_serve(cache_dir=run_dir / "cache", upstream=upstream.url + "/simple/",
                              api_url="http://127.0.0.1:9", token=None, log_dir=run_dir,
                              extra_args=["--config", str(config)]) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        for rep in range(args.reps):
            spy = None
            if args.profile and rep == 0:
                spy_out = run_dir / "profile.txt"
                spy = subprocess.Popen(
                    [shutil.which("py-spy") or str(REPO / ".venv/bin/py-spy"), "record",
                     "-p", str(srv.pid), "-o", str(spy_out), "-f", "raw", "-r", "250"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            asked_before, closed_before = SlowIndex.asked, SlowIndex.closed_early
            kids = children(srv.pid)  # the page-fetch process (page_fetch = "process")
            cpu0, kids0 = cpu_seconds([srv.pid]), cpu_seconds(kids)
            took = abandon(port, args.lookups, rep)
            time.sleep(1.0)  # the last cancellations
            kids = sorted(set(kids) | set(children(srv.pid)))
            cpu = cpu_seconds([srv.pid]) - cpu0
            kids_cpu = cpu_seconds(kids) - kids0
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
                profile = where(run_dir / "profile.txt")
            runs.append({"rep": rep + 1, "lookups": args.lookups, "seconds": round(took, 2),
                         "serve_cpu_s": round(cpu, 3),
                         "ms_per_lookup": round(cpu / args.lookups * 1000, 2),
                         "children_cpu_s": round(kids_cpu, 3),
                         "children_ms_per_lookup": round(kids_cpu / args.lookups * 1000, 2),
                         "upstream_asked": SlowIndex.asked - asked_before,
                         "upstream_saw_closed": SlowIndex.closed_early - closed_before})
            log(f"rep {rep + 1}: {runs[-1]}")
    return {"runs": runs, "median_ms_per_lookup": median([r["ms_per_lookup"] for r in runs]),
            "profile": profile}


def render(data: dict[str, Any]) -> str:
    lines = [f"# serve's CPU per abandoned uncached lookup ({data['started']})", "",
             f"Median **{data['median_ms_per_lookup']} ms** of serve CPU per lookup, in serve's "
             f"own process (where the cached answers run); its child processes (the page-fetch "
             f"process of `[limits] page_fetch = \"process\"`) are counted apart.", "",
             md_table(["rep", "lookups", "s", "serve CPU s", "ms per lookup",
                       "children CPU s", "children ms per lookup", "upstream asked",
                       "upstream saw the connection closed"],
                      [[r["rep"], r["lookups"], r["seconds"], r["serve_cpu_s"],
                        r["ms_per_lookup"], r.get("children_cpu_s", "-"),
                        r.get("children_ms_per_lookup", "-"), r["upstream_asked"],
                        r["upstream_saw_closed"]] for r in data["runs"]])]
    if data["profile"]:
        total = sum(n for _, n in data["profile"])
        lines += ["", "Where serve's non-idle samples went (first repetition, top frames):", "",
                  md_table(["samples", "share of these", "frames below Handle._run"],
                           [[n, f"{n / total:.0%}", k] for k, n in data["profile"]])]
    lines += ["", "Machine:", "", md_table(["", ""], data["machine"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 lookups, 1 repetition")
    ap.add_argument("--reps", type=int, help="repetitions (3, quick 1)")
    ap.add_argument("--lookups", type=int, help="abandoned lookups per repetition (300, quick 100)")
    ap.add_argument("--delay", type=float, default=20.0, help="upstream delay, s (20)")
    ap.add_argument("--profile", action="store_true", help="py-spy profile of the first rep")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true", help="keep the run folder")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.lookups = args.lookups or (100 if args.quick else 300)
    data = run_measured("uncached-cost", args, measure)
    text = render(data)
    print(text)
    write_results("uncached-cost", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
