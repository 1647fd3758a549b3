"""Page latency of well-behaved clients while others abuse ``spacy-index serve`` (issue 14).

    .venv/bin/python bench/abuse.py            # 3 repetitions, 10 s windows (~4-6 min)
    .venv/bin/python bench/abuse.py --quick    # 1 repetition, 5 s windows (~1-2 min)

Set-up (127.0.0.1 only; every server and client process is stopped by the script, also on
error and SIGTERM):

* a fake **upstream** (a thread of this process, ``http.server``): a PEP 691 index whose
  ``/simple/demo/`` is a small JSON page (one sdist with a sha256) answered at once, as are
  ``fresh-*`` names; every project whose name starts with ``slowpoke`` is answered only after
  ``--slow-delay`` seconds (10); any other name is 404. It logs every request (path, delay, how many were in flight);
* ``spacy-index serve --config <toml> --upstream <upstream>/simple/ --log-level warning``, one
  process for the whole run, the TOML holding only ``[server] spacy_models = false`` (nothing
  goes to GitHub; ``[limits]`` at its defaults: 1000 connections, header_timeout 15 s,
  idle_timeout 5 s). ``/simple/demo/`` is requested once through it before the measurements,
  so every measured answer comes from serve's page cache (fresh for ``page_ttl`` 60 s, then
  stale-while-revalidate: answered from the cache while a background refresh runs);
* the **well-behaved clients**: one client process (``python -S bench/abuse.py pages``,
  asyncio streams) with 8 keep-alive connections asking ``GET /simple/demo/`` with ``Accept:
  application/vnd.pypi.simple.v1+json`` at a fixed total rate (1000 req/s, staggered, each
  connection waits for its answer before the next request) for a fixed window. Paced, not
  closed-loop: a closed loop (wrk, bench/loadgen.py pages) would saturate serve's core and the
  machine's two, and measure queueing at saturation rather than what a well-behaved client
  waits. Latency = request written to last body byte (``time.monotonic_ns``); "held-up"
  latency also counts, for a request that could not be sent on time because the previous
  answer was late, the time it waited (coordinated omission; the client's own timer lag is
  not counted). Every answer must be 200 with the warm-up's body length.

Conditions, one after the other in each repetition (order rotated between repetitions):

1. ``baseline``: nothing else;
2. ``idle``: an abuser process holds 300 connections: 150 that connect and send nothing, 150
   that send ``GET /x HTTP/1.1\\r\\n`` and never finish the head. They are opened before the
   window and the window ends ~11 s after the first one opened, inside header_timeout (15 s);
   one closed before the window ends is re-opened (counted). After the window the abuser
   waits (≤ 20 s after opening) for serve to close them and reports when and how it did;
3. ``slow``: an abuser process with 24 clients asking for slow pages from 1 s before the
   window to its end: 8 ask for one slow project (``slowpoke-<tag>-s<g>``; once serve has
   answered it, i.e. cached it, the next one), 16 for a new uncached slow name each time
   (``slowpoke-<tag>-<client>-<k>``); in each group half wait for the
   answer (≤ 30 s), half give up after 2 s and ask again on a new connection. Their first
   requests are spread over 1 s (``--stagger``);
4. ``slow-burst``: the same, all 24 starting at once, so the impatient ones give up and ask
   again in step (12 new requests at the same moment every 2 s).

After each window a well-behaved client asks for 3 new uncached names at once (the upstream
answers ``fresh-*`` at once; 20 s timeout), while the abuse, or serve's upstream fetches for
the slow clients that have gone, still run: what a name serve has not cached costs then (not
part of the p99). Then the upstream answers the delayed requests at once, and the next run
waits (≤ 15 s) until none is in flight.

Per run: p50/p90/p99/p99.9/max of the well-behaved requests, failed requests, serve's CPU-s
(``/proc/PID/stat``) over the window, its peak RSS (VmHWM, reset with ``clear_refs`` before
each condition, read after the abusers are gone), the client's and the abuser's CPU, and the
other load (machine CPU from ``/proc/stat`` minus all of ours). The goal is on the **ratio of
the medians (over the repetitions) of p99**: condition ÷ baseline ≤ 1.5. Before each run the
script waits (bounded) for a quiet machine; a run with more than 0.3 cores of other load is
retried once (quick: never), keeping the less disturbed try. Results: stdout and
bench/results/<date>-abuse[-quick].md (+ .json: every run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.procfs import cpu_seconds, reset_peak_rss, status_kib, system_cpu, wait_quiet
from harness.report import machine_info, md_table, run_measured, write_results
from harness.servers import ManagedProcess, spacy_index_serve
from harness.util import REPO, log, median

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
CONDITIONS = ("baseline", "idle", "slow", "slow-burst")
SLOW = ("slow", "slow-burst")
GOAL_RATIO = 1.5
SLOW_PREFIX = "slowpoke"
FRESH_PREFIX = "fresh"  #: uncached names the upstream answers at once (the probes)
DEMO_SDIST = b"demo 1.0: not a real sdist, only its hash matters\n"


# --------------------------------------------------------------------------- the upstream
class Upstream(http.server.ThreadingHTTPServer):
    """The fake PEP 691 index: ``demo`` at once, ``slowpoke*`` after ``delay`` s (or at once
    after :meth:`release`), anything else 404; every request logged."""

    daemon_threads = True
    request_queue_size = 256  # serve opens up to 32 page connections at once

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.in_flight = 0  # delayed requests being held
        self.peak_in_flight = 0
        sha = hashlib.sha256(DEMO_SDIST).hexdigest()
        self.demo_sha = sha
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True, name="upstream")

    def __enter__(self) -> Upstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()  # no handler thread sleeps past the end
        self.shutdown()
        self.server_close()
        self.thread.join(10)

    def page(self, name: str) -> bytes:
        return json.dumps({
            "meta": {"api-version": "1.0"}, "name": name,
            "files": [{"filename": f"{name}-1.0.tar.gz",
                       "url": f"{self.url}/packages/{name}-1.0.tar.gz",
                       "hashes": {"sha256": self.demo_sha}}]}).encode()

    def record(self, **kw: Any) -> None:
        with self.lock:
            self.requests.append(kw)

    def mark(self) -> int:
        with self.lock:
            self.peak_in_flight = self.in_flight
            return len(self.requests)

    def since(self, mark: int) -> list[dict]:
        with self.lock:
            return list(self.requests[mark:])

    def hold(self, delta: int) -> None:
        with self.lock:
            self.in_flight += delta
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # serve gave up on a request
            super().handle_error(request, client_address)


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: head and body go out in two writes: without TCP_NODELAY the body waits for serve's
    #: delayed ACK (~40 ms per uncached page)
    disable_nagle_algorithm = True
    server: Upstream

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        t0 = time.monotonic()
        up = self.server
        path = self.path.split("?", 1)[0]
        m = re.fullmatch(r"/simple/([^/]+)/", path)
        name = m.group(1) if m else None
        delayed = 0.0
        if name is not None and name.startswith(SLOW_PREFIX) and not up.released.is_set():
            up.hold(+1)
            try:
                up.released.wait(up.delay)
            finally:
                up.hold(-1)
            delayed = time.monotonic() - t0
        if name == "demo" or (name or "").startswith((SLOW_PREFIX, FRESH_PREFIX)):
            body, ctype, status = up.page(name or ""), JSON_TYPE, 200
        elif path == "/packages/demo-1.0.tar.gz":
            body, ctype, status = DEMO_SDIST, "application/octet-stream", 200
        else:
            body, ctype, status = b"not found\n", "text/plain", 404
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if status == 200 and self.headers.get("If-None-Match") == etag:
            status, body = 304, b""
        sent = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if status in (200, 304):
                self.send_header("ETag", etag)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # serve closed the connection meanwhile
            sent = False
            self.close_connection = True
        up.record(name=name, path=path, status=status, t0=t0, t1=time.monotonic(),
                  delayed=round(delayed, 3), sent=sent, accept=self.headers.get("Accept", ""))


# --------------------------------------------------------------------------- client processes
def _pct(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile in ms."""
    if not sorted_ns:
        return float("nan")
    rank = max(1, min(len(sorted_ns), -(-int(p * len(sorted_ns) * 10) // 1000)))
    return sorted_ns[rank - 1] / 1e6


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:[ \t]*(\d+)", head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return status, body


async def _pages(a: argparse.Namespace) -> dict:
    """The well-behaved clients: ``a.connections`` keep-alive connections, ``a.rate`` req/s
    in all, from ``a.start`` for ``a.seconds``."""
    loop = asyncio.get_running_loop()
    req = (f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\nUser-Agent: bench-abuse-pages"
           f"\r\nAccept: {a.accept}\r\n\r\n").encode()
    interval = a.connections / a.rate
    end = a.start + a.seconds
    raw: list[int] = []
    held: list[int] = []
    errors: Counter = Counter()
    reconnects = [0]
    slow_at: list[tuple[float, float]] = []

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), 10)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def one(i: int) -> None:
        reader, writer = await connect()
        plan = a.start + i * interval / a.connections
        late = False  # the previous answer came after this request's planned time
        for _ in range(int(a.seconds * a.rate / a.connections) + 2):
            if plan >= end:
                break
            wait = plan - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            t0 = time.monotonic_ns()
            try:
                writer.write(req)
                status, body = await asyncio.wait_for(_read_answer(reader), a.timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError, IndexError) as e:
                errors[type(e).__name__] += 1
                writer.close()
                if reconnects[0] >= 50:
                    return
                reconnects[0] += 1
                try:
                    reader, writer = await connect()
                except (OSError, TimeoutError) as e2:
                    errors[f"reconnect {type(e2).__name__}"] += 1
                    return
                plan += interval
                late = False
                continue
            t1 = time.monotonic_ns()
            if status != 200:
                errors[f"HTTP {status}"] += 1
            elif a.expect_bytes and len(body) != a.expect_bytes:
                errors["body length"] += 1
            raw.append(t1 - t0)
            if t1 - t0 > 5_000_000 and len(slow_at) < 200:
                slow_at.append((t0 / 1e9, (t1 - t0) / 1e6))
            held.append(t1 - int(plan * 1e9) if late else t1 - t0)
            plan += interval
            late = t1 / 1e9 > plan
        writer.close()

    while loop.time() < a.start - 0.002:
        await asyncio.sleep(min(0.05, a.start - loop.time()))
    c0 = os.times()
    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(a.connections))),
                           a.seconds + a.timeout + 10)
    c1 = os.times()
    wall = time.monotonic() - t0
    raw.sort()
    held.sort()
    return {"requests": len(raw), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "reconnects": reconnects[0], "seconds": wall, "cpu": (c1.user + c1.system)
            - (c0.user + c0.system),
            **{f"p{k}": _pct(raw, p) for k, p in (("50", 50), ("90", 90), ("99", 99),
                                                   ("99_9", 99.9))},
            "max": raw[-1] / 1e6 if raw else float("nan"),
            "held_p99": _pct(held, 99), "held_max": held[-1] / 1e6 if held else float("nan"),
            "over_5ms": sum(1 for x in raw if x > 5_000_000),
            "over_10ms": sum(1 for x in raw if x > 10_000_000), "slow_at": slow_at}


