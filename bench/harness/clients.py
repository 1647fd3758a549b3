"""Load clients: bulk downloads (:func:`download`, :func:`drain`) by separate client
processes, and page latency by wrk (or bench/loadgen.py when wrk is missing). Each measures
the server's CPU, the clients' and the rest of the machine's over the same span."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .procfs import Meter
from .util import GB, MB


@dataclasses.dataclass
class Transfer:
    clients: int
    wall: float  #: seconds from the first client's start to the last client's end
    nbytes: int  #: body bytes received by all clients
    server_cpu: float  #: server CPU-seconds during the transfer
    client_cpu: float  #: CPU-seconds of the client processes
    other_cpu: float  #: machine CPU-seconds not spent by the server or the clients

    @property
    def mbps(self) -> float:
        return self.nbytes / MB / self.wall

    @property
    def cpu_per_gb(self) -> float:
        return self.server_cpu / (self.nbytes / GB)

    @property
    def server_cores(self) -> float:
        return self.server_cpu / self.wall

    @property
    def client_cores(self) -> float:
        """Average cores used by one client process."""
        return self.client_cpu / self.wall / self.clients

    @property
    def other_cores(self) -> float:
        return max(0.0, self.other_cpu / self.wall)


LOADGEN = Path(__file__).resolve().parents[1] / "loadgen.py"
SINK = Path(__file__).resolve().parent / "sink.py"


def _on_cpus(affinity: frozenset[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that restricts the child to the CPUs ``affinity`` (None: any)."""
    if affinity is None:
        return None
    return lambda: os.sched_setaffinity(0, affinity)


def _python_clients(argv: list[str], clients: int, *, url: str, expect_size: int, count: int,
                    server_pids: Sequence[int], timeout: float, what: str,
                    affinity: frozenset[int] | None = None,
                    ) -> tuple[list[dict], tuple[float, float, float, float]]:
    """``clients`` copies of ``argv`` (which wait for a common ``--start``; on the CPUs
    ``affinity`` when given), their JSON lines and the :class:`Meter` readings from that start to the last exit."""
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, preexec_fn=_on_cpus(affinity))
             for _ in range(clients)]
    time.sleep(max(0.0, float(argv[argv.index("--start") + 1]) - time.monotonic()))
    meter = Meter(server_pids)
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout + 30)
            if p.returncode != 0:
                raise RuntimeError(f"{what} {url} failed ({p.returncode}): {err[-1000:]}")
            results.append(json.loads(out))
    finally:
        _reap(procs)
    readings = meter.stop()
    for r in results:
        if set(r["statuses"]) != {200} or r["bytes"] != expect_size * count:
            raise RuntimeError(f"{url}: statuses {set(r['statuses'])}, {r['bytes']} bytes "
                               f"(expected 200 and {expect_size * count})")
    return results, readings


def _reap(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _curl_argv(url: str, count: int, timeout: float, *, close: bool) -> list[str]:
    argv = ["curl", "-s", "--max-time", str(int(timeout)), "-w", "%{http_code} %{size_download}\\n"]
    for _ in range(count):
        argv += [url, "-o", "/dev/null"]
        if close:
            argv += ["-H", "Connection: close"]
    return argv


def _curl_total(url: str, procs: Sequence[subprocess.Popen], outs: Sequence[tuple[str, str]],
                *, count: int, expect_size: int) -> int:
    """Body bytes of all curl runs, each checked for 200 and ``expect_size`` bytes per download."""
    total = 0
    for p, (out, err) in zip(procs, outs, strict=True):
        lines = out.split()
        codes, sizes = lines[0::2], [int(x) for x in lines[1::2]]
        if p.returncode != 0 or codes != ["200"] * count or sizes != [expect_size] * count:
            raise RuntimeError(f"curl {url}: exit {p.returncode}, {out.strip()!r} {err.strip()!r}"
                               f" (expected 200 and {expect_size} bytes x{count})")
        total += sum(sizes)
    return total


def download(url: str, clients: int, *, count: int = 1, expect_size: int,
             server_pids: Sequence[int], timeout: float, client: str = "splice") -> Transfer:
    """``clients`` concurrent client processes, each downloading ``url`` ``count`` times over
    one keep-alive connection; every answer must be 200 with ``expect_size`` bytes.

    ``client="splice"``: bench/loadgen.py fetch (socket → pipe → /dev/null, no user-space
    copy; all processes start on a common clock so their start-up is not timed).
    ``client="curl"``: ``curl -s -o /dev/null`` (timed from process start)."""
    if client == "splice":
        start = time.monotonic() + 0.3 + 0.05 * clients
        argv = [sys.executable, "-S", str(LOADGEN), "fetch", url, "--count", str(count),
                "--start", repr(start), "--timeout", str(timeout)]
        results, (server, _children, system, _) = _python_clients(
            argv, clients, url=url, expect_size=expect_size, count=count,
            server_pids=server_pids, timeout=timeout, what="loadgen fetch")
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        client_cpu = sum(r["cpu"] for r in results)
        return Transfer(clients=clients, wall=wall, nbytes=sum(r["bytes"] for r in results),
                        server_cpu=server, client_cpu=client_cpu,
                        other_cpu=system - server - client_cpu)
    argv = _curl_argv(url, count, timeout, close=False)
    meter = Meter(server_pids)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True) for _ in range(clients)]
    try:
        outs = [p.communicate(timeout=timeout + 30) for p in procs]
    finally:
        _reap(procs)
    server, client_cpu, system, wall = meter.stop()
    total = _curl_total(url, procs, outs, count=count, expect_size=expect_size)
    return Transfer(clients=clients, wall=wall, nbytes=total, server_cpu=server,
                    client_cpu=client_cpu, other_cpu=system - server - client_cpu)


