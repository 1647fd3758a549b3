"""Shared helpers for the benchmarks in bench/: processes, /proc readings, load clients,
nginx, the server under test, cached model wheels and markdown output.

Everything listens on 127.0.0.1 only; every load loop is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VENV_BIN = REPO / ".venv" / "bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1_000_000
MiB = 1 << 20
GB = 1_000_000_000


# --------------------------------------------------------------------------- small utils
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, *, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2, trust_env=False)
            if r.status_code < 500:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s ({last})")


# --------------------------------------------------------------------------- /proc
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


class RssSampler:
    """Samples VmRSS of ``pid`` every ``interval`` s in a thread; ``peak`` in KiB."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS")["VmRSS"])
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- machine
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


# --------------------------------------------------------------------------- model wheels
def cached_model(work: Path, *, name: str, version: str, pad_bytes: int):
    """``tests.wheels.build_model_package`` memoized on disk under ``work/wheels`` (the 200 MB
    and 500 MB builds take ~12 s / ~28 s; later runs reuse them)."""
    from tests.wheels import ModelPackage, build_model_package, default_spacy_version

    spacy_range = default_spacy_version()
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", f"en_{name}-{version}-{pad_bytes}-{spacy_range}")
    folder = work / "wheels" / key
    sidecar = folder / "package.json"
    if sidecar.exists():
        d = json.loads(sidecar.read_text())
        wheel = Path(d["wheel"])
        if wheel.exists() and wheel.stat().st_size == d["size"]:
            return ModelPackage(wheel=wheel, sdist=None, project=d["project"], version=d["version"],
                                sha256=d["sha256"], sdist_sha256=None,
                                metadata=d["metadata"].encode("latin-1"),
                                spacy_version=d["spacy_version"])
    if folder.exists():
        shutil.rmtree(folder)
    t = time.monotonic()
    pkg = build_model_package(folder, name=name, version=version, pad_bytes=pad_bytes,
                              spacy_version=spacy_range)
    log(f"built {pkg.wheel.name} ({pkg.wheel.stat().st_size / MB:.1f} MB) "
        f"in {time.monotonic() - t:.1f}s")
    sidecar.write_text(json.dumps({
        "wheel": str(pkg.wheel), "size": pkg.wheel.stat().st_size, "project": pkg.project,
        "version": pkg.version, "sha256": pkg.sha256, "metadata": pkg.metadata.decode("latin-1"),
        "spacy_version": pkg.spacy_version}))
    return pkg


# --------------------------------------------------------------------------- servers
class ManagedProcess:
    """A subprocess that is always stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None,
                 log_path: Path, cwd: Path | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        return ""


@dataclasses.dataclass
class ServeHandle:
    url: str
    pid: int
    process: ManagedProcess

    def pids(self) -> list[int]:
        return [self.pid]


@contextlib.contextmanager
def spacy_index_serve(*, cache_dir: Path, upstream: str, api_url: str, token: str | None,
                      log_dir: Path, log_level: str = "warning",
                      python: str | None = None,
                      extra_args: Sequence[str] = ()) -> Iterator[ServeHandle]:
    """``spacy-index serve`` as a real subprocess on 127.0.0.1 (a free port picked here: the
    CLI would accept --port 0 but then nobody learns the port at --log-level warning).
    ``python``: run the CLI with that interpreter instead of the venv's console script (to
    compare server stacks, e.g. a venv that also has uvloop/httptools). ``extra_args``: more
    serve options (``--config FILE``)."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("PIP_", "UV_", "GITHUB_", "SPACY_INDEX_"))
           and "proxy" not in k.lower()}
    env["GITHUB_API_URL"] = api_url
    if token:
        env["GITHUB_TOKEN"] = token
    exe = ([python, "-c", "from spacy_index.cli import run; run()"] if python
           else [str(VENV_BIN / "spacy-index")])
    for attempt in range(5):
        port = free_port()
        argv = [*exe, "serve", "--host", "127.0.0.1", "--port", str(port),
                "--cache-dir", str(cache_dir), "--upstream", upstream, "--log-level", log_level,
                *extra_args]
        mp = ManagedProcess(argv, env=env, log_path=log_dir / f"serve-{port}.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health", timeout=30, proc=mp.proc)
        except RuntimeError:
            mp.stop()
            if attempt == 4:
                raise RuntimeError("spacy-index serve did not start:\n" + mp.tail()) from None
            continue
        break
    try:
        yield ServeHandle(url=url, pid=mp.pid, process=mp)
    finally:
        mp.stop()


