"""The argument parser: one function per subcommand, the options they share below."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from spacy_index._version import __version__

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spacy-index",
        description="spaCy pipelines as ordinary, lockable, hashed Python packages.",
    )
    p.add_argument("--version", action="version", version=f"spacy-index {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _build(sub)
    _install(sub)
    _download(sub)
    _list(sub)
    _serve(sub)
    _cache(sub)
    _snapshot(sub)
    return p


def _build(sub: _Subparsers) -> None:
    b = sub.add_parser(
        "build",
        help="write a static index (PEP 503 + PEP 691 + find-links) of a repo's release assets",
        description="Write a complete static index of a GitHub repository's release assets "
        "(default: explosion/spacy-models). GitHub settings come from GITHUB_API_URL and "
        "GITHUB_TOKEN.",
    )
    b.add_argument("--out", required=True, help="output folder (replaced atomically), or "
                   "s3://bucket/prefix (S3-compatible storage; published in a safe order)")
    b.add_argument("--s3-endpoint-url", metavar="URL",
                   help="S3-compatible endpoint (MinIO, R2, GCS interop); credentials come from "
                   "the standard AWS environment and config")
    _source_args(b)
    b.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="keep projects whose name matches GLOB (repeatable; _ and - alike)")
    b.add_argument("--spacy", metavar="VERSION",
                   help="keep pipelines whose spaCy requirement admits VERSION")
    b.add_argument("--wheels-only", action="store_true", help="leave sdists out")
    b.add_argument("--allow-shrink", action="store_true",
                   help="allow a build that drops more than 10%% of the files")
    b.add_argument("--mirror", action="store_true",
                   help="download the selected files into the index (verified, once, through "
                   "the same cache as serve) with PEP 658 .metadata sidecars and relative links")
    b.add_argument("--base-url", metavar="URL",
                   help="with --mirror: absolute links under URL (e.g. https://mirror.example/) "
                   "instead of relative ones")


def _install(sub: _Subparsers) -> None:
    i = sub.add_parser(
        "install",
        help="install pipelines compatible with the installed spaCy, downloading each once",
        description="A `spacy download` that picks the newest pipeline compatible with the "
        "installed spaCy, keeps every wheel once in a verified user cache, and installs it "
        "with its hash pinned, with uv where it is available (files linked from uv's cache), "
        "else pip. MODEL is NAME, NAME==VERSION, NAME-VERSION or NAME with any version "
        "specifier ('NAME>=3.7,<3.8'). Arguments after `--` go to the installer.",
    )
    i.add_argument("models", nargs="+", metavar="MODEL")
    _install_args(i)


def _download(sub: _Subparsers) -> None:
    dl = sub.add_parser(
        "download",
        help="`install` with `spacy download`'s arguments: download NAME [--direct] [pip args]",
        description="The same as `install`, shaped like `python -m spacy download` so that "
        "scripts and Dockerfiles switch by changing one word: NAME (or NAME-VERSION with "
        "--direct), then any arguments for the installer (e.g. --no-deps).",
    )
    dl.add_argument("models", nargs="+", metavar="MODEL")
    dl.add_argument("-d", "-D", "--direct", action="store_true",
                    help="MODEL is NAME-VERSION: install exactly that, without the spaCy check "
                    "(as spacy download --direct)")
    dl.add_argument("-S", "--sdist", action="store_true", help=argparse.SUPPRESS)
    dl.add_argument("-U", "--url", help=argparse.SUPPRESS)
    _install_args(dl)


def _list(sub: _Subparsers) -> None:
    ls = sub.add_parser("list", help="list pipelines, versions, sizes and compatible spaCy versions")
    ls.add_argument("--spacy", metavar="X.Y", help="only pipelines with a version for this spaCy")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--refresh", action="store_true", help="re-read the live catalog now")
    ls.add_argument("--cache-dir", type=Path, metavar="DIR")
    _tls_arg(ls)


def _serve(sub: _Subparsers) -> None:
    v = sub.add_parser(
        "serve",
        help="run one index URL that routes pipelines to their source and the rest to PyPI",
        description="Serve PEP 503/691 pages, PEP 658 metadata and cached files. spaCy "
        "pipeline names go to explosion/spacy-models, everything else to the upstream; a "
        "--config file adds sources (private indexes, GitHub repos, folders).",
    )
    v.add_argument("--config", type=Path, metavar="FILE", help="TOML config (see docs/serve.md)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=_port, default=8765)
    v.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="file and metadata cache (default: the user cache folder)")
    v.add_argument("--cache", metavar="s3://BUCKET/PREFIX",
                   help="share the file cache with other servers through S3-compatible storage "
                   "(one upstream download per file across all of them)")
    v.add_argument("--s3-endpoint-url", metavar="URL")
    v.add_argument("--s3-lock-ttl", type=float, default=120.0, metavar="SECONDS",
                   help="with --cache s3://: how long a dead replica's download lock holds before "
                   "another replica takes the download over (default 120)")
    v.add_argument("--upstream", metavar="URL", help="index for every other name "
                   "(default https://pypi.org/simple/)")
    v.add_argument("--tls-cert", type=Path, metavar="FILE")
    v.add_argument("--tls-key", type=Path, metavar="FILE")
    v.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    v.add_argument("--forwarded-allow-ips", metavar="IPS",
                   help="trust X-Forwarded-Proto/-For from these proxy addresses (comma-separated, "
                   "or *); by default forwarded headers are ignored")
    v.add_argument("--cache-max-size", metavar="SIZE",
                   help="bound the file cache (e.g. 50GB, 500MiB): least recently used files and "
                   "metadata are evicted, never [cache] pin projects' (overrides [cache] max_size)")
    _tls_arg(v)


def _cache(sub: _Subparsers) -> None:
    c = sub.add_parser(
        "cache",
        help="show and manage the file cache that serve, install and --mirror share",
        description="stats: sizes, hit counts, last use; prune: evict least recently used "
        "entries down to --max-size (or [cache] max_size); verify: re-hash every file and "
        "remove wrong ones; rm NAME: remove a project's files; warm NAME[==VER]: download "
        "pipelines now (e.g. before a CI burst). Safe while serve runs.",
    )
    c.add_argument("action", choices=["stats", "prune", "verify", "rm", "warm"])
    c.add_argument("names", nargs="*", metavar="NAME", help="for rm and warm")
    c.add_argument("--cache-dir", type=Path, metavar="DIR")
    c.add_argument("--config", type=Path, metavar="FILE", help="serve config ([cache] max_size, pin)")
    c.add_argument("--max-size", metavar="SIZE", help="for prune")
    c.add_argument("--spacy", metavar="X.Y", help="for warm: the newest pipeline for this spaCy")
    c.add_argument("--json", action="store_true", help="for stats")
    _tls_arg(c)


def _snapshot(sub: _Subparsers) -> None:
    s = sub.add_parser(
        "snapshot",
        help="regenerate a catalog snapshot from the live sources",
        description="Read every release (and spacy-models' meta files) live and write a "
        "snapshot that `build --offline --snapshot FILE` and snapshot+delta builds can use.",
    )
    s.add_argument("--out", required=True, type=Path, help="snapshot file to write (.json.gz)")
    s.add_argument("--repo", default="explosion/spacy-models", metavar="OWNER/NAME")
    s.add_argument("--max-wait", type=float, default=60.0, metavar="SECONDS")
    s.add_argument("--cache-dir", type=Path, help="where ETags are kept")
    _tls_arg(s)


def _install_args(p: argparse.ArgumentParser) -> None:
    """The options of `install` and `download`."""
    p.add_argument("--spacy", default="auto", metavar="X.Y|auto",
                   help="choose for this spaCy version: 3.8 the series, 3.8.2 exactly "
                   "(default: the one installed for --python)")
    p.add_argument("--index", metavar="URL|PATH",
                   help="take files from this index: a `spacy-index serve` URL, an http(s):// "
                   "or file:// index, or a folder made by `build` or `build --mirror`; missing "
                   "requirements are installed from it too")
    p.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="the interpreter to install into (default: this one)")
    p.add_argument("--no-deps", action="store_true",
                   help="install the pipeline alone, not the requirements it names "
                   "(`-- --no-deps` does the same)")
    p.add_argument("--force", action="store_true",
                   help="install what was asked for even if it is not for that spaCy")
    p.add_argument("--installer", choices=["auto", "uv", "pip"], default="auto",
                   help="auto (default): uv where it is available, else pip")
    p.add_argument("--dry-run", action="store_true", help="print the pinned requirement lines only")
    p.add_argument("--pre", action="store_true", help="allow pre-release pipelines")
    p.add_argument("--refresh", action="store_true", help="re-read the live catalog now")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    _tls_arg(p)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {port}")
    return port


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default="explosion/spacy-models", metavar="OWNER/NAME",
                   help="GitHub repository whose release assets are indexed")
    p.add_argument("--offline", action="store_true",
                   help="use only the catalog snapshot; no network at all")
    p.add_argument("--snapshot", type=Path, metavar="FILE",
                   help="use this snapshot instead of the bundled one")
    p.add_argument("--no-snapshot", action="store_true",
                   help="ignore snapshots; list every release live")
    p.add_argument("--max-wait", type=float, default=60.0, metavar="SECONDS",
                   help="longest total wait for GitHub rate limits before failing (default 60)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where ETags are kept (default: the user cache folder)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    _tls_arg(p)


def _tls_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-bundle", metavar="FILE|DIR",
                   help="verify HTTPS against these CA certificates instead of the system trust "
                   "store (SSL_CERT_FILE / SSL_CERT_DIR work too)")