#: Ways a client process can drain a response body (``drain(sink=...)``), cheapest first.
SINKS: dict[str, str] = {
    "trunc": "`recv(MSG_TRUNC | MSG_WAITALL)` of up to 4 MiB per call: the kernel drops the "
             "bytes without copying them to user space (TCP semantics of MSG_TRUNC, Linux)",
    "splice": "`splice(2)` socket → pipe → `/dev/null`, 1 MiB per call (no user-space copy)",
    "recv": "`recv_into` a preallocated 1 MiB `bytearray` (one copy to user space)",
    "curl": "`curl -s -o /dev/null` (C; copies to user space, 16 KiB reads, writes to /dev/null)",
}


@dataclasses.dataclass
class Drain(Transfer):
    """A :class:`Transfer` by :func:`drain`, with each client process's CPU."""

    sink: str = "trunc"
    fresh: bool = True
    count: int = 1  #: downloads per client
    client_cpus: list[float] = dataclasses.field(default_factory=list)  #: per process, timed span
    client_cpu_rusage: float = 0.0  #: getrusage of the reaped clients (with start-up)
    order: int = 0  #: position of this run among the servers of its repetition (0 = first)

    @property
    def clients_cores(self) -> float:
        """Cores used by all client processes together."""
        return self.client_cpu / self.wall

    @property
    def client_cores_max(self) -> float:
        """Cores used by the busiest client process (each one is single-threaded)."""
        return max(self.client_cpus, default=0.0) / self.wall

    @property
    def client_cpu_per_gb(self) -> float:
        return self.client_cpu / (self.nbytes / GB)


def _rusage_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _drain_curl(url: str, clients: int, *, count: int, expect_size: int,
                server_pids: Sequence[int], timeout: float, fresh: bool,
                affinity: frozenset[int] | None) -> Drain:
    ru0 = _rusage_children()
    argv = _curl_argv(url, count, timeout, close=fresh)
    meter = Meter(server_pids)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, preexec_fn=_on_cpus(affinity))
             for _ in range(clients)]
    outs, cpus = [], []
    try:
        for p in procs:
            a = _rusage_children()
            outs.append(p.communicate(timeout=timeout + 30))
            cpus.append(_rusage_children() - a)
    finally:
        _reap(procs)
    server, _children, system, wall = meter.stop()
    total = _curl_total(url, procs, outs, count=count, expect_size=expect_size)
    rusage = _rusage_children() - ru0
    # curl's own CPU is only known once reaped: the per-process sum is the rusage total
    return Drain(clients=clients, wall=wall, nbytes=total, server_cpu=server,
                 client_cpu=rusage, other_cpu=system - server - rusage, sink="curl",
                 fresh=fresh, count=count, client_cpus=cpus, client_cpu_rusage=rusage)


def drain(url: str, clients: int, *, count: int = 1, expect_size: int,
          server_pids: Sequence[int], timeout: float, sink: str = "trunc",
          fresh: bool = True, affinity: frozenset[int] | None = None) -> Drain:
    """``clients`` concurrent client processes, each downloading ``url`` ``count`` times (a new
    connection per download when ``fresh``, else one keep-alive connection) and discarding
    the body with ``sink`` (see :data:`SINKS`); every answer must be 200 with ``expect_size``
    bytes. The Python sinks start on a common clock (start-up not timed); curl is timed from
    process start. Server CPU from /proc/PID/stat; client CPU per process over the timed span
    (``os.times`` in the client; curl: getrusage of the reaped process, start-up included)
    and, for all, getrusage(RUSAGE_CHILDREN) deltas. ``affinity``: the CPUs the client
    processes may run on (None: any)."""
    if sink == "curl":
        return _drain_curl(url, clients, count=count, expect_size=expect_size,
                           server_pids=server_pids, timeout=timeout, fresh=fresh, affinity=affinity)
    if sink not in SINKS:
        raise ValueError(f"unknown sink {sink!r}")
    ru0 = _rusage_children()
    start = time.monotonic() + 0.3 + 0.05 * clients
    argv = [sys.executable, "-S", str(SINK), "sink", url, "--count",
            str(count), "--sink", sink, "--start", repr(start), "--timeout", str(timeout)]
    if fresh:
        argv.append("--fresh")
    results, (server, _children, system, _) = _python_clients(
        argv, clients, url=url, expect_size=expect_size, count=count,
        server_pids=server_pids, timeout=timeout, what=f"sink {sink}", affinity=affinity)
    rusage = _rusage_children() - ru0
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cpus = [r["cpu"] for r in results]
    return Drain(clients=clients, wall=wall, nbytes=sum(r["bytes"] for r in results),
                 server_cpu=server, client_cpu=sum(cpus), other_cpu=system - server - sum(cpus),
                 sink=sink, fresh=fresh, count=count, client_cpus=cpus,
                 client_cpu_rusage=rusage)


