"""Support for tests/test_real_pypi_clients.py: `spacy-index serve` as a subprocess whose
stderr (the access log and httpx's upstream request log) is read back per client run.

Access-log lines (``server/accesslog.py`` ``AccessLog``)::

    GET /files/numpy-2.3.4-cp311-cp311-manylinux_2_28_x86_64.whl 200 16823108B miss 1.234s

What serve fetched upstream is read from its cache directory: every file it downloads is
stored content-addressed below ``<cache>/files/`` (``<cache>/partial/`` while it streams),
every ``.metadata`` it reads (from the upstream's ``.metadata`` or by Range reads of the
remote wheel) below ``<cache>/metadata/``; a window reports the entries that appeared.
Where httpx's request lines are in the log (``--log-level debug``; INFO in older versions)::

    HTTP Request: GET https://pypi.org/simple/numpy/ "HTTP/1.1 200 OK"

they are parsed too.

The access log is written in batches at most 1 s late, so :meth:`ServeProcess.sync` sends a
marker request and waits until its line is in the file: every request answered before the
marker is then in the log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import free_port, stop_process

_ACCESS = re.compile(
    r"^(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<nbytes>\d+)B "
    r"(?P<cache>\S+) (?P<seconds>[\d.]+)s$")
_UPSTREAM = re.compile(r'^HTTP Request: (?P<method>[A-Z]+) (?P<url>\S+) "HTTP/[\d.]+ (?P<status>\d{3})')
_SYNC = "/__sync__/"


@dataclass(frozen=True)
class Access:
    """One access-log line."""

    method: str
    path: str
    status: int
    nbytes: int
    cache: str  #: "hit" | "miss" | "local" | "-"
    seconds: float

    @property
    def is_file(self) -> bool:
        """A distribution file (not its ``.metadata``)."""
        return self.path.startswith("/files/") and not self.path.endswith(".metadata")

    @property
    def is_metadata(self) -> bool:
        return self.path.startswith("/files/") and self.path.endswith(".metadata")

    @property
    def whole_file(self) -> bool:
        """A whole distribution file sent to the client (not a range, not metadata)."""
        return self.method == "GET" and self.is_file and self.status == 200

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return (f"{self.method} {self.path} {self.status} {self.nbytes}B {self.cache} "
                f"{self.seconds:.3f}s")


@dataclass(frozen=True)
class UpstreamRequest:
    """One request serve made upstream (httpx's INFO line)."""

    method: str
    url: str
    status: int

    @property
    def host(self) -> str:
        return httpx.URL(self.url).host

    @property
    def whole_file(self) -> bool:
        """A whole file from PyPI's file host or the fake GitHub's blob storage."""
        path = httpx.URL(self.url).path
        return (self.method == "GET" and self.status == 200 and not path.endswith(".metadata")
                and (self.host == "files.pythonhosted.org" or path.startswith("/blob/")))


@dataclass
class Window:
    """What serve logged between two :meth:`ServeProcess.sync` points."""

    access: list[Access] = field(default_factory=list)
    upstream: list[UpstreamRequest] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  #: any other stderr line (warnings...)
    #: bytes serve's process wrote meanwhile (``/proc/<pid>/io`` ``wchar``: write(2) *and*
    #: sendfile(2), so it counts the zero-copy file bodies the access log reports as 0B;
    #: plus log lines and cache writes)
    wchar: int | None = None
    #: files that appeared in serve's cache (``files/``, ``partial/``): path -> size
    new_cached_files: dict[str, int] = field(default_factory=dict)
    #: ``.metadata`` entries that appeared in serve's cache (``metadata/``)
    new_metadata: int = 0

    @property
    def whole_files(self) -> list[Access]:
        return [a for a in self.access if a.whole_file]

    @property
    def ranges(self) -> list[Access]:
        return [a for a in self.access if a.is_file and a.status == 206]

    @property
    def metadata(self) -> list[Access]:
        return [a for a in self.access if a.is_metadata]

    @property
    def server_errors(self) -> list[Access]:
        return [a for a in self.access if a.status >= 500]

    @property
    def file_requests(self) -> list[Access]:
        return [a for a in self.access if a.path.startswith("/files/")]

    @property
    def upstream_whole_files(self) -> list[UpstreamRequest]:
        return [u for u in self.upstream if u.whole_file]

    def summary(self) -> dict[str, int]:
        return {
            "requests": len(self.access),
            "pages": sum(a.path.startswith("/simple/") for a in self.access),
            "json": sum(a.path.endswith("/json") for a in self.access),
            "metadata": len(self.metadata),
            "whole files": len(self.whole_files),
            "ranges": len(self.ranges),
            "HEAD files": sum(a.method == "HEAD" and a.is_file for a in self.access),
            "5xx": len(self.server_errors),
            "file misses": sum(a.is_file and a.cache == "miss" for a in self.access),
            "upstream requests": len(self.upstream),
            "upstream whole files": len(self.upstream_whole_files),
            "new cached files": len(self.new_cached_files),
            "new cached bytes": sum(self.new_cached_files.values()),
            "new cached metadata": self.new_metadata,
            "serve wchar bytes": -1 if self.wchar is None else self.wchar,
        }


class ServeProcess:
    """``spacy-index serve`` in a subprocess, stderr to ``log_path``."""

    def __init__(self, exe: os.PathLike[str] | str, *, cache_dir: Path, log_path: Path,
                 env: Mapping[str, str], args: Sequence[str] = (), host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.log_path = log_path
        self.cache_dir = Path(cache_dir)
        self.argv = [os.fspath(exe), "serve", "--host", host, "--port", str(self.port),
                     "--cache-dir", os.fspath(cache_dir), *args]
        self.env = dict(env)
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._consumed = 0  #: lines of the log already handed out
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    @property
    def simple(self) -> str:
        return self.url + "/simple/"

    def _wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become healthy:\n{self.text()}")

    def text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def cache_snapshot(self) -> dict[str, int]:
        """``relative path -> size`` of the files in serve's file and metadata caches."""
        out: dict[str, int] = {}
        for sub in ("files", "partial", "metadata"):
            for path in (self.cache_dir / sub).rglob("*"):
                with contextlib.suppress(OSError):
                    if path.is_file():
                        out[path.relative_to(self.cache_dir).as_posix()] = path.stat().st_size
        return out

    def wchar(self) -> int | None:
        """Bytes written by the serve process so far (``/proc/<pid>/io``), if readable."""
        try:
            text = Path(f"/proc/{self.proc.pid}/io").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "wchar":
                return int(value)
        return None

    def sync(self, timeout: float = 10) -> list[str]:
        """Wait until every request answered so far is in the log; return the new lines."""
        marker = f"{_SYNC}{uuid.uuid4().hex}"
        httpx.get(self.url + marker, timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            lines = self.text().splitlines()
            if any(line.startswith(f"GET {marker} ") for line in lines[self._consumed:]):
                new = lines[self._consumed:]
                self._consumed = len(lines)
                return [line for line in new if _SYNC not in line]
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the access log did not show {marker}")
            time.sleep(0.1)

    @contextlib.contextmanager
    def window(self) -> Iterator[Window]:
        """``with serve.window() as w: <run a client>`` -> w holds what serve logged meanwhile."""
        self.sync()
        w = Window()
        before = self.wchar()
        cached = self.cache_snapshot()
        try:
            yield w
        finally:
            lines = self.sync()
            after = self.wchar()
            if before is not None and after is not None:
                w.wchar = after - before
            new = {k: v for k, v in self.cache_snapshot().items() if k not in cached}
            w.new_cached_files = {k: v for k, v in new.items() if not k.startswith("metadata/")}
            w.new_metadata = sum(k.startswith("metadata/") for k in new)
            for line in lines:
                m = _ACCESS.match(line)
                if m:
                    w.access.append(Access(m["method"], m["path"], int(m["status"]),
                                           int(m["nbytes"]), m["cache"], float(m["seconds"])))
                    continue
                u = _UPSTREAM.match(line)
                if u:
                    w.upstream.append(UpstreamRequest(u["method"], u["url"], int(u["status"])))
                else:
                    w.other.append(line)

    def stop(self, timeout: float = 20) -> int:
        stop_process(self.proc, signal.SIGTERM, grace=timeout)
        self._log.close()
        return self.proc.returncode


__all__ = ["Access", "ServeProcess", "UpstreamRequest", "Window"]