@dataclasses.dataclass
class NginxHandle:
    url: str
    master: int
    process: ManagedProcess

    def pids(self) -> list[int]:
        return [self.master, *children(self.master)]


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    types {{ text/html html; application/zip whl; }}
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        index index.html;
    }}
}}
"""


@contextlib.contextmanager
def nginx(root: Path, *, log_dir: Path) -> Iterator[NginxHandle | None]:
    """nginx (2 workers, sendfile, no access log) serving ``root`` on 127.0.0.1, with its own
    prefix and config; None when nginx is not installed."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        yield None
        return
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=log_dir))
    # the workers run as an unprivileged user (nobody/www-data): they must reach ``root``
    for folder in (prefix, *root.parents, root):
        if folder.is_relative_to(log_dir.parent) and folder.exists():
            folder.chmod(folder.stat().st_mode | 0o755)
    (prefix / "tmp").mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=root))
    mp = ManagedProcess([exe, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                        log_path=prefix / "stdout.log")
    url = f"http://127.0.0.1:{port}"
    handle: NginxHandle | None = None
    try:
        try:
            wait_http(url + "/", timeout=15, proc=mp.proc)
            deadline = time.monotonic() + 5
            while len(children(mp.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            handle = NginxHandle(url=url, master=mp.pid, process=mp)
        except RuntimeError as e:
            log(f"nginx failed to start: {e}\n{mp.tail()}")
        yield handle
    finally:
        mp.stop()


# --------------------------------------------------------------------------- machine load
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


# --------------------------------------------------------------------------- load clients
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


LOADGEN = Path(__file__).resolve().parent / "loadgen.py"


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
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True) for _ in range(clients)]
        time.sleep(max(0.0, start - time.monotonic()))
        meter = Meter(server_pids)
        results = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=timeout + 30)
                if p.returncode != 0:
                    raise RuntimeError(f"loadgen fetch {url} failed ({p.returncode}): {err[-1000:]}")
                results.append(json.loads(out))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        server, _children, system, _ = meter.stop()
        for r in results:
            if set(r["statuses"]) != {200} or r["bytes"] != expect_size * count:
                raise RuntimeError(f"{url}: statuses {set(r['statuses'])}, {r['bytes']} bytes "
                                   f"(expected 200 and {expect_size * count})")
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        client_cpu = sum(r["cpu"] for r in results)
        return Transfer(clients=clients, wall=wall, nbytes=sum(r["bytes"] for r in results),
                        server_cpu=server, client_cpu=client_cpu,
                        other_cpu=system - server - client_cpu)
    argv = ["curl", "-s", "--max-time", str(int(timeout)), "-w", "%{http_code} %{size_download}\\n"]
    for _ in range(count):
        argv += [url, "-o", "/dev/null"]
    meter = Meter(server_pids)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True) for _ in range(clients)]
    try:
        outs = [p.communicate(timeout=timeout + 30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    server, client_cpu, system, wall = meter.stop()
    total = 0
    for p, (out, err) in zip(procs, outs, strict=True):
        lines = out.split()
        codes, sizes = lines[0::2], [int(x) for x in lines[1::2]]
        if p.returncode != 0 or codes != ["200"] * count or sizes != [expect_size] * count:
            raise RuntimeError(f"curl {url}: exit {p.returncode}, {out.strip()!r} {err.strip()!r}"
                               f" (expected 200 and {expect_size} bytes x{count})")
        total += sum(sizes)
    return Transfer(clients=clients, wall=wall, nbytes=total, server_cpu=server,
                    client_cpu=client_cpu, other_cpu=system - server - client_cpu)


# --------------------------------------------------------------------------- bulk sinks
#: Ways a client process can drain a response body (``drain(sink=...)``), cheapest first.
SINKS: dict[str, str] = {
    "trunc": "`recv(MSG_TRUNC | MSG_WAITALL)` of up to 4 MiB per call: the kernel drops the "
             "bytes without copying them to user space (TCP semantics of MSG_TRUNC, Linux)",
    "splice": "`splice(2)` socket → pipe → `/dev/null`, 1 MiB per call (no user-space copy)",
    "recv": "`recv_into` a preallocated 1 MiB `bytearray` (one copy to user space)",
    "curl": "`curl -s -o /dev/null` (C; copies to user space, 16 KiB reads, writes to /dev/null)",
}
_SINK_CL = re.compile(rb"(?im)^content-length:[ \t]*(\d+)")


def sink_fetch(url: str, count: int, *, sink: str, fresh: bool, start: float,
               timeout: float) -> dict:
    """Client side of :func:`drain` (runs in its own process): ``count`` GETs of ``url``, on
    a new connection each (``fresh``) or on one keep-alive connection, bodies discarded by
    ``sink``. Timed from ``start`` (CLOCK_MONOTONIC, shared by all client processes) to the
    last byte; CPU = this process's utime+stime over the same span (``os.times``)."""
    import fcntl
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    req = (f"GET {u.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-sink\r\n"
           "Accept-Encoding: identity\r\n\r\n").encode()
    step = (4 << 20) if sink == "trunc" else (1 << 20)
    buf = memoryview(bytearray(step))
    devnull = os.open(os.devnull, os.O_WRONLY)
    rd, wr = os.pipe()
    with contextlib.suppress(OSError):  # F_SETPIPE_SZ: a 1 MiB pipe, fewer splice() calls
        fcntl.fcntl(wr, 1031, 1 << 20)
    flags = socket.MSG_TRUNC | socket.MSG_WAITALL
    statuses: list[int] = []
    total = calls = connections = 0
    sock: socket.socket | None = None
    deadline = start + timeout
    while time.monotonic() < start:
        time.sleep(min(0.005, max(0.0, start - time.monotonic())))
    c0, t0 = os.times(), time.monotonic()
    for _ in range(count):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: over {timeout}s")
        if sock is None or fresh:
            if sock is not None:
                sock.close()
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.settimeout(None)  # blocking (splice needs it); the parent enforces the timeout
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connections += 1
        fd = sock.fileno()
        sock.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:  # peek, so that no body byte is read here
            peek = sock.recv(4096, socket.MSG_PEEK)
            if not peek:
                raise ConnectionError("connection closed before the headers ended")
            end = (head + peek).find(b"\r\n\r\n")
            head += sock.recv(len(peek) if end < 0 else end + 4 - len(head))
        statuses.append(int(head.split(b" ", 2)[1]))
        m = _SINK_CL.search(head)
        if m is None:
            raise ValueError(f"no Content-Length in {head[:300]!r}")
        left = int(m.group(1))
        while left:
            calls += 1
            if sink == "trunc":
                n = sock.recv_into(buf, min(left, step), flags)
            elif sink == "splice":
                n = os.splice(fd, wr, min(left, step))
                k = n
                while k:
                    k -= os.splice(rd, devnull, k)
            else:
                n = sock.recv_into(buf, min(left, step))
            if n <= 0:
                raise ConnectionError(f"connection closed with {left} bytes to go")
            left -= n
            total += n
    t1, c1 = time.monotonic(), os.times()
    if sock is not None:
        sock.close()
    return {"bytes": total, "start": t0, "end": t1, "statuses": statuses, "calls": calls,
            "connections": connections, "cpu": (c1.user + c1.system) - (c0.user + c0.system)}


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


def drain(url: str, clients: int, *, count: int = 1, expect_size: int,
          server_pids: Sequence[int], timeout: float, sink: str = "trunc",
          fresh: bool = True) -> Drain:
    """``clients`` concurrent client processes, each downloading ``url`` ``count`` times (a new
    connection per download when ``fresh``, else one keep-alive connection) and discarding
    the body with ``sink`` (see :data:`SINKS`); every answer must be 200 with ``expect_size``
    bytes. The Python sinks start on a common clock (start-up not timed); curl is timed from
    process start. Server CPU from /proc/PID/stat; client CPU per process over the timed span
    (``os.times`` in the client; curl: getrusage of the reaped process, start-up included)
    and, for all, getrusage(RUSAGE_CHILDREN) deltas."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if sink == "curl":
        argv = ["curl", "-s", "--max-time", str(int(timeout)), "-w",
                "%{http_code} %{size_download}\\n"]
        for _ in range(count):
            argv += [url, "-o", "/dev/null"]
            if fresh:
                argv += ["-H", "Connection: close"]
        meter = Meter(server_pids)
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True) for _ in range(clients)]
        outs, cpus = [], []
        try:
            for p in procs:
                a = resource.getrusage(resource.RUSAGE_CHILDREN)
                outs.append(p.communicate(timeout=timeout + 30))
                b = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus.append(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        server, _children, system, wall = meter.stop()
        total = 0
        for p, (out, err) in zip(procs, outs, strict=True):
            lines = out.split()
            codes, sizes = lines[0::2], [int(x) for x in lines[1::2]]
            if p.returncode != 0 or codes != ["200"] * count or sizes != [expect_size] * count:
                raise RuntimeError(f"curl {url}: exit {p.returncode}, {out.strip()!r} "
                                   f"{err.strip()!r} (expected 200 and {expect_size} bytes x{count})")
            total += sum(sizes)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        rusage = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        # curl's own CPU is only known once reaped: the per-process sum is the rusage total
        return Drain(clients=clients, wall=wall, nbytes=total, server_cpu=server,
                     client_cpu=rusage, other_cpu=system - server - rusage, sink=sink,
                     fresh=fresh, count=count, client_cpus=cpus, client_cpu_rusage=rusage)
    if sink not in SINKS:
        raise ValueError(f"unknown sink {sink!r}")
    start = time.monotonic() + 0.3 + 0.05 * clients
    argv = [sys.executable, "-S", str(Path(__file__).resolve()), "sink", url, "--count",
            str(count), "--sink", sink, "--start", repr(start), "--timeout", str(timeout)]
    if fresh:
        argv.append("--fresh")
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True) for _ in range(clients)]
    time.sleep(max(0.0, start - time.monotonic()))
    meter = Meter(server_pids)
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout + 30)
            if p.returncode != 0:
                raise RuntimeError(f"sink {sink} {url} failed ({p.returncode}): {err[-1000:]}")
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    server, _children, system, _ = meter.stop()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for r in results:
        if set(r["statuses"]) != {200} or r["bytes"] != expect_size * count:
            raise RuntimeError(f"{url}: statuses {set(r['statuses'])}, {r['bytes']} bytes "
                               f"(expected 200 and {expect_size * count})")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cpus = [r["cpu"] for r in results]
    return Drain(clients=clients, wall=wall, nbytes=sum(r["bytes"] for r in results),
                 server_cpu=server, client_cpu=sum(cpus), other_cpu=system - server - sum(cpus),
                 sink=sink, fresh=fresh, count=count, client_cpus=cpus,
                 client_cpu_rusage=ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)


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


# --------------------------------------------------------------------------- markdown
def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    if n < MiB:
        return f"{n / 1024:.1f} KiB"
    return f"{n / MiB:.1f} MiB"




def write_results(name: str, quick: bool, data: dict, text: str) -> Path:
    """Write ``bench/results/<date>-<name>[-quick].json`` and ``.md``; returns the stem path."""
    import datetime as _dt

    res = REPO / "bench" / "results"
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


def _main(argv: list[str]) -> int:
    """``python -S bench/common.py sink URL --count N --sink trunc [--fresh] --start T``: the
    client process of :func:`drain`; prints one JSON line."""
    import argparse

    ap = argparse.ArgumentParser(prog="bench/common.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sink")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--sink", choices=[k for k in SINKS if k != "curl"], default="trunc")
    p.add_argument("--fresh", action="store_true", help="a new connection per download")
    p.add_argument("--start", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args(argv)
    out = sink_fetch(a.url, a.count, sink=a.sink, fresh=a.fresh,
                     start=a.start or time.monotonic(), timeout=a.timeout)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
