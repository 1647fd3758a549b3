"""``build`` and ``snapshot``: a static index, or a catalog snapshot, from the live sources."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from spacy_index import config
from spacy_index.cli.console import notifier
from spacy_index.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console


def run_build(args: argparse.Namespace, env: Mapping[str, str], out: Console, err: Console) -> int:
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
    settings, cache_dir = config.load(env, args.cache_dir)
    notify = notifier(err, args.quiet)
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


def run_snapshot(args: argparse.Namespace, env: Mapping[str, str], err: Console) -> int:
    from spacy_index.api import snapshot_from_live

    settings, cache_dir = config.load(env, args.cache_dir)
    snap, stats = snapshot_from_live(
        args.repo, api_url=settings.api_url, token=settings.token, state_dir=cache_dir,
        max_wait=args.max_wait, notify=notifier(err, False), ca_bundle=args.ca_bundle,
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
