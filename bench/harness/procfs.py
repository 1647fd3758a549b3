"""/proc readings: CPU of processes and of the machine, RSS, and waiting for a quiet machine."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / CLK_TCK


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    return out


def tree_threads(pids: Sequence[int]) -> list[int]:
    """Every thread of the processes and of all their descendants."""
    out: list[int] = []
    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError):
            out += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        todo += children(pid)
    return out


#: the CPUs this script may use
ALL_CPUS = frozenset(os.sched_getaffinity(0))


def set_affinity(pids: Sequence[int], cpus: frozenset[int] | None) -> None:
    """Restrict every thread of the processes and their descendants to ``cpus`` (None: back
    to :data:`ALL_CPUS`). Threads and processes they start later inherit it."""
    for tid in tree_threads(pids):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus or ALL_CPUS)


def split_cpus(spec: str) -> tuple[frozenset[int], frozenset[int]] | None:
    """``--pin``: "off" → None; "auto" → (every CPU but the last, the last) when there are two
    or more, else None; "S:C" (e.g. "0:1", "0-2:3") → (S, C)."""
    if spec == "off":
        return None
    if spec == "auto":
        cpus = sorted(ALL_CPUS)
        return (frozenset(cpus[:-1]), frozenset(cpus[-1:])) if len(cpus) >= 2 else None

    def parse(part: str) -> frozenset[int]:
        out: set[int] = set()
        for item in part.split(","):
            lo, _, hi = item.partition("-")
            out |= set(range(int(lo), int(hi or lo) + 1))
        return frozenset(out)

    server, sep, client = spec.partition(":")
    try:
        if not sep:
            raise ValueError
        out = parse(server), parse(client)
    except ValueError:
        raise ValueError(f"--pin {spec!r}: expected off, auto or SERVER_CPUS:CLIENT_CPUS "
                         "(e.g. 0:1 or 0-2:3)") from None
    if not (out[0] | out[1]) <= ALL_CPUS:
        raise ValueError(f"--pin {spec!r}: this machine's CPUs are {sorted(ALL_CPUS)}")
    return out


def status_kib(pid: int, *keys: str) -> dict[str, int]:
    want = set(keys)
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in want:
                out[k] = int(v.split()[0])
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``, Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """Calls ``sample()`` every ``interval`` s in a thread while entered; once more on exit
    when ``final`` (so the last state is counted even if the thread slept through it)."""

    final = False

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.final:
            self.sample()


class RssSampler(Sampler):
    """Samples VmRSS of ``pid`` every ``interval`` s in a thread; ``peak`` in KiB."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(interval, "rss-sampler")
        self.pid = pid
        self.peak = 0

    def sample(self) -> None:
        with contextlib.suppress(OSError, KeyError):
            self.peak = max(self.peak, status_kib(self.pid, "VmRSS")["VmRSS"])
            self.samples += 1


def system_cpu() -> float:
    """CPU-seconds the whole machine spent in user+nice+system (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        f = fh.readline().split()
    return (int(f[1]) + int(f[2]) + int(f[3])) / CLK_TCK


def wait_quiet(*, max_wait: float, threshold: float = 0.2, window: float = 1.0) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until the machine is quiet: under ``threshold`` cores busy
    over ``window`` s (this runs between measurements, when our own servers are idle). Other
    sessions share this machine; their test runs would otherwise land in the measurements.
    Returns (seconds waited, load seen last, in cores)."""
    t0 = time.monotonic()
    while True:
        a = system_cpu()
        time.sleep(window)
        load = (system_cpu() - a) / window
        waited = time.monotonic() - t0
        if load < threshold or waited >= max_wait:
            return waited, load


class Meter:
    """Snapshots for one measurement: server CPU (/proc/PID/stat), reaped children's CPU
    (RUSAGE_CHILDREN: curl, wrk), machine CPU (/proc/stat) and the clock."""

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.pids = list(server_pids)
        self.server0 = cpu_seconds(self.pids)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children0 = ru.ru_utime + ru.ru_stime
        self.system0 = system_cpu()
        self.t0 = time.monotonic()

    def stop(self) -> tuple[float, float, float, float]:
        """(server CPU, reaped children CPU, machine CPU, seconds) since the snapshot."""
        server = cpu_seconds(self.pids) - self.server0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        system = system_cpu() - self.system0
        return (server, ru.ru_utime + ru.ru_stime - self.children0, system,
                time.monotonic() - self.t0)

