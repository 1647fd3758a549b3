"""Servers under test as subprocesses on 127.0.0.1, always stopped on exit: ``spacy-index
serve`` and nginx (the static-file reference)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .procfs import children
from .util import VENV_BIN, free_port, log, wait_http


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
        from tests.servers import stop_process  # the one subprocess stop, shared with the tests

        stop_process(self.proc, grace=timeout)
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


def start_on_free_port(argv_for: Callable[[int], list[str]], *, env: dict[str, str],
                       log_for: Callable[[int], Path], what: str,
                       timeout: float = 30) -> tuple[ManagedProcess, str]:
    """A server started by ``argv_for(port)`` on a free 127.0.0.1 port, once its ``/health``
    answers; another port is tried (5 in all) when it does not start, since a free port can
    be taken by someone else before the server binds it."""
    for attempt in range(5):
        port = free_port()
        mp = ManagedProcess(argv_for(port), env=env, log_path=log_for(port))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health", timeout=timeout, proc=mp.proc)
        except RuntimeError:
            mp.stop()
            if attempt == 4:
                raise RuntimeError(f"{what} did not start:\n" + mp.tail()) from None
            continue
        return mp, url
    raise AssertionError("unreachable")


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
    mp, url = start_on_free_port(
        lambda port: [*exe, "serve", "--host", "127.0.0.1", "--port", str(port),
                      "--cache-dir", str(cache_dir), "--upstream", upstream,
                      "--log-level", log_level, *extra_args],
        env=env, log_for=lambda port: log_dir / f"serve-{port}.log", what="spacy-index serve")
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


def spacy_index_build(api_url: str, run_dir: Path) -> Path:
    """``spacy-index build --out run_dir/public -q`` against ``api_url`` (a FakeGitHub), with
    its own cache; returns the output folder (the find-links page and the simple index)."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("GITHUB_", "SPACY_INDEX_"))}
    env.update(GITHUB_API_URL=api_url, SPACY_INDEX_CACHE_DIR=str(run_dir / "build-cache"))
    out = run_dir / "public"
    subprocess.run([str(VENV_BIN / "spacy-index"), "build", "--out", str(out), "-q"], env=env,
                   check=True, capture_output=True, timeout=300)
    return out
