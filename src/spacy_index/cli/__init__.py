"""Command line: parse arguments, call the library, map expected errors to one line + exit code.

``main(argv, env)`` returns the exit code so tests call it directly. Each command's module
is imported only when that command runs: ``--version`` and an install that changes nothing
load none of the others.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from spacy_index.cli.console import INTERRUPTED, LazyConsole, error_line
from spacy_index.errors import SpacyIndexError, UsageError

#: commands that attach the HTTP log redaction themselves, only once they use HTTP (an
#: install of what is already there must not import an HTTP library)
_LAZY_HTTP = frozenset({"install", "download", "list"})


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the CLI; returns the exit code. Expected errors print one line, no traceback."""
    env = os.environ if env is None else env
    # markup off: no message may be read as rich markup ("spacy-index[s3]" stays as it is)
    err = LazyConsole(stderr=True, highlight=False, soft_wrap=True, markup=False)
    out = LazyConsole(highlight=False, soft_wrap=True, markup=False)
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    if isinstance(args, int):
        return args
    if args.command not in _LAZY_HTTP:
        from spacy_index.http import install_log_redaction

        install_log_redaction()
    try:
        return _dispatch(args, env, out, err)
    except SpacyIndexError as e:
        error_line(err, str(e))
        return e.exit_code
    except KeyboardInterrupt:
        err.print(INTERRUPTED.get(args.command, "interrupted"), markup=False, highlight=False)
        return 130
    except OSError as e:
        if args.debug:
            raise
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        error_line(err, f"{e.strerror or e}{where}; check the path and its permissions "
                        "(SPACY_INDEX_CACHE_DIR or --cache-dir moves the cache)")
        return 1
    except Exception as e:  # an unexpected error: one line, the traceback only with --debug
        if args.debug:
            raise
        error_line(err, f"unexpected {type(e).__name__}: {e}; rerun with --debug for the "
                        "traceback and report it")
        return 70


def _parse(argv: list[str]) -> argparse.Namespace | int:
    """The parsed arguments (what follows ``--`` and, for download, what argparse does not
    know in ``passthrough``), or the exit code argparse chose (``--help``, an error)."""
    from spacy_index.cli.parser import build_parser

    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    try:
        parser = build_parser()
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
    return args


def _dispatch(args: argparse.Namespace, env: Mapping[str, str], out: LazyConsole,
              err: LazyConsole) -> int:
    if args.command in ("build", "snapshot"):
        from spacy_index.cli.build import run_build, run_snapshot

        return run_build(args, env, out, err) if args.command == "build" else run_snapshot(args, env, err)
    if args.command == "serve":
        from spacy_index.cli.serve import run_serve

        return run_serve(args, env, err)
    if args.command in ("install", "download", "list"):
        from spacy_index.cli.install import run_install, run_list

        return (run_list if args.command == "list" else run_install)(args, env, out, err)
    if args.command == "cache":
        from spacy_index.cli.cache import run_cache

        return run_cache(args, env, out, err)
    raise UsageError(f"unknown command {args.command!r}")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__ = ["main", "run"]
