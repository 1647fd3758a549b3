"""``spacy-index cache stats | prune | verify | rm | warm``: the shared file cache, by hand.

The same folder ``serve``, ``install`` and ``build --mirror`` use (``--cache-dir``, else
``SPACY_INDEX_CACHE_DIR``, else the user cache folder); safe while ``serve`` runs (see
:mod:`spacy_index.cache.index`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping

from rich.console import Console

from spacy_index.errors import SpacyIndexError, UsageError


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return str(size)


def run_cache(args: argparse.Namespace, env: Mapping[str, str], out: Console, err: Console) -> int:
    from spacy_index.cache.index import CacheIndex
    from spacy_index.config import Settings
    from spacy_index.server.config import load_config, parse_size

    settings = Settings.from_env(env)
    root = args.cache_dir or settings.resolved_cache_dir()
    config = load_config(args.config, env) if args.config else None
    if args.action in ("rm", "warm") and not args.names:
        raise UsageError(f"cache {args.action} needs at least one NAME")
    if args.action not in ("rm", "warm") and args.names:
        raise UsageError(f"cache {args.action} takes no NAME")
    index = CacheIndex(root)
    try:
        if args.action == "stats":
            return _stats(index, out, as_json=args.json)
        if args.action == "prune":
            limit = args.max_size or (config.cache.max_size if config else None)
            if limit is None:
                raise UsageError("cache prune needs --max-size SIZE or a --config with [cache] max_size")
            max_size = parse_size(limit, "--max-size") if isinstance(limit, str) else limit
            index.scan()
            pin = config.cache.pin if config else ()
            removed = index.evict(max_size, pin=pin)
            out.print(f"removed {len(removed):,} entries ({_human(sum(e.size for e in removed))}); "
                      f"the cache now holds {_human(index.total())} (bound {_human(max_size)})")
            return 0
        if args.action == "verify":
            checked, bad = index.verify(notify=lambda m: err.print(m))
            out.print(f"verified {checked:,} files; removed {len(bad):,} whose content was wrong")
            return 1 if bad else 0
        if args.action == "rm":
            from spacy_index.model import name_matches

            index.scan()
            gone = [e for e in index.entries() if e.project and name_matches(e.project, args.names)]
            for e in gone:
                index.remove(e)
            out.print(f"removed {len(gone):,} entries ({_human(sum(e.size for e in gone))}) of "
                      f"{', '.join(args.names)}")
            return 0
        return _warm(args, env, index, out, err)
    finally:
        index.close()


def _stats(index, out: Console, *, as_json: bool) -> int:
    from spacy_index.cache.index import FILES

    index.scan()
    entries = index.entries()
    if as_json:
        out.print_json(json.dumps([{"kind": e.kind, "sha256": e.sha256, "filename": e.filename,
                                    "project": e.project, "size": e.size, "hits": e.hits,
                                    "last_used": e.last_used} for e in entries]))
        return 0
    from rich.table import Table

    files = [e for e in entries if e.kind == FILES]
    table = Table(title=f"{index.root}: {len(files):,} files, {len(entries) - len(files):,} "
                        f"metadata, {_human(sum(e.size for e in entries))}")
    for col in ("file", "project", "size", "hits", "last used"):
        table.add_column(col)
    for e in sorted(files, key=lambda e: -e.last_used)[:50]:
        table.add_row(e.filename or e.sha256[:16], e.project or "?", _human(e.size), str(e.hits),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)))
    out.print(table)
    return 0


def _warm(args: argparse.Namespace, env: Mapping[str, str], index, out: Console, err: Console) -> int:
    """Download the chosen pipelines into the cache (verified, resumable, once): the newest
    wheel of each (``NAME==VER`` pins it; ``--spacy X.Y``: the newest for that spaCy)."""
    from spacy_index import install as inst
    from spacy_index.cache.index import FILES
    from spacy_index.cli.install import install_catalog as _install_catalog

    catalog, _how, _ = _install_catalog(args, env, err, projects=args.names)
    target = (inst.resolve_spacy(args.spacy, inst.Environment("", None, {}, False))
              if args.spacy else None)
    failed = 0
    for name in args.names:
        try:
            choice = inst.choose(catalog, name, target)
            d = choice.dist
            path, downloaded = inst.download(choice, index.root, progress=err.is_terminal,
                                             ca_bundle=args.ca_bundle)
            index.stored(FILES, path.name, d.filename, d.project, path.stat().st_size)
            out.print(f"{'downloaded' if downloaded else 'already cached'}: {d.filename}")
        except SpacyIndexError as e:
            err.print(f"error: {e}")
            failed += 1
    return 1 if failed else 0


__all__ = ["run_cache"]