class _Holder(asyncio.Protocol):
    """One idle (``half=False``) or half-sent connection; notes what serve did with it."""

    def __init__(self, half: bool, log_: list[dict]) -> None:
        self.half = half
        self.got = b""
        self.opened = time.monotonic()
        self.closed: float | None = None
        self.transport: asyncio.Transport | None = None
        self.log = log_
        self.ours = False  # closed by the abuser, not by serve

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.opened = time.monotonic()
        if self.half:
            self.transport.write(b"GET /x HTTP/1.1\r\n")

    def data_received(self, data: bytes) -> None:
        if len(self.got) < 200:
            self.got += data[:200]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = time.monotonic()
        self.log.append({"half": self.half, "opened": self.opened, "closed": self.closed,
                         "by_server": not self.ours,
                         "answer": self.got.split(b"\r\n", 1)[0].decode(errors="replace"),
                         "error": type(exc).__name__ if exc else None})


async def _idle(a: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    c0 = os.times()
    ended: list[dict] = []
    reopened = failed_open = opened = 0

    async def open_one(half: bool) -> _Holder | None:
        nonlocal failed_open, opened
        try:
            _t, p = await asyncio.wait_for(
                loop.create_connection(lambda: _Holder(half, ended), a.host, a.port), 10)
            opened += 1
            return p
        except (OSError, TimeoutError):
            failed_open += 1
            return None

    kinds = [i % 2 == 1 for i in range(a.n)]  # even: silent, odd: half-sent
    holders: list[_Holder | None] = []
    for i in range(0, a.n, 25):  # batches: no SYN burst beyond the listen backlog
        holders += await asyncio.gather(*(open_one(h) for h in kinds[i:i + 25]))
    first_open = min((h.opened for h in holders if h), default=time.monotonic())
    opened_at = time.monotonic() - first_open
    print(json.dumps({"ready": sum(1 for h in holders if h), "open_s": opened_at}), flush=True)
    # until the window ends: keep n open (re-open what serve closes; counted)
    for _ in range(int((a.window_end - time.monotonic()) / 0.05) + 2):
        if time.monotonic() >= a.window_end:
            break
        for i, h in enumerate(holders):
            if (h is None or h.closed is not None) and reopened < 3 * a.n:
                reopened += 1
                holders[i] = await open_one(kinds[i])
        await asyncio.sleep(0.05)
    open_at_end = sum(1 for h in holders if h and h.closed is None)
    closed_in_window = len(ended)
    # then: how and when does serve close them? (bounded: a.hold_until)
    for _ in range(int((a.hold_until - time.monotonic()) / 0.05) + 2):
        if time.monotonic() >= a.hold_until or all(h is None or h.closed for h in holders):
            break
        await asyncio.sleep(0.05)
    still_open = 0
    for h in holders:
        if h and h.closed is None and h.transport is not None:
            h.ours = True
            still_open += 1
            h.transport.close()
    await asyncio.sleep(0.1)
    c1 = os.times()
    by_server = [e for e in ended if e["by_server"]]

    def ages(half: bool) -> list[float]:
        return sorted(round(e["closed"] - e["opened"], 2) for e in by_server if e["half"] == half)

    return {"n": a.n, "opened": opened, "failed_open": failed_open,
            "open_s": opened_at, "open_at_window_end": open_at_end,
            "closed_in_window": closed_in_window, "reopened": reopened,
            "closed_by_server": len(by_server), "still_open_at_hold_end": still_open,
            "silent_closed_after_s": _spread(ages(False)),
            "half_closed_after_s": _spread(ages(True)),
            "answers": dict(Counter(e["answer"] or "(nothing)" for e in by_server)),
            "close_errors": dict(Counter(e["error"] or "FIN" for e in by_server)),
            "cpu": (c1.user + c1.system) - (c0.user + c0.system)}


def _spread(xs: list[float]) -> dict:
    if not xs:
        return {}
    return {"n": len(xs), "min": xs[0], "median": median(xs), "max": xs[-1]}


async def _slow(a: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    c0 = os.times()
    results: list[dict] = []

    async def ask(name: str, patience: float) -> dict:
        t0 = time.monotonic()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), 10)
            writer.write(f"GET /simple/{name}/ HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
                         f"User-Agent: bench-abuse-slow\r\nAccept: {JSON_TYPE}\r\n"
                         "Connection: close\r\n\r\n".encode())
            left = min(patience, a.window_end - time.monotonic())
            status, _ = await asyncio.wait_for(_read_answer(reader), max(0.01, left))
            out = {"outcome": f"HTTP {status}"}
        except TimeoutError:
            out = {"outcome": "cut at window end" if time.monotonic() >= a.window_end - 0.02
                   else "gave up"}
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            out = {"outcome": type(e).__name__}
        finally:
            if writer is not None:
                writer.close()
        return {**out, "name": name, "t0": t0, "seconds": round(time.monotonic() - t0, 3),
                "patience": patience}

    gen = [0]  # the shared slow project: the next one once serve has answered it (cached)

    async def client(i: int, same: bool, patience: float) -> None:
        await asyncio.sleep(max(0.0, a.begin + a.stagger * i / n - loop.time()))
        for k in range(500):
            if time.monotonic() >= a.window_end:
                return
            g = gen[0]
            name = f"{SLOW_PREFIX}-{a.tag}-s{g}" if same else f"{SLOW_PREFIX}-{a.tag}-{i}-{k}"
            r = await ask(name, patience)
            r["group"] = "same" if same else "distinct"
            results.append(r)
            if same and r["outcome"] == "HTTP 200" and gen[0] == g:
                gen[0] = g + 1
            if r["outcome"] not in ("HTTP 200", "gave up"):
                await asyncio.sleep(0.1)  # an error: do not spin

    specs = []
    for i in range(a.same):
        specs.append((i, True, a.patient_timeout if i % 2 == 0 else a.impatient))
    for i in range(a.distinct):
        specs.append((a.same + i, False, a.patient_timeout if i % 2 == 0 else a.impatient))
    n = len(specs)
    while loop.time() < a.begin:
        await asyncio.sleep(min(0.05, max(0.0, a.begin - loop.time())))
    print(json.dumps({"ready": n}), flush=True)
    await asyncio.wait_for(asyncio.gather(*(client(*s) for s in specs)),
                           a.window_end - time.monotonic() + 15)
    c1 = os.times()
    summary: dict[str, dict] = {}
    for group in ("same", "distinct"):
        for kind, pat in (("patient", a.patient_timeout), ("impatient", a.impatient)):
            rs = [r for r in results if r["group"] == group and r["patience"] == pat]
            ok = sorted(r["seconds"] for r in rs if r["outcome"] == "HTTP 200")
            summary[f"{group}/{kind}"] = {
                "requests": len(rs), "outcomes": dict(Counter(r["outcome"] for r in rs)),
                "ok_seconds": _spread(ok)}
    return {"clients": len(specs), "requests": len(results), "summary": summary,
            "shared_projects": gen[0] + 1,
            "outcomes": dict(Counter(r["outcome"] for r in results)),
            "events": [(r["t0"], r["seconds"], r["outcome"]) for r in results[:1000]],
            "cpu": (c1.user + c1.system) - (c0.user + c0.system)}


