"""Command line: parse arguments, call the library, map expected errors to one line + exit code.

``main(argv, env)`` returns the exit code so tests call it directly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from spacy_index import __version__
from spacy_index.errors import SpacyIndexError, UpstreamUnreachable, UsageError

if TYPE_CHECKING:  # rich is imported where it is used: `install` of what is there needs none
    from rich.console import Console


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spacy-index",
        description="spaCy pipelines as ordinary, lockable, hashed Python packages.",
    )
    p.add_argument("--version", action="version", version=f"spacy-index {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    ls = sub.add_parser("list", help="list pipelines, versions, sizes and compatible spaCy versions")
    ls.add_argument("--spacy", metavar="X.Y", help="only pipelines with a version for this spaCy")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--refresh", action="store_true", help="re-read the live catalog now")
    ls.add_argument("--cache-dir", type=Path, metavar="DIR")
    _tls_arg(ls)

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
    return p


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


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the CLI; returns the exit code. Expected errors print one line, no traceback."""
    env = os.environ if env is None else env
    # markup off: no message may be read as rich markup ("spacy-index[s3]" stays as it is)
    err = _Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    out = _Console(highlight=False, soft_wrap=True, markup=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    try:
        parser = _parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown and args.command != "download":  # download passes them on, as spaCy's does
            parser.error("unrecognized arguments: " + " ".join(unknown))
        if passthrough and args.command not in ("install", "download"):
            # only install and download hand what follows -- on (to pip or uv)
            parser.error(f"arguments after -- go to the installer with install and download; {args.command} "
                         "takes none: " + " ".join(passthrough))
    except SystemExit as e:
        return int(e.code or 0)
    args.passthrough = [*unknown, *passthrough]
    if args.command not in _LAZY_HTTP:
        from spacy_index.http import install_log_redaction

        install_log_redaction()
    try:
        if args.command == "build":
            return _build(args, env, out, err)
        if args.command == "snapshot":
            return _snapshot(args, env, err)
        if args.command == "serve":
            return _serve(args, env, err)
        if args.command in ("install", "download"):
            return _install(args, env, out, err)
        if args.command == "list":
            return _list(args, env, out, err)
        if args.command == "cache":
            from spacy_index.cache_cli import run_cache

            return run_cache(args, env, out, err)
        raise UsageError(f"unknown command {args.command!r}")
    except SpacyIndexError as e:
        _error_line(err, str(e))
        return e.exit_code
    except KeyboardInterrupt:
        err.print(_INTERRUPTED.get(args.command, "interrupted"), markup=False, highlight=False)
        return 130
    except OSError as e:
        if args.debug:
            raise
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        _error_line(err, f"{e.strerror or e}{where}; check the path and its permissions "
                         "(SPACY_INDEX_CACHE_DIR or --cache-dir moves the cache)")
        return 1
    except Exception as e:  # an unexpected error: one line, the traceback only with --debug
        if args.debug:
            raise
        _error_line(err, f"unexpected {type(e).__name__}: {e}; rerun with --debug for the "
                         "traceback and report it")
        return 70


#: what Ctrl-C leaves behind, per command
_INTERRUPTED = {
    "build": "interrupted; the previous output is unchanged (with --mirror: the files "
             "downloaded stay in the cache and a partial one resumes next time)",
    "snapshot": "interrupted; no snapshot was written",
    "install": "interrupted; verified downloads stay in the cache and a partial one resumes "
               "next time; if the installer had started, run the same command again to finish",
    "download": "interrupted; verified downloads stay in the cache and a partial one resumes "
                "next time; if the installer had started, run the same command again to finish",
    "list": "interrupted",
    "serve": "stopped",
    "cache": "interrupted; the cache is consistent (a partial download resumes next time)",
}


#: commands that attach the HTTP log redaction themselves, only once they use HTTP (an
#: install of what is already there must not import an HTTP library)
_LAZY_HTTP = frozenset({"install", "download", "list"})


class _Console:
    """The CLI's stdout or stderr: a plain line is written as it is, without importing rich
    (~0.1 s); anything else (tables, JSON, styled text) goes to a rich Console made on first
    use with the same settings."""

    def __init__(self, **settings: object) -> None:
        self._settings = settings
        self._rich: Console | None = None

    @property
    def file(self):
        return sys.stderr if self._settings.get("stderr") else sys.stdout

    @property
    def is_terminal(self) -> bool:
        if self._rich is not None:
            return self._rich.is_terminal
        try:
            return self.file.isatty()
        except (AttributeError, ValueError):
            return False

    def print(self, *objects: object, **options: object) -> None:
        if (self._rich is None and len(objects) == 1 and isinstance(objects[0], str)
                and not options.get("markup") and set(options) <= {"markup", "highlight"}):
            self.file.write(objects[0] + "\n")
            self.file.flush()
            return
        self.rich.print(*objects, **options)  # type: ignore[arg-type]

    @property
    def rich(self) -> Console:
        if self._rich is None:
            from rich.console import Console

            self._rich = Console(**self._settings)  # type: ignore[arg-type]
        return self._rich

    def __getattr__(self, name: str):
        return getattr(self.rich, name)


def _error_line(err: Console, message: str) -> None:
    """``error: <message>`` on stderr; the message is plain text, never rich markup."""
    from rich.text import Text

    line = Text("error: ", style="bold red")
    line.append(message)
    err.print(line, highlight=False)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _settings(args: argparse.Namespace, env: Mapping[str, str]):
    from spacy_index.config import Settings

    settings = Settings.from_env(env)
    cache_dir = args.cache_dir or settings.resolved_cache_dir()
    return settings, cache_dir


def _notifier(err: Console, quiet: bool):
    def notify(message: str) -> None:
        if not quiet:
            err.print(message, markup=False, highlight=False)

    return notify


def _build(args: argparse.Namespace, env: Mapping[str, str], out: Console, err: Console) -> int:
    from spacy_index.api import build_index, fetch_catalog

    spacy_version = None
    if args.spacy:
        try:
            spacy_version = Version(args.spacy)
        except InvalidVersion:
            raise UsageError(
                f"--spacy needs a version such as 3.8 or 3.7.5, got {args.spacy!r}"
            ) from None
    if args.offline and args.no_snapshot:
        raise UsageError("--offline builds from a snapshot; it cannot be combined with --no-snapshot")
    settings, cache_dir = _settings(args, env)
    notify = _notifier(err, args.quiet)
    fetched = fetch_catalog(
        args.repo,
        api_url=settings.api_url,
        token=settings.token,
        offline=args.offline,
        snapshot=args.snapshot,
        use_snapshot=not args.no_snapshot,
        state_dir=cache_dir,
        max_wait=args.max_wait,
        notify=notify,
        ca_bundle=args.ca_bundle,
    )
    for warning in fetched.catalog.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    if args.base_url and not args.mirror:
        raise UsageError("--base-url goes with --mirror")
    _check_selection(fetched.catalog, args.only, spacy_version, args.wheels_only)
    result = build_index(
        args.out, fetched.catalog, only=args.only, spacy=spacy_version,
        wheels_only=args.wheels_only, allow_shrink=args.allow_shrink, fetch=fetched,
        mirror_cache=cache_dir if args.mirror else None, base_url=args.base_url, notify=notify,
        s3_endpoint_url=args.s3_endpoint_url, ca_bundle=args.ca_bundle,
        mirror_progress=args.mirror and err.is_terminal and not args.quiet,
    )
    _summary(result, out)
    return 0


def _check_selection(catalog, only, spacy_version, wheels_only) -> None:
    """A filter that keeps nothing is a mistake, said before anything is written."""
    import difflib

    from spacy_index.model import normalize_glob

    if not catalog.projects or catalog.filter(only=only, spacy=spacy_version,
                                              wheels_only=wheels_only).projects:
        return
    names = sorted(catalog.projects)
    if only and not catalog.filter(only=only).projects:
        stems = [normalize_glob(g).replace("*", "").replace("?", "") for g in only]
        close = sorted({m for s in stems for m in difflib.get_close_matches(s, names, n=2, cutoff=0.5)})
        hint = f"; did you mean {', '.join(close)}?" if close else f"; names look like {names[0]}"
        raise UsageError(f"--only {' '.join(only)} matched no project{hint} (nothing was written)")
    what = f"spaCy {spacy_version}" if spacy_version else "the filters"
    raise UsageError(f"no file of the selected projects fits {what} (nothing was written)")


def _summary(result, out: Console) -> None:
    projects, files, hashed = result.catalog.counts()
    fetched = result.fetch
    stats = fetched.stats
    pub = result.publish
    if getattr(pub, "created", False):
        state = f"created, {pub.files_changed} files"
    elif pub.changed:
        state = f"updated, {pub.files_changed} files changed"
    else:
        state = "unchanged, nothing rewritten"
    rows = [("output", f"{pub.path} ({state})"), ("source", f"{fetched.catalog.source} [{fetched.mode}]")]
    if result.catalog.snapshot_date:
        rows.append(("snapshot", f"catalog snapshot dated {result.catalog.snapshot_date}"))
    pct = (100.0 * hashed / files) if files else 0.0
    rows += [
        ("projects", f"{projects:,}"),
        ("files", f"{files:,}"),
        ("with sha256", f"{hashed:,} ({pct:.1f}%)"),
        (
            "API requests",
            f"{stats.requests:,} ({stats.not_modified:,} answered 304 Not Modified; "
            f"{stats.rate_limit_spent:,} rate-limit units spent)"
            + (f"; {stats.other_requests:,} download(s) elsewhere" if stats.other_requests else ""),
        ),
    ]
    if result.mirror is not None:
        m = result.mirror
        rows.append(("mirrored", f"{m.downloaded:,} downloaded ({m.downloaded_bytes:,} bytes), "
                                 f"{m.cached:,} from the cache, {len(m.warnings):,} left out"))
    if fetched.catalog.tags_without_release:
        rows.append(("tags without release", f"{len(fetched.catalog.tags_without_release):,}"))
    from rich.text import Text

    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        line = Text(key.ljust(width), style="bold")
        line.append(f"  {value}")
        out.print(line)
    if not isinstance(pub.path, Path):
        out.print(f"\nServe {pub.path} over HTTP (see docs/static-hosting.md) and use "
                  "--index-url https://HOST/PREFIX/simple/", markup=False)
        return
    simple = pub.path.as_uri() + "/simple/"
    projects_built = result.catalog.projects
    example = "en_core_web_sm" if "en-core-web-sm" in projects_built else (
        next(iter(projects_built.values())).display_name if projects_built else "en_core_web_sm")
    out.print("\nUse it (or serve the folder over HTTP and use http://HOST/simple/); the index "
              "holds only pipelines, so install spaCy from PyPI first:")
    out.print(f"  pip install 'spacy>=3.8,<3.9' && pip install --index-url {simple} {example}")
    out.print(f"  uv pip install 'spacy>=3.8,<3.9' && uv pip install --index-url {simple} {example}")
    out.print(f"  pip install --no-index --find-links {pub.path.as_uri()}/find-links.html "
              f"{example}   # the flat page")


def _install_catalog(args: argparse.Namespace, env: Mapping[str, str], err: Console,
                     projects: Sequence[str] | None = None):
    """The catalog for install/list: cached (24 h), else live (two API requests), else the
    last cached copy or the bundled snapshot; only ``projects`` made into objects if given."""
    from spacy_index import install as inst

    api_url, cache_dir = inst.paths_from_env(env, args.cache_dir)

    def fetch():
        from spacy_index.api import fetch_catalog
        from spacy_index.config import Settings
        from spacy_index.http import install_log_redaction

        install_log_redaction()
        settings = Settings.from_env(env)
        return fetch_catalog(api_url=settings.api_url, token=settings.token,
                             state_dir=cache_dir / "github", max_wait=10, retries=1,
                             ca_bundle=args.ca_bundle).catalog

    catalog, how = inst.cached_catalog(cache_dir, fetch=fetch, max_age=inst.CATALOG_MAX_AGE,
                                       refresh=getattr(args, "refresh", False), api_url=api_url,
                                       projects=projects)
    return catalog, how, cache_dir


def _install(args: argparse.Namespace, env: Mapping[str, str], out: Console, err: Console) -> int:
    """`install` and `download`: choose, then for each pipeline not already there, the
    verified wheel (cache, index folder or download) and one installer run with its hash."""
    from spacy_index import install as inst

    def say(message: str) -> None:
        err.print(message, markup=False, highlight=False)

    extra, no_deps = inst.split_passthrough(args.passthrough, args.no_deps)
    direct = getattr(args, "direct", False)
    if getattr(args, "sdist", False):
        raise UsageError("--sdist: spacy-index installs wheels, with their hash pinned; drop "
                         "--sdist")
    if getattr(args, "url", None):
        raise UsageError("--url: spacy-index takes files from its catalog or from --index "
                         "URL|PATH (a serve URL, an index or a mirror folder)")
    if direct:
        for m in args.models:
            if inst.split_model(m)[1] is None:
                raise UsageError(f"--direct needs NAME-VERSION (e.g. {m}-3.8.0), got {m!r}")
    force = args.force or direct
    api_url, cache_dir = inst.paths_from_env(env, args.cache_dir)
    environment = inst.probe(args.python, cache_dir)
    spacy = (None if force and args.spacy == "auto" and environment.spacy is None
             else inst.resolve_spacy(args.spacy, environment))
    index = inst.parse_index(args.index) if args.index else None

    def choose_all(catalog):
        return [inst.choose(catalog, m, spacy, pre=args.pre, force=force) for m in args.models]

    def already(c) -> bool:
        return environment.version_of(c.dist.project) == c.dist.version

    choices = None
    how = ""
    if index is not None:
        try:  # spaCy requirements by filename; else the index's PEP 658 metadata says them
            catalog, how, _ = _install_catalog(args, env, err, projects=args.models)
        except UpstreamUnreachable:
            from spacy_index.catalog import Catalog

            catalog = Catalog.from_distributions([])
        catalog = _index_catalog(args, index, catalog)
        choices = choose_all(catalog)
        how = f"index {index.text}"
    elif not args.refresh:
        # the cached catalog, whatever its age, decides when nothing is to be done: an
        # install that changes nothing costs no network (and imports no HTTP library)
        loaded = inst.load_cached_catalog(cache_dir, api_url, projects=args.models)
        if loaded is not None:
            try:
                first = choose_all(loaded[0])
            except SpacyIndexError:
                first = None  # said again below, from the fresh or complete catalog
            if first is not None and (loaded[2] or all(already(c) for c in first)):
                choices, how = first, loaded[1]
    if choices is None:
        catalog, how, _ = _install_catalog(args, env, err, projects=args.models)
        try:
            choices = choose_all(catalog)
        except inst.NoSuchModel:  # "did you mean" needs every name
            catalog, how, _ = _install_catalog(args, env, err)
            choices = choose_all(catalog)
    if args.dry_run:
        for c in choices:
            out.print(c.requirement_line, markup=False, highlight=False)
        return 0
    installer = None
    done: list[str] = []
    try:
        for c in choices:
            d = c.dist
            if already(c):
                say(f"{d.project} {d.version} is already installed for {environment.python}"
                    + (f" (spaCy {spacy})" if spacy is not None else "") + "; nothing to do")
                continue
            if c.forced:
                say(f"warning: {d.filename} is not for spaCy {spacy} (it requires spacy"
                    f"{d.spacy_requirement or ' (unknown)'}); installing it as --force asks")
            path, downloaded = inst.download(c, cache_dir, progress=err.is_terminal,
                                             ca_bundle=args.ca_bundle, say=say, anywhere=True)
            say(f"{d.filename}: {'downloaded and verified' if downloaded else 'from the cache'} "
                f"(sha256 {d.sha256[:12]}…, {how})")
            if installer is None:
                installer = inst.pick_installer(args.installer, environment, extra, env)
            report = inst.install_wheel(c, path, environment, installer, extra, cache_dir,
                                        no_deps=no_deps, index=index, force=force)
            say(f"{d.filename}: installed with {installer.how} in {report.seconds:.2f} s, "
                "sha256 pinned")
            if report.installed_requirements:
                where = index.text if index is not None else f"{installer.name}'s default index"
                say(f"{d.filename}: installed its requirements "
                    f"{', '.join(report.installed_requirements)} from {where} in "
                    f"{report.requirements_seconds:.2f} s")
            elif report.skipped_requirements:
                say(f"{d.filename}: --no-deps: not installed: "
                    f"{', '.join(report.skipped_requirements)}")
            done.append(f"{d.project} {d.version}")
    except KeyboardInterrupt as e:
        message = getattr(e, "message", None) or _INTERRUPTED["install"]
        if done:
            message += f" (installed before: {', '.join(done)})"
        say(message)
        return 130
    return 0


def _index_catalog(args: argparse.Namespace, index, known):
    """The requested projects as ``--index`` lists them (a folder needs no network)."""
    from spacy_index import install as inst

    if index.folder is not None:
        return inst.catalog_from_index(index, args.models, known)
    import httpx

    from spacy_index.http import install_log_redaction, make_client

    install_log_redaction()
    with make_client(timeout=httpx.Timeout(30.0, connect=10.0),
                     ca_bundle=getattr(args, "ca_bundle", None)) as client:
        return inst.catalog_from_index(index, args.models, known, client)


def _list(args: argparse.Namespace, env: Mapping[str, str], out: Console, err: Console) -> int:
    import json as _json

    from spacy_index.install import Environment, resolve_spacy

    catalog, how, _ = _install_catalog(args, env, err)
    spacy = resolve_spacy(args.spacy, Environment("", None, {}, False)) if args.spacy else None
    rows = []
    for project in catalog.projects.values():
        wheels = [d for d in project.files if d.kind == "wheel"]
        if spacy is not None:
            wheels = [d for d in wheels if spacy.admits(d)]
        stable = [d for d in wheels if not d.version.is_prerelease] or wheels
        if not stable:
            continue
        newest = max(stable, key=lambda d: d.sort_key())
        rows.append({
            "name": project.display_name,
            "version": str(newest.version),
            "versions": sorted({str(d.version) for d in stable}, key=Version),
            "size": newest.size,
            "spacy": str(newest.spacy_requirement) if newest.spacy_requirement else None,
            "sha256": newest.sha256,
        })
    if not rows and spacy is not None:
        from spacy_index.install import _minor_series

        wheels = [d for p in catalog.projects.values() for d in p.files if d.kind == "wheel"]
        have = _minor_series(wheels)
        raise UsageError(f"no pipeline runs on spaCy {spacy}; pipelines exist for spaCy "
                         f"{', '.join(have) if have else 'no known version'}")
    if args.json:
        out.print_json(_json.dumps(rows))
        return 0
    from rich.table import Table

    table = Table(title=f"spaCy pipelines ({how})" + (f", for spaCy {spacy}" if spacy else ""))
    for col in ("pipeline", "version", "size", "spaCy", "versions"):
        table.add_column(col)
    for r in rows:
        size = f"{r['size'] / 1e6:,.0f} MB" if r["size"] else "—"
        table.add_row(r["name"], r["version"], size, r["spacy"] or "?", str(len(r["versions"])))
    out.print(table)
    return 0


def _serve(args: argparse.Namespace, env: Mapping[str, str], err: Console) -> int:
    import logging

    import uvicorn

    from spacy_index.http import redact_url
    from spacy_index.server.config import ACCEPT_BATCH, load_config
    from spacy_index.server.limits import Guard
    from spacy_index.server.logbuffer import BufferedStreamHandler
    from spacy_index.server.protocol import protocol_class
    from spacy_index.server.wiring import build_server, create_app

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag} {str(path)!r}: no such file")
    settings, cache_dir = _settings(args, env)
    config = load_config(args.config, env, upstream=args.upstream, ca_bundle=args.ca_bundle)
    if args.cache_max_size:
        from dataclasses import replace

        from spacy_index.server.config import parse_size

        config = replace(config, cache=replace(
            config.cache, max_size=parse_size(args.cache_max_size, "--cache-max-size")))
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # one access-log line per request: the HTTP libraries' own request lines only at debug
    for noisy in ("httpx", "httpcore", "hpack", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    limits = config.limits
    guard = Guard(limits, limits.effective_connections(_raise_open_file_limit()))
    uv_config = uvicorn.Config(
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
    sock = _listen(args.host, args.port)  # before saying so: a busy port is one line
    try:
        server = build_server(config, cache_dir=cache_dir, api_url=settings.api_url,
                              token=settings.token, s3_cache=args.cache,
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
        scheme = "https" if args.tls_cert else "http"
        err.print(f"spacy-index serve: {scheme}://{args.host}:{sock.getsockname()[1]}/simple/  "
                  f"(cache {cache_dir}; upstream {redact_url(config.upstream)})")
        for source in config.sources:
            where = source.display_url or source.repo or (str(source.path) if source.path else "")
            err.print(f"  {source.name}: {source.kind} {where} <- {', '.join(source.projects[:4])}"
                      + (" …" if len(source.projects) > 4 else ""))
        # After uvicorn.Config.load, which re-configures logging (closing existing handlers):
        # the access log is written in batches, at most 1 s late, not one write(2) per request.
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
        # Big pages, renders and zip directories are parsed in worker threads. While one runs,
        # the event loop takes the GIL back after each of its system calls only when the
        # switch interval (5 ms) is up: a /health answer (a dozen of them) took 60 ms; with
        # 1 ms, 10 ms. Set here, for the serve process only, never on import or create_app.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        _GuardedServer(uv_config, guard, sock).run(sockets=[sock])
    finally:
        sock.close()
    return 0


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


def _snapshot(args: argparse.Namespace, env: Mapping[str, str], err: Console) -> int:
    from spacy_index.api import snapshot_from_live

    settings, cache_dir = _settings(args, env)
    snap, stats = snapshot_from_live(
        args.repo, api_url=settings.api_url, token=settings.token, state_dir=cache_dir,
        max_wait=args.max_wait, notify=_notifier(err, False), ca_bundle=args.ca_bundle,
        date=datetime.now(timezone.utc).date().isoformat(),
    )
    from spacy_index.sources import snapshot as snapshots

    snapshots.write(snap, args.out)
    err.print(
        f"wrote {args.out}: {len(snap.releases):,} releases, {len(snap.metas):,} meta files, "
        f"dated {snap.date}; {stats.requests:,} requests",
        markup=False,
    )
    return 0

