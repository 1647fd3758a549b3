"""Small, fast load clients for the benchmarks (stdlib only, run as separate processes).

``fetch``: N downloads of one URL over one keep-alive connection; the body goes
socket → pipe → /dev/null with ``splice(2)``, so the client never copies it to user space and
costs ~0.1 CPU-s/GB (curl here: ~0.5). Waits for a common start time (``--start``, a
CLOCK_MONOTONIC value shared by all client processes) so process start-up is not timed.
Prints one JSON line: bytes, start/end (monotonic), statuses, CPU.

``pages``: C keep-alive connections on one asyncio loop (``asyncio.Protocol``, no streams),
each sending its share of ``--requests`` GETs back to back; prints per-request latencies
(ns resolution) summarized as JSON: count, errors, p50/p90/p99/max, duration.

Both are bounded: a fixed number of requests and a ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import time
from urllib.parse import urlsplit

F_SETPIPE_SZ = 1031
_CL = re.compile(rb"(?im)^content-length:[ \t]*(\d+)")


def _split(url: str) -> tuple[str, int, str]:
    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or 80, (u.path or "/") + (f"?{u.query}" if u.query else "")


def fetch(url: str, count: int, start: float, timeout: float) -> dict:
    host, port, path = _split(url)
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)  # splice() needs a blocking descriptor; the parent enforces timeout
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-fetch\r\n"
           "Accept-Encoding: identity\r\n\r\n").encode()
    devnull = os.open(os.devnull, os.O_WRONLY)
    rd, wr = os.pipe()
    with contextlib.suppress(OSError):  # a bigger pipe: fewer splice() calls
        fcntl.fcntl(wr, F_SETPIPE_SZ, 1 << 20)
    fd = sock.fileno()
    statuses: list[int] = []
    total = 0
    while time.monotonic() < start:
        time.sleep(min(0.005, max(0.0, start - time.monotonic())))
    c0 = os.times()
    t0 = time.monotonic()
    for _ in range(count):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: over {timeout}s")
        sock.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:  # peek so no body byte is read into user space
            peek = sock.recv(4096, socket.MSG_PEEK)
            if not peek:
                raise ConnectionError("connection closed before the headers ended")
            end = (head + peek).find(b"\r\n\r\n")
            take = len(peek) if end < 0 else end + 4 - len(head)
            head += sock.recv(take)
        statuses.append(int(head.split(b" ", 2)[1]))
        m = _CL.search(head)
        if m is None:
            raise ValueError(f"no Content-Length in {head[:300]!r}")
        left = int(m.group(1))
        while left:
            n = os.splice(fd, wr, min(left, 1 << 20))
            if n == 0:
                raise ConnectionError(f"connection closed with {left} bytes to go")
            left -= n
            total += n
            while n:
                n -= os.splice(rd, devnull, n)
    t1 = time.monotonic()
    c1 = os.times()
    sock.close()
    return {"bytes": total, "start": t0, "end": t1, "statuses": statuses,
            "cpu": (c1.user + c1.system) - (c0.user + c0.system)}


class _Conn(asyncio.Protocol):
    def __init__(self, req: bytes, n: int, lat: list[int], errors: list[int], done: asyncio.Future):
        self.req, self.left, self.lat, self.errors, self.done = req, n, lat, errors, done
        self.buf = b""
        self.t = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        self.t = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(self.req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        m = _CL.search(self.buf, 0, end + 2)
        need = end + 4 + (int(m.group(1)) if m else 0)
        if len(self.buf) < need:
            return
        self.lat.append(time.perf_counter_ns() - self.t)
        if self.buf[9:12] != b"200":
            self.errors[0] += 1
        self.buf = self.buf[need:]
        self.left -= 1
        if self.left:
            self._send()
        else:
            assert self.transport is not None
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        if not self.done.done():
            if self.left:
                self.errors[0] += self.left
            self.done.set_result(None)


async def _pages(url: str, clients: int, requests: int, accept: str, timeout: float) -> dict:
    host, port, path = _split(url)
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-pages\r\n"
           f"Accept: {accept}\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    lat: list[int] = []
    errors = [0]
    per = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    dones = [loop.create_future() for _ in range(clients)]
    t0 = time.perf_counter()
    for n, done in zip(per, dones, strict=True):
        await loop.create_connection(lambda n=n, done=done: _Conn(req, n, lat, errors, done),
                                     host, port)
    await asyncio.wait_for(asyncio.gather(*dones), timeout)
    seconds = time.perf_counter() - t0
    lat.sort()

    def pct(p: float) -> float:  # nearest-rank
        if not lat:
            return float("nan")
        rank = max(1, min(len(lat), int(-(-p * len(lat) // 100))))
        return lat[rank - 1] / 1e6

    cpu = os.times()
    return {"requests": len(lat), "errors": errors[0], "seconds": seconds, "p50": pct(50),
            "p90": pct(90), "p99": pct(99), "max": lat[-1] / 1e6 if lat else float("nan"),
            "cpu": cpu.user + cpu.system}


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("url")
    f.add_argument("--count", type=int, default=1)
    f.add_argument("--start", type=float, default=0.0)
    f.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("pages")
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--accept", default="*/*")
    p.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    if a.cmd == "fetch":
        out = fetch(a.url, a.count, a.start, a.timeout)
    else:
        out = asyncio.run(_pages(a.url, a.clients, a.requests, a.accept, a.timeout))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