def client_main(argv: list[str]) -> int:
    """``python -S bench/abuse.py pages|idle|slow ...``: the client processes; one JSON line
    on stdout at the end (idle/slow print a ``ready`` line first)."""
    ap = argparse.ArgumentParser(prog="bench/abuse.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("pages", "idle", "slow"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--window-end", type=float, default=0.0)
    p = sub.choices["pages"]
    p.add_argument("--path", default="/simple/demo/")
    p.add_argument("--accept", default=JSON_TYPE)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--start", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--expect-bytes", type=int, default=0)
    p = sub.choices["idle"]
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--hold-until", type=float, required=True)
    p = sub.choices["slow"]
    p.add_argument("--tag", required=True)
    p.add_argument("--same", type=int, default=8)
    p.add_argument("--distinct", type=int, default=16)
    p.add_argument("--patient-timeout", type=float, default=30)
    p.add_argument("--impatient", type=float, default=2)
    p.add_argument("--begin", type=float, required=True)
    p.add_argument("--stagger", type=float, default=0.0,
                   help="spread the clients' first requests over this many seconds")
    a = ap.parse_args(argv)
    fn = {"pages": _pages, "idle": _idle, "slow": _slow}[a.cmd]
    out = asyncio.run(fn(a))
    print(json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------- serve
@contextlib.contextmanager
def start_serve(config: Path, upstream: str, cache: Path, log_dir: Path):
    """``spacy-index serve --config`` on a free 127.0.0.1 port (harness.servers.spacy_index_serve);
    yields the ManagedProcess, its URL and its port. GitHub is never asked
    (``spacy_models = false``)."""
    with spacy_index_serve(cache_dir=cache, upstream=upstream, api_url="http://127.0.0.1:9",
                           token=None, log_dir=log_dir,
                           extra_args=["--config", str(config)]) as handle:
        yield handle.process, handle.url, int(handle.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def spawn(argv: list[str]):
    """A client process (stdout piped), killed at exit if still running."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.communicate(timeout=5)


def read_line(p: subprocess.Popen, timeout: float) -> dict:
    """The next JSON line of ``p``'s stdout within ``timeout`` s."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box or not box[0].strip():
        err = ""
        if p.poll() is not None:
            err = p.stderr.read()[-2000:]
        raise RuntimeError(f"{p.args[3]} client: no answer within {timeout}s {err}")
    return json.loads(box[0])


def finish(p: subprocess.Popen, timeout: float) -> dict:
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{p.args[3]} client failed ({p.returncode}): {err[-2000:]}")
    lines = [x for x in out.splitlines() if x.strip()]
    return json.loads(lines[-1])


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests (``steal`` in /proc/stat), all cores."""
    with open("/proc/stat") as fh:
        return int(fh.readline().split()[8]) / os.sysconf("SC_CLK_TCK")


def probe(port: int, tag: str, n: int, timeout: float) -> list[dict]:
    """``n`` concurrent well-behaved requests for new uncached names that the upstream answers
    at once (``fresh-*``), each on its own connection: what a new name costs a client now."""

    async def one(i: int) -> dict:
        t0 = time.monotonic()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(f"GET /simple/{FRESH_PREFIX}-{tag}-{i}/ HTTP/1.1\r\nHost: 127.0.0.1:"
                         f"{port}\r\nUser-Agent: bench-abuse-probe\r\nAccept: {JSON_TYPE}\r\n"
                         "Connection: close\r\n\r\n".encode())
            status, _ = await asyncio.wait_for(_read_answer(reader), timeout)
            outcome = f"HTTP {status}"
        except TimeoutError:
            outcome = f"no answer in {timeout:.0f} s"
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            outcome = type(e).__name__
        finally:
            if writer is not None:
                writer.close()
        return {"outcome": outcome, "ms": round((time.monotonic() - t0) * 1000, 2)}

    async def gather() -> list[dict]:
        return list(await asyncio.gather(*(one(i) for i in range(n))))

    return asyncio.run(gather())


# --------------------------------------------------------------------------- one run
def run_condition(cond: str, rep: int, w: dict, args: argparse.Namespace) -> dict:
    """One measurement of ``cond``: abuser up, window of well-behaved requests, abuser down."""
    up: Upstream = w["upstream"]
    mp: ManagedProcess = w["serve"]
    pid = mp.pid
    me = [sys.executable, "-S", str(Path(__file__).resolve())]
    port = str(w["port"])
    tag = f"r{rep}{cond[0]}{w['tries']}"
    w["tries"] += 1
    log_offset = mp.log_path.stat().st_size
    up.released.clear()
    mark = up.mark()
    hwm_reset = reset_peak_rss(pid)
    cpu_cond0 = cpu_seconds([pid])
    now = time.monotonic()
    t_abuse = now + 1.5  # abuser ready by then (300 connections take < 0.5 s)
    start = t_abuse + (1.0 if cond in SLOW else 0.5)
    end = start + args.window
    result: dict[str, Any] = {"condition": cond, "rep": rep, "tag": tag,
                              "hwm_reset": hwm_reset}
    with contextlib.ExitStack() as stack:
        abuser = None
        if cond == "idle":
            abuser = stack.enter_context(spawn(
                [*me, "idle", "--port", port, "--n", str(args.idle), "--window-end", repr(end),
                 "--hold-until", repr(now + 20.0)]))
            ready = read_line(abuser, 20)
            result["abuser_ready"] = ready
            if ready["ready"] != args.idle:
                log(f"  idle: only {ready['ready']}/{args.idle} connections opened")
        elif cond in SLOW:
            abuser = stack.enter_context(spawn(
                [*me, "slow", "--port", port, "--tag", tag, "--same", str(args.slow_same),
                 "--distinct", str(args.slow_distinct), "--impatient", str(args.impatient),
                 "--begin", repr(t_abuse), "--window-end", repr(end),
                 "--stagger", "0" if cond == "slow-burst" else str(args.stagger)]))
            result["abuser_ready"] = read_line(abuser, 20)
        pages = stack.enter_context(spawn(
            [*me, "pages", "--port", port, "--connections", str(args.connections), "--rate",
             str(args.rate), "--start", repr(start), "--seconds", str(args.window),
             "--expect-bytes", str(w["page_bytes"])]))
        if time.monotonic() > start - 0.2:
            log(f"  {cond}: the client started late ({time.monotonic() - start:+.2f} s)")
        time.sleep(max(0.0, start - time.monotonic()))
        apids = [abuser.pid] if abuser else []
        s0, sys0, a0, m0 = cpu_seconds([pid]), system_cpu(), cpu_seconds(apids), os.times()
        st0 = steal_seconds()
        res = finish(pages, args.window + 60)
        s1, sys1, m1 = cpu_seconds([pid]), system_cpu(), os.times()
        st1 = steal_seconds()
        try:  # not reaped yet: a finished abuser's /proc entry (a zombie) still has its times
            a1 = cpu_seconds(apids)
        except OSError:
            a1 = a0
        wall = res["seconds"]
        serve_cpu = s1 - s0
        abuser_cpu = a1 - a0
        main_cpu = (m1.user + m1.system) - (m0.user + m0.system)
        other = (sys1 - sys0) - serve_cpu - res["cpu"] - abuser_cpu - main_cpu
        result.update(pages=res, serve_cpu=serve_cpu, serve_cores=serve_cpu / wall,
                      client_cores=res["cpu"] / wall, abuser_cores=abuser_cpu / wall,
                      main_cores=main_cpu / wall, other_cores=max(0.0, other / wall),
                      steal_cores=(st1 - st0) / wall,
                      window=wall)
        # slow: its clients are gone by now (not serve's upstream fetches for them)
        slow_out = finish(abuser, 60) if abuser is not None and cond in SLOW else None
        result["probes"] = probe(w["port"], tag, args.probes, 2 * args.slow_delay)
        if abuser is not None:
            result["abuser"] = slow_out or finish(abuser, 60)
    # the slow well-behaved requests: how many began just after the slow clients sent requests
    sent = sorted(e[0] for e in result.get("abuser", {}).get("events", []))
    result["over_5ms_after_slow_requests"] = sum(
        1 for t, _ms in result["pages"]["slow_at"] if any(0 <= t - x <= 0.15 for x in sent))
    up.released.set()  # delayed pages answer now; wait until none is held
    for _ in range(300):
        with up.lock:
            if up.in_flight == 0:
                break
        time.sleep(0.05)
    time.sleep(0.3)  # serve parses and stores what just arrived
    st = status_kib(pid, "VmHWM", "VmRSS")
    reqs = up.since(mark)
    result.update(
        vmhwm_kib=st["VmHWM"], vmrss_kib=st["VmRSS"], serve_cpu_condition=cpu_seconds([pid])
        - cpu_cond0,
        upstream={"requests": len(reqs),
                  "demo": sum(1 for r in reqs if r["name"] == "demo"),
                  "slow": sum(1 for r in reqs if (r["name"] or "").startswith(SLOW_PREFIX)),
                  "slow_unsent": sum(1 for r in reqs if not r["sent"]),
                  "slow_distinct_names": len({r["name"] for r in reqs
                                              if (r["name"] or "").startswith(SLOW_PREFIX)}),
                  "peak_delayed_in_flight": up.peak_in_flight})
    text = mp.log_path.read_bytes()[log_offset:].decode(errors="replace")
    lines = [x for x in text.splitlines() if x.strip()]
    result["serve_log_lines"] = len(lines)
    result["serve_log"] = lines[:12]
    result["serve_alive"] = mp.proc.poll() is None
    p = result["pages"]
    log(f"  {cond} (rep {rep + 1}): p50 {p['p50']:.3f} p99 {p['p99']:.3f} max {p['max']:.1f} ms"
        f", {p['requests']} requests, {p['errors']} failed; serve {result['serve_cores']:.2f} "
        f"cores, VmHWM {st['VmHWM'] / 1024:.1f} MiB; client {result['client_cores']:.2f}, "
        f"abuser {result['abuser_cores']:.2f}, other {result['other_cores']:.2f} cores; "
        f"{len(lines)} serve log lines")
    return result


def measured(cond: str, rep: int, w: dict, args: argparse.Namespace) -> dict:
    """``run_condition`` after a quiet wait; retried when other load disturbed it."""
    best = None
    for attempt in range(args.tries):
        budget = min(args.quiet_wait, args.quiet_budget - w["waited"])
        if budget > 0:
            waited, load = wait_quiet(max_wait=budget)
            w["waited"] += waited
            if load >= 0.2:
                log(f"  machine still busy ({load:.2f} cores) after {waited:.0f}s; going on")
        r = run_condition(cond, rep, w, args)
        r["attempt"] = attempt
        if best is None or r["other_cores"] < best["other_cores"]:
            best = r
        if r["other_cores"] <= args.other_max:
            break
        w["retries"] += attempt < args.tries - 1
        log(f"  {cond}: {r['other_cores']:.2f} cores of other load; "
            + ("retrying" if attempt < args.tries - 1 else "keeping the less disturbed try"))
    return best


def measure(args: argparse.Namespace, run_dir: Path) -> dict:
    import httpx

    config = run_dir / "serve.toml"
    config.write_text("[server]\nspacy_models = false\n")
    runs: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(Upstream(args.slow_delay))
        mp, url, port = stack.enter_context(
            start_serve(config, up.url + "/simple/", run_dir / "cache", run_dir))
        log(f"serve pid {mp.pid} at {url}, upstream {up.url}")
        rss_start = status_kib(mp.pid, "VmRSS", "VmHWM")
        r = httpx.get(url + "/simple/demo/", headers={"Accept": JSON_TYPE}, timeout=30,
                      trust_env=False)
        if r.status_code != 200 or r.headers.get("content-type", "").split(";")[0] != JSON_TYPE:
            raise RuntimeError(f"warm-up: {r.status_code} {r.headers} {r.text[:300]}")
        page = r.json()
        w = {"upstream": up, "serve": mp, "port": port, "page_bytes": len(r.content),
             "tries": 0, "waited": 0.0, "retries": 0}
        # untimed warm-up of the client path (and serve's) at the measured rate
        with spawn([sys.executable, "-S", str(Path(__file__).resolve()), "pages", "--port",
                    str(port), "--connections", str(args.connections), "--rate",
                    str(args.rate), "--start", repr(time.monotonic() + 0.5), "--seconds", "2",
                    "--expect-bytes", str(w["page_bytes"])]) as p:
            warm = finish(p, 60)
        if warm["errors"]:
            raise RuntimeError(f"warm-up run failed: {warm}")
        log(f"warm-up: {warm['requests']} requests, p99 {warm['p99']:.3f} ms")
        for rep in range(args.reps):
            k = rep % len(CONDITIONS)
            order = list(CONDITIONS[k:] + CONDITIONS[:k])
            log(f"rep {rep + 1}/{args.reps}: {' → '.join(order)}")
            for cond in order:
                runs[cond].append(measured(cond, rep, w, args))
        rss_end = status_kib(mp.pid, "VmRSS")
        log_tail = mp.tail(4000)
    return {"runs": runs, "summary": summarize(runs), "page_bytes": w["page_bytes"],
            "page": page, "warm_up": warm, "rss_start_kib": rss_start, "rss_end_kib": rss_end,
            "serve_log_tail": log_tail, "retries": w["retries"], "quiet_waited": w["waited"],
            "params": {k: getattr(args, k) for k in (
                "window", "rate", "connections", "idle", "slow_same", "slow_distinct",
                "slow_delay", "impatient", "stagger", "probes", "tries", "other_max")}}


# --------------------------------------------------------------------------- report
def summarize(runs: dict[str, list[dict]]) -> dict:
    out: dict[str, dict] = {}
    base = median([r["pages"]["p99"] for r in runs["baseline"]])
    base_held = median([r["pages"]["held_p99"] for r in runs["baseline"]])
    for cond, rs in runs.items():
        p99s = [r["pages"]["p99"] for r in rs]
        held = [r["pages"]["held_p99"] for r in rs]
        by_rep = {r["rep"]: r["pages"]["p99"] for r in runs["baseline"]}
        out[cond] = {
            "p99_ms": median(p99s), "p99_per_rep": p99s,
            "ratio": median(p99s) / base if base else float("nan"),
            "ratio_per_rep": [r["pages"]["p99"] / by_rep[r["rep"]] for r in rs
                              if by_rep.get(r["rep"])],
            "held_p99_ms": median(held),
            "held_ratio": median(held) / base_held if base_held else float("nan"),
            "p50_ms": median([r["pages"]["p50"] for r in rs]),
            "p90_ms": median([r["pages"]["p90"] for r in rs]),
            "p99_9_ms": median([r["pages"]["p99_9"] for r in rs]),
            "max_ms": max(r["pages"]["max"] for r in rs),
            "requests": sum(r["pages"]["requests"] for r in rs),
            "failed": sum(r["pages"]["errors"] for r in rs),
            "serve_cpu_s": median([r["serve_cpu"] for r in rs]),
            "serve_cpu_per_rep": [r["serve_cpu"] for r in rs],
            "serve_cores": median([r["serve_cores"] for r in rs]),
            "hwm_mib": max(r["vmhwm_kib"] for r in rs) / 1024,
            "hwm_per_rep": [r["vmhwm_kib"] / 1024 for r in rs],
            "client_cores": median([r["client_cores"] for r in rs]),
            "abuser_cores": median([r["abuser_cores"] for r in rs]),
            "other_cores": max(r["other_cores"] for r in rs),
            "steal_cores": max(r.get("steal_cores", 0.0) for r in rs),
            "probe_ms": median([x["ms"] for r in rs for x in r["probes"]]),
            "probe_max_ms": max((x["ms"] for r in rs for x in r["probes"]), default=float("nan")),
            "probe_outcomes": dict(Counter(x["outcome"] for r in rs for x in r["probes"])),
        }
    return out


def _f(x: float, fmt: str = "{:.3f}") -> str:
    return "-" if x != x else fmt.format(x)


def render(data: dict, args: argparse.Namespace) -> str:
    s, runs, p = data["summary"], data["runs"], data["params"]
    n_reps = len(runs["baseline"])
    lines = [
        f"## abuse.py: page p99 of well-behaved clients beside abusive ones "
        f"({'quick' if args.quick else 'full'}, {n_reps} repetition{'s' * (n_reps > 1)})", "",
        f"Measured: `GET /simple/demo/` (`Accept: {JSON_TYPE}`, {data['page_bytes']} B, from "
        f"serve's page cache) on {p['connections']} keep-alive connections, paced at "
        f"{p['rate']:.0f} req/s in all, {p['window']:.0f} s per run; serve at `--log-level "
        f"warning`, default `[limits]`, one process for the whole run. Conditions: **baseline** "
        f"(nothing else); **idle** ({p['idle']} connections held open during the window: half "
        "send nothing, half send `GET /x HTTP/1.1\\r\\n` and stop); **slow** (the upstream "
        f"answers `slowpoke*` pages after {p['slow_delay']:.0f} s; {p['slow_same']} clients ask "
        f"for one such project (the next one once it has been answered), "
        f"{p['slow_distinct']} for a new uncached name each time; in each "
        f"group half wait, half give up after {p['impatient']:.0f} s and ask again; their first "
        f"requests spread over {p['stagger']:g} s); **slow-burst** (the same, all starting at "
        "once, so the impatient ones give up and ask again in step). Conditions "
        "interleaved, order rotated per repetition.", "",
        f"Ratio = median over the repetitions of the condition's p99 ÷ the median of "
        f"baseline's p99 (goal ≤ {GOAL_RATIO}x); \"within each rep\": the condition's p99 ÷ "
        "the same repetition's baseline p99 (the machine's speed drifts between repetitions). "
        "Latency = request written to last body byte; "
        "\"held-up p99\" also counts the wait of a request sent late because the previous "
        "answer was late.", ""]
    rows = []
    for cond in CONDITIONS:
        c = s[cond]
        ok = "-" if cond == "baseline" else ("✅ met" if c["ratio"] <= GOAL_RATIO else "❌ missed")
        rows.append([cond, _f(c["p99_ms"]), " / ".join(_f(x) for x in c["p99_per_rep"]),
                     "1" if cond == "baseline" else f"{c['ratio']:.2f}x", ok,
                     "-" if cond == "baseline" else " / ".join(f"{x:.2f}"
                                                               for x in c["ratio_per_rep"]),
                     f"{c['held_ratio']:.2f}x", _f(c["p50_ms"]), _f(c["p99_9_ms"]),
                     _f(c["max_ms"], "{:.1f}"), f"{c['requests']:,}", str(c["failed"]),
                     f"{c['serve_cpu_s']:.2f} ({c['serve_cores']:.2f} cores)",
                     f"{c['hwm_mib']:.1f}", f"{c['client_cores']:.2f}",
                     f"{c['abuser_cores']:.2f}", f"{c['other_cores']:.2f}",
                     f"{c['steal_cores']:.2f}"])
    lines += [md_table(["condition", "p99 ms (median)", "p99 per rep", "ratio to baseline",
                        f"goal ≤ {GOAL_RATIO}x", "ratio within each rep", "held-up p99 ratio", "p50 ms", "p99.9 ms",
                        "max ms (all reps)", "requests (all reps)", "failed",
                        "serve CPU s per window (median)", "serve peak RSS MiB (VmHWM, max)",
                        "client cores", "abuser cores", "other load, cores (max)",
                        "steal, cores (max)"], rows), ""]
    # every run
    rrows = []
    for cond in CONDITIONS:
        for r in runs[cond]:
            q = r["pages"]
            rrows.append([f"{cond} #{r['rep'] + 1}", f"{q['requests']:,}", _f(q["p50"]),
                          _f(q["p90"]), _f(q["p99"]), _f(q["held_p99"]), _f(q["p99_9"]),
                          _f(q["max"], "{:.1f}"),
                          f"{q['over_5ms']}"
                          + (f" ({r['over_5ms_after_slow_requests']})" if r["condition"] in SLOW
                             else ""), str(q["over_10ms"]),
                          str(q["errors"]) + (f" {q['error_kinds']}" if q["errors"] else ""),
                          f"{r['serve_cpu']:.2f}", f"{r['serve_cpu_condition']:.2f}",
                          f"{r['vmhwm_kib'] / 1024:.1f}", f"{r['vmrss_kib'] / 1024:.1f}",
                          f"{r['client_cores']:.2f}", f"{r['abuser_cores']:.2f}",
                          f"{r['main_cores']:.2f}", f"{r['other_cores']:.2f}",
                          f"{r.get('steal_cores', 0):.2f}", str(r["attempt"] + 1)])
    lines += ["Every run (in run order within a repetition; \"serve CPU s, condition\" also "
              "counts setting up and tearing down the abusers):", "",
              md_table(["run", "requests", "p50 ms", "p90 ms", "p99 ms", "held-up p99 ms",
                        "p99.9 ms", "max ms", "> 5 ms (slow: of the first 200, began ≤ 150 "
                        "ms after a slow client's request)", "> 10 ms", "failed", "serve CPU s, window",
                        "serve CPU s, condition", "VmHWM MiB", "VmRSS after MiB",
                        "client cores", "abuser cores", "bench + upstream cores",
                        "other cores", "steal cores", "try"], rrows), ""]
    # the abusers
    irows = []
    for r in runs["idle"]:
        a = r.get("abuser", {})
        sil, half = a.get("silent_closed_after_s", {}), a.get("half_closed_after_s", {})
        irows.append([f"idle #{r['rep'] + 1}", str(a.get("opened")),
                      f"{a.get('open_s', 0):.2f}", str(a.get("open_at_window_end")),
                      str(a.get("closed_in_window")), str(a.get("reopened")),
                      f"{sil.get('n', 0)}: {sil.get('min', '-')} / {sil.get('median', '-')} / "
                      f"{sil.get('max', '-')}",
                      f"{half.get('n', 0)}: {half.get('min', '-')} / {half.get('median', '-')} "
                      f"/ {half.get('max', '-')}",
                      ", ".join(f"{k} x{v}" for k, v in a.get("answers", {}).items()),
                      str(a.get("still_open_at_hold_end"))])
    lines += ["Idle/half-sent connections (held from before the window to 20 s after opening; "
              "serve's header_timeout is 15 s):", "",
              md_table(["run", "opened", "open took s", "open at window end",
                        "closed before window end", "re-opened", "silent: closed by serve "
                        "after s (n: min / median / max)", "half-sent: closed after s",
                        "what serve sent before closing", "still open at 20 s"], irows), ""]
    srows = []
    for r in (r for c in SLOW for r in runs[c]):
        a = r.get("abuser", {})
        u = r["upstream"]
        per = "; ".join(
            f"{g}: {v['requests']} ({', '.join(f'{k} x{n}' for k, n in v['outcomes'].items())}"
            + (f"; 200 after {v['ok_seconds']['median']:.2f} s median)" if v["ok_seconds"]
               else ")")
            for g, v in a.get("summary", {}).items())
        srows.append([f"{r['condition']} #{r['rep'] + 1}", str(a.get("requests")), per,
                      str(a.get("shared_projects")), str(u["slow"]),
                      str(u["slow_distinct_names"]), str(u["peak_delayed_in_flight"]),
                      str(u["slow_unsent"]), str(u["demo"])])
    lines += ["Slow-upstream clients (per group: requests and outcomes; \"cut\" = still waiting "
              "when the window ended) and what the upstream saw:", "",
              md_table(["run", "slow-client requests", "by group",
                        "shared slow projects asked", "upstream slow-page GETs",
                        "distinct slow names", "peak delayed GETs in flight at the upstream",
                        "answers serve no longer read", "upstream GETs of demo"], srows), ""]
    prows = [[cond, _f(s[cond]["probe_ms"], "{:.1f}"), _f(s[cond]["probe_max_ms"], "{:.1f}"),
              ", ".join(f"{k} x{v}" for k, v in s[cond]["probe_outcomes"].items())]
             for cond in CONDITIONS]
    lines += [f"New uncached names (`/simple/{FRESH_PREFIX}-*/`, answered by the upstream at "
              f"once), {p['probes']} asked together by a well-behaved client right after each "
              "window, while the abuse (or, for slow, serve's upstream fetches for the slow "
              f"clients that have gone) still runs; {2 * p['slow_delay']:.0f} s timeout. Not "
              "part of the p99 above:", "",
              md_table(["condition", "median ms", "max ms", "outcomes"], prows), ""]
    demo_all = sum(r["upstream"]["demo"] for rs in runs.values() for r in rs)
    lines.append(f"Upstream GETs of `/simple/demo/` during all runs: {demo_all} (background "
                 "revalidations after page_ttl; the measured answers come from the cache).")
    logs = [(f"{r['condition']} #{r['rep'] + 1}", r["serve_log_lines"], r["serve_log"])
            for rs in runs.values() for r in rs]
    total = sum(n for _, n, _ in logs)
    lines.append(f"serve's log (`--log-level warning`) during the runs: {total} line(s)"
                 + (":" if total else "."))
    shown = 0
    for name, n, ls in logs:
        if n and shown < 8:
            shown += 1
            lines.append(f"- {name}: {n} line(s), e.g. "
                         + "; ".join(f"`{x[:160]}`" for x in ls[:3]))
    rs0, rs1 = data["rss_start_kib"], data["rss_end_kib"]
    lines += ["", f"serve RSS: {rs0['VmRSS'] / 1024:.1f} MiB after start, "
                  f"{rs1['VmRSS'] / 1024:.1f} MiB at the end. Runs retried for other load: "
                  f"{data['retries']}; waited {data['quiet_waited']:.0f} s for a quiet machine.",
              ""]
    lines += ["### Machine", "", md_table(["", ""], data["machine"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("pages", "idle", "slow"):
        return client_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, 5 s windows")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--window", type=float, help="seconds per measurement (10, quick 5; ≤ 11: "
                    "the idle connections must outlive it within header_timeout)")
    ap.add_argument("--rate", type=float, default=1000, help="well-behaved req/s in all (1000)")
    ap.add_argument("--connections", type=int, default=8, help="well-behaved connections (8)")
    ap.add_argument("--idle", type=int, default=300, help="idle + half-sent connections (300)")
    ap.add_argument("--slow-same", type=int, default=8,
                    help="slow clients asking for the one slow project (8)")
    ap.add_argument("--slow-distinct", type=int, default=16,
                    help="slow clients asking for a new uncached slow name each time (16)")
    ap.add_argument("--slow-delay", type=float, default=10.0, help="upstream delay, s (10)")
    ap.add_argument("--impatient", type=float, default=2.0,
                    help="seconds the impatient slow clients wait before asking again (2)")
    ap.add_argument("--stagger", type=float, default=1.0,
                    help="condition slow: the slow clients' first requests spread over this "
                    "many seconds (slow-burst: all at once) (1)")
    ap.add_argument("--probes", type=int, default=3,
                    help="new uncached names asked after each window (3)")
    ap.add_argument("--quiet-wait", type=float, help="max s to wait for a quiet machine before "
                    "each run (default 20, quick 3)")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (serve's log)")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.window = args.window or (5.0 if args.quick else 10.0)
    if args.window > 11:
        ap.error("--window must be ≤ 11 s (header_timeout 15 s)")
    if args.quiet_wait is None:
        args.quiet_wait = 3.0 if args.quick else 20.0
    args.quiet_budget = 30.0 if args.quick else 180.0
    args.tries = 1 if args.quick else 2
    args.other_max = 0.3
    data = run_measured("abuse", args, measure)
    if "machine" not in data:
        data["machine"] = machine_info()
    text = render(data, args)
    print(text)
    write_results("abuse", args.quick, data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
