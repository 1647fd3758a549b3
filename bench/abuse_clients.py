"""The client processes of bench/abuse.py, one per role (``python -S
bench/abuse_clients.py pages|idle|slow ...``), and the probe of new uncached names."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import socket
import sys
import time
from collections import Counter

from harness.util import median

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


SLOW_PREFIX = "slowpoke"


FRESH_PREFIX = "fresh"  #: uncached names the upstream answers at once (the probes)


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


@dataclasses.dataclass
class _PageLog:
    """What the well-behaved connections saw, in ns (``raw``: request written to last body
    byte; ``held``: also the wait of a request that could not be sent on time)."""

    raw: list[int] = dataclasses.field(default_factory=list)
    held: list[int] = dataclasses.field(default_factory=list)
    errors: Counter = dataclasses.field(default_factory=Counter)
    reconnects: int = 0
    slow_at: list[tuple[float, float]] = dataclasses.field(default_factory=list)


async def _connect(a: argparse.Namespace) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), 10)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _paced(a: argparse.Namespace, i: int, req: bytes, got: _PageLog) -> None:
    """Connection ``i``: one request every ``connections / rate`` s, each after the previous
    answer, from its staggered start to the window's end."""
    loop = asyncio.get_running_loop()
    interval = a.connections / a.rate
    end = a.start + a.seconds
    reader, writer = await _connect(a)
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
            got.errors[type(e).__name__] += 1
            writer.close()
            if got.reconnects >= 50:
                return
            got.reconnects += 1
            try:
                reader, writer = await _connect(a)
            except (OSError, TimeoutError) as e2:
                got.errors[f"reconnect {type(e2).__name__}"] += 1
                return
            plan += interval
            late = False
            continue
        t1 = time.monotonic_ns()
        if status != 200:
            got.errors[f"HTTP {status}"] += 1
        elif a.expect_bytes and len(body) != a.expect_bytes:
            got.errors["body length"] += 1
        got.raw.append(t1 - t0)
        if t1 - t0 > 5_000_000 and len(got.slow_at) < 200:
            got.slow_at.append((t0 / 1e9, (t1 - t0) / 1e6))
        got.held.append(t1 - int(plan * 1e9) if late else t1 - t0)
        plan += interval
        late = t1 / 1e9 > plan
    writer.close()


async def _pages(a: argparse.Namespace) -> dict:
    """The well-behaved clients: ``a.connections`` keep-alive connections, ``a.rate`` req/s
    in all, from ``a.start`` for ``a.seconds``."""
    loop = asyncio.get_running_loop()
    req = (f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\nUser-Agent: bench-abuse-pages"
           f"\r\nAccept: {a.accept}\r\n\r\n").encode()
    got = _PageLog()
    while loop.time() < a.start - 0.002:
        await asyncio.sleep(min(0.05, a.start - loop.time()))
    c0 = os.times()
    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(_paced(a, i, req, got) for i in range(a.connections))),
                           a.seconds + a.timeout + 10)
    c1 = os.times()
    wall = time.monotonic() - t0
    raw, held, errors = sorted(got.raw), sorted(got.held), got.errors
    return {"requests": len(raw), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "reconnects": got.reconnects, "seconds": wall, "cpu": (c1.user + c1.system)
            - (c0.user + c0.system),
            **{f"p{k}": _pct(raw, p) for k, p in (("50", 50), ("90", 90), ("99", 99),
                                                   ("99_9", 99.9))},
            "max": raw[-1] / 1e6 if raw else float("nan"),
            "held_p99": _pct(held, 99), "held_max": held[-1] / 1e6 if held else float("nan"),
            "over_5ms": sum(1 for x in raw if x > 5_000_000),
            "over_10ms": sum(1 for x in raw if x > 10_000_000), "slow_at": got.slow_at}


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
    return {"n": a.n, "opened": opened, "failed_open": failed_open,
            "open_s": opened_at, "open_at_window_end": open_at_end,
            "closed_in_window": closed_in_window, "reopened": reopened,
            "still_open_at_hold_end": still_open, **_closed_by_server(ended),
            "cpu": (c1.user + c1.system) - (c0.user + c0.system)}


def _closed_by_server(ended: list[dict]) -> dict:
    """How serve closed the held connections: after how long, with which answer."""
    by_server = [e for e in ended if e["by_server"]]

    def ages(half: bool) -> list[float]:
        return sorted(round(e["closed"] - e["opened"], 2) for e in by_server if e["half"] == half)

    return {"closed_by_server": len(by_server),
            "silent_closed_after_s": _spread(ages(False)),
            "half_closed_after_s": _spread(ages(True)),
            "answers": dict(Counter(e["answer"] or "(nothing)" for e in by_server)),
            "close_errors": dict(Counter(e["error"] or "FIN" for e in by_server))}


def _spread(xs: list[float]) -> dict:
    if not xs:
        return {}
    return {"n": len(xs), "min": xs[0], "median": median(xs), "max": xs[-1]}


async def _slow(a: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    c0 = os.times()
    results: list[dict] = []

    gen = [0]  # the shared slow project: the next one once serve has answered it (cached)

    async def client(i: int, same: bool, patience: float) -> None:
        await asyncio.sleep(max(0.0, a.begin + a.stagger * i / n - loop.time()))
        for k in range(500):
            if time.monotonic() >= a.window_end:
                return
            g = gen[0]
            name = f"{SLOW_PREFIX}-{a.tag}-s{g}" if same else f"{SLOW_PREFIX}-{a.tag}-{i}-{k}"
            r = await _ask(a, name, patience)
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
    return {"clients": len(specs), "requests": len(results), "summary": _by_group(a, results),
            "shared_projects": gen[0] + 1,
            "outcomes": dict(Counter(r["outcome"] for r in results)),
            "events": [(r["t0"], r["seconds"], r["outcome"]) for r in results[:1000]],
            "cpu": (c1.user + c1.system) - (c0.user + c0.system)}


async def _ask(a: argparse.Namespace, name: str, patience: float) -> dict:
    """One slow client's request on a new connection, given up after ``patience`` s."""
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


def _by_group(a: argparse.Namespace, results: list[dict]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for group in ("same", "distinct"):
        for kind, pat in (("patient", a.patient_timeout), ("impatient", a.impatient)):
            rs = [r for r in results if r["group"] == group and r["patience"] == pat]
            ok = sorted(r["seconds"] for r in rs if r["outcome"] == "HTTP 200")
            summary[f"{group}/{kind}"] = {
                "requests": len(rs), "outcomes": dict(Counter(r["outcome"] for r in rs)),
                "ok_seconds": _spread(ok)}
    return summary


def client_main(argv: list[str]) -> int:
    """``python -S bench/abuse_clients.py pages|idle|slow ...``: the client processes; one JSON line
    on stdout at the end (idle/slow print a ``ready`` line first)."""
    ap = argparse.ArgumentParser(prog="bench/abuse_clients.py")
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


if __name__ == "__main__":
    sys.exit(client_main(sys.argv[1:]))