_WRK_SCRIPT = """\
wrk.method = "GET"
wrk.headers["Accept"] = {accept}
local limit = {per_thread}
local count = 0
response = function(status, headers, body)
  count = count + 1
  if count >= limit then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  io.write(string.format(
    "BENCHJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"non2xx\\":%d,\\"err_connect\\":%d,"
    .. "\\"err_read\\":%d,\\"err_write\\":%d,\\"err_timeout\\":%d,\\"p50\\":%d,\\"p90\\":%d,"
    .. "\\"p99\\":%d,\\"max\\":%d,\\"mean\\":%f}}\\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


@dataclasses.dataclass
class Latency:
    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    server_cpu: float
    client_cpu: float = 0.0
    other_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_req(self) -> float:
        return self.server_cpu / self.requests * 1e6

    @property
    def other_cores(self) -> float:
        return max(0.0, self.other_cpu / self.seconds)


def wrk_latency(url: str, clients: int, seconds: int, *, accept: str,
                server_pids: Sequence[int], work: Path, max_requests: int = 1_000_000,
                threads: int = 1) -> Latency:
    """``wrk -t <threads> -c C -d <seconds>s`` (C, epoll, keep-alive) with a Lua ``done()``
    that prints exact percentiles (µs). Bounded in time by ``-d`` and in count by
    ``max_requests`` (each thread stops after its share; wrk still waits out ``-d``, so the
    cap is set far above what a run does and only guards against runaway loops).

    One thread by default: one wrk thread drives > 50,000 req/s on this machine, so a second
    one adds no load, only a third busy thread on 2 cores, which every server then pays for
    in its tail (nginx included)."""
    threads = max(1, min(threads, clients))
    per_thread = max(1, -(-max_requests // threads))
    script = work / f"wrk-{clients}.lua"
    script.write_text(_WRK_SCRIPT.format(accept=json.dumps(accept), per_thread=per_thread))
    argv = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{int(seconds)}s",
            "--timeout", "10s", "-s", str(script), url]
    meter = Meter(server_pids)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    server, client, system, _ = meter.stop()
    m = re.search(r"BENCHJSON (\{.*\})", out.stdout)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    d = json.loads(m.group(1))
    errors = d["non2xx"] + d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
    return Latency(clients=clients, requests=d["requests"], seconds=d["duration_us"] / 1e6,
                   p50_ms=d["p50"] / 1000, p90_ms=d["p90"] / 1000, p99_ms=d["p99"] / 1000,
                   max_ms=d["max"] / 1000, errors=errors, server_cpu=server, client_cpu=client,
                   other_cpu=system - server - client)


def loadgen_latency(url: str, clients: int, requests: int, *, accept: str,
                    server_pids: Sequence[int], max_seconds: float = 60) -> Latency:
    """Fallback when wrk is missing: bench/loadgen.py pages (one asyncio process, keep-alive,
    count-bounded, ns timestamps). Slower than wrk (~100 µs CPU per request) and it shares
    the 2 cores with the server; the report says which client was used."""
    argv = [sys.executable, "-S", str(LOADGEN), "pages", url, "--clients", str(clients),
            "--requests", str(requests), "--accept", accept, "--timeout", str(max_seconds)]
    meter = Meter(server_pids)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=max_seconds + 30)
    server, client, system, _ = meter.stop()
    if out.returncode != 0:
        raise RuntimeError(f"loadgen pages failed ({out.returncode}): {out.stderr[-1000:]}")
    d = json.loads(out.stdout)
    return Latency(clients=clients, requests=d["requests"], seconds=d["seconds"],
                   p50_ms=d["p50"], p90_ms=d["p90"], p99_ms=d["p99"], max_ms=d["max"],
                   errors=d["errors"], server_cpu=server, client_cpu=client,
                   other_cpu=system - server - client)

