"""``serve``: the routing index server on uvicorn, with serve's own protocol and limits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from spacy_index import config as settings_config
from spacy_index.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from spacy_index.server.config import LimitsConfig, ServeConfig


def run_serve(args: argparse.Namespace, env: Mapping[str, str], err: Console) -> int:
    from spacy_index.server.limits import Guard
    from spacy_index.server.protocol import protocol_class
    from spacy_index.server.wiring import build_server, create_app

    _check_tls(args)
    settings, cache_dir = settings_config.load(env, args.cache_dir)
    api_url, token = settings.api_url, settings.token  # a bad GITHUB_API_URL fails here, first
    config = _serve_config(args, env)
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # one access-log line per request: the HTTP libraries' own request lines only at debug
    for noisy in ("httpx", "httpcore", "hpack", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    limits = config.limits
    guard = Guard(limits, limits.effective_connections(_raise_open_file_limit()))
    uv_config = _uvicorn_config(args, limits)
    sock = _listen(args.host, args.port)  # before saying so: a busy port is one line
    try:
        server = build_server(config, cache_dir=cache_dir, api_url=api_url,
                              token=token, s3_cache=args.cache,
                              s3_endpoint_url=args.s3_endpoint_url,
                              s3_lock_ttl=args.s3_lock_ttl)
        app = create_app(server)
        uv_config.app = app
        # httptools with zero-copy files and task-free cached pages (server/protocol.py);
        # uvicorn's default when that protocol is unavailable. The plain asyncio loop, because
        # zero-copy needs its loop.sendfile.
        uv_config.http = protocol_class(app.fast, guard) or "auto"
        if uv_config.http == "auto":  # uvicorn's own cap there (503 beyond it)
            uv_config.limit_concurrency = guard.max_connections
        try:
            uv_config.load()
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise UsageError(f"cannot use the TLS certificate or key: {getattr(e, 'strerror', None) or e}") from None
        _announce(err, args, sock, cache_dir, config)
        _quiet_logging(level)
        # Big pages, renders and zip directories are parsed in worker threads. While one runs,
        # the event loop takes the GIL back after each of its system calls only when the
        # switch interval (5 ms) is up: a /health answer (a dozen of them) took 60 ms; with
        # 1 ms, 10 ms. Set here, for the serve process only, never on import or create_app.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        server.upstream.start()  # its page-fetch process starts while uvicorn does
        _GuardedServer(uv_config, guard, sock).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _check_tls(args: argparse.Namespace) -> None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag} {str(path)!r}: no such file")


def _serve_config(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    from spacy_index.server.config import load_config

    config = load_config(args.config, env, upstream=args.upstream, ca_bundle=args.ca_bundle)
    if args.cache_max_size:
        from dataclasses import replace

        from spacy_index.server.config import parse_size

        config = replace(config, cache=replace(
            config.cache, max_size=parse_size(args.cache_max_size, "--cache-max-size")))
    return config


def _uvicorn_config(args: argparse.Namespace, limits: LimitsConfig):
    import uvicorn

    from spacy_index.server.config import ACCEPT_BATCH

    return uvicorn.Config(
        None, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
        ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
        ssl_keyfile=str(args.tls_key) if args.tls_key else None,
        timeout_graceful_shutdown=limits.shutdown_grace, backlog=ACCEPT_BATCH, loop="asyncio",
        timeout_keep_alive=limits.idle_timeout,
        h11_max_incomplete_event_size=limits.max_header_size,  # uvicorn's h11 fallback
        # forwarded headers only from proxies the operator named (a shared cache in front
        # could otherwise be poisoned with https://evil.example/ links)
        proxy_headers=bool(args.forwarded_allow_ips),
        forwarded_allow_ips=args.forwarded_allow_ips or "",
    )


def _announce(err: Console, args: argparse.Namespace, sock, cache_dir: Path,
              config: ServeConfig) -> None:
    from spacy_index.http import redact_url

    scheme = "https" if args.tls_cert else "http"
    err.print(f"spacy-index serve: {scheme}://{args.host}:{sock.getsockname()[1]}/simple/  "
              f"(cache {cache_dir}; upstream {redact_url(config.upstream)})")
    for source in config.sources:
        where = source.display_url or source.repo or (str(source.path) if source.path else "")
        err.print(f"  {source.name}: {source.kind} {where} <- {', '.join(source.projects[:4])}"
                  + (" …" if len(source.projects) > 4 else ""))


def _quiet_logging(level: str) -> None:
    """Called after uvicorn.Config.load, which re-configures logging (closing existing
    handlers): the access log is written in batches, at most 1 s late, not one write(2)
    per request."""
    from spacy_index.server.logbuffer import BufferedStreamHandler

    access_handler = BufferedStreamHandler(sys.stderr, interval=1.0)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger = logging.getLogger("spacy_index.access")
    access_logger.addHandler(access_handler)
    access_logger.propagate = False
    for name in ("uvicorn", "uvicorn.error"):  # "Started server process" and the like
        logging.getLogger(name).setLevel(logging.WARNING if level == "INFO" else level)
    # Log records need only their message: skip the caller lookup and thread/process
    # fields (the logging HOWTO's "Optimization" settings).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def _raise_open_file_limit() -> int | None:
    """Raise the soft open-file limit to the hard one (as nginx's worker_rlimit_nofile);
    the limit now in force, or None where there is none to read."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft
    return hard


def _GuardedServer(config, guard, sock):
    """uvicorn's Server that, once its loop runs, reports accept() failures once per 10 s,
    and keeps the kernel's listen backlog at ``LISTEN_BACKLOG`` while asyncio accepts at
    most ``ACCEPT_BATCH`` connections per wake-up (uvicorn's ``backlog`` sets both)."""
    import asyncio

    import uvicorn

    from spacy_index.server.config import LISTEN_BACKLOG
    from spacy_index.server.limits import quiet_accept_errors

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            quiet_accept_errors(asyncio.get_running_loop(), guard)
            await super().startup(sockets=sockets)
            if not self.should_exit:
                sock.listen(LISTEN_BACKLOG)

    return Server(config)


def _listen(host: str, port: int):
    """A listening socket on ``host:port`` (as uvicorn binds it), or one clear error."""
    import socket

    from spacy_index.server.config import LISTEN_BACKLOG

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}; check --host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(True)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}; "
                         "choose another --port or --host") from None
    return sock
