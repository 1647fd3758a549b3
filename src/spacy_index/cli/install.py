"""``install``, ``download`` and ``list``: the catalog (cached, live, or an ``--index``), the
choice for the target's spaCy, then each wheel verified and installed with its hash pinned.

Only what an install that changes nothing needs is imported before it is known that
something must change: no HTTP library, no rich, no live source.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spacy_index import config
from spacy_index.cli.console import INTERRUPTED
from spacy_index.errors import NoSuchModel, SpacyIndexError, UpstreamUnreachable, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from spacy_index.catalog import Catalog
    from spacy_index.install.environment import Environment
    from spacy_index.install.index import IndexLocation
    from spacy_index.install.installer import Installer
    from spacy_index.install.target import Choice, SpacyTarget


def install_catalog(args: argparse.Namespace, env: Mapping[str, str], err: Console,
                    projects: Sequence[str] | None = None):
    """The catalog for install/list: cached (24 h), else live (two API requests), else the
    last cached copy or the bundled snapshot; only ``projects`` made into objects if given."""
    from spacy_index.install.catalog_cache import CATALOG_MAX_AGE, cached_catalog

    settings, cache_dir = config.load(env, args.cache_dir)

    def fetch():
        from spacy_index.api import fetch_catalog
        from spacy_index.http import install_log_redaction

        install_log_redaction()
        return fetch_catalog(api_url=settings.api_url, token=settings.token,
                             state_dir=cache_dir / "github", max_wait=10, retries=1,
                             ca_bundle=args.ca_bundle).catalog

    def bundled():
        from spacy_index.api import fetch_catalog

        return fetch_catalog(offline=True).catalog

    catalog, how = cached_catalog(cache_dir, fetch=fetch, bundled=bundled,
                                  max_age=CATALOG_MAX_AGE,
                                  refresh=getattr(args, "refresh", False),
                                  api_key=settings.api_key, projects=projects)
    return catalog, how, cache_dir


@dataclass
class _Job:
    """One `install` or `download` run: what was asked, for which environment."""

    args: argparse.Namespace
    env: Mapping[str, str]
    err: Console
    environment: Environment
    spacy: SpacyTarget | None
    force: bool
    index: IndexLocation | None
    cache_dir: Path
    api_key: str
    extra: list[str]
    no_deps: bool

    def say(self, message: str) -> None:
        self.err.print(message, markup=False, highlight=False)

    def choose_all(self, catalog: Catalog) -> list[Choice]:
        from spacy_index.install.target import choose

        return [choose(catalog, m, self.spacy, pre=self.args.pre, force=self.force)
                for m in self.args.models]

    def already(self, c: Choice) -> bool:
        return self.environment.version_of(c.dist.project) == c.dist.version


def run_install(args: argparse.Namespace, env: Mapping[str, str], out: Console,
                err: Console) -> int:
    """`install` and `download`: choose, then for each pipeline not already there, the
    verified wheel (cache, index folder or download) and one installer run with its hash."""
    from spacy_index.install.environment import probe
    from spacy_index.install.index import parse_index
    from spacy_index.install.target import resolve_spacy

    extra, no_deps = _split_passthrough(args.passthrough, args.no_deps)
    direct = _check_download_args(args)
    force = args.force or direct
    settings, cache_dir = config.load(env, args.cache_dir)
    environment = probe(args.python, cache_dir)
    spacy = (None if force and args.spacy == "auto" and environment.spacy is None
             else resolve_spacy(args.spacy, environment))
    index = parse_index(args.index) if args.index else None
    job = _Job(args, env, err, environment, spacy, force, index, cache_dir, settings.api_key,
               extra, no_deps)
    choices, how = _choices(job)
    if args.dry_run:
        for c in choices:
            out.print(c.requirement_line, markup=False, highlight=False)
        return 0
    return _install_each(job, choices, how)


def _split_passthrough(args: Sequence[str], no_deps: bool) -> tuple[list[str], bool]:
    """The installer arguments without ``--no-deps``, which becomes the flag itself: the
    pipeline is always installed alone first, and ``--no-deps`` then skips its requirements."""
    rest = [a for a in args if a != "--no-deps"]
    return rest, no_deps or len(rest) != len(args)


def _check_download_args(args: argparse.Namespace) -> bool:
    """`download`'s spaCy-shaped options: those spacy-index refuses, and whether --direct."""
    from spacy_index.install.target import split_model

    direct = getattr(args, "direct", False)
    if getattr(args, "sdist", False):
        raise UsageError("--sdist: spacy-index installs wheels, with their hash pinned; drop "
                         "--sdist")
    if getattr(args, "url", None):
        raise UsageError("--url: spacy-index takes files from its catalog or from --index "
                         "URL|PATH (a serve URL, an index or a mirror folder)")
    if direct:
        for m in args.models:
            if split_model(m)[1] is None:
                raise UsageError(f"--direct needs NAME-VERSION (e.g. {m}-3.8.0), got {m!r}")
    return direct


def _choices(job: _Job) -> tuple[list[Choice], str]:
    """The choice for every requested pipeline, and which catalog it came from."""
    args = job.args
    if job.index is not None:
        try:  # spaCy requirements by filename; else the index's PEP 658 metadata says them
            catalog, how, _ = install_catalog(args, job.env, job.err, projects=args.models)
        except UpstreamUnreachable:
            from spacy_index.catalog import Catalog

            catalog = Catalog.from_distributions([])
        catalog = _index_catalog(args, job.index, catalog)
        return job.choose_all(catalog), f"index {job.index.text}"
    if not args.refresh:
        settled = _settled_by_cache(job)
        if settled is not None:
            return settled
    catalog, how, _ = install_catalog(args, job.env, job.err, projects=args.models)
    try:
        return job.choose_all(catalog), how
    except NoSuchModel:  # "did you mean" needs every name
        catalog, how, _ = install_catalog(args, job.env, job.err)
        return job.choose_all(catalog), how


def _settled_by_cache(job: _Job) -> tuple[list[Choice], str] | None:
    """The cached catalog, whatever its age, decides when nothing is to be done: an install
    that changes nothing costs no network (and imports no HTTP library)."""
    from spacy_index.install.catalog_cache import load_cached_catalog

    loaded = load_cached_catalog(job.cache_dir, job.api_key, projects=job.args.models)
    if loaded is None:
        return None
    try:
        first = job.choose_all(loaded[0])
    except SpacyIndexError:
        return None  # said again by the caller, from the fresh or complete catalog
    if loaded[2] or all(job.already(c) for c in first):
        return first, loaded[1]
    return None


def _install_each(job: _Job, choices: list[Choice], how: str) -> int:
    installer: Installer | None = None
    done: list[str] = []
    try:
        for c in choices:
            d = c.dist
            if job.already(c):
                job.say(f"{d.project} {d.version} is already installed for "
                        f"{job.environment.python}"
                        + (f" (spaCy {job.spacy})" if job.spacy is not None else "")
                        + "; nothing to do")
                continue
            if c.forced:
                job.say(f"warning: {d.filename} is not for spaCy {job.spacy} (it requires spacy"
                        f"{d.spacy_requirement or ' (unknown)'}); installing it as --force asks")
            installer = _install_one(job, c, how, installer)
            done.append(f"{d.project} {d.version}")
    except KeyboardInterrupt as e:
        message = getattr(e, "message", None) or INTERRUPTED["install"]
        if done:
            message += f" (installed before: {', '.join(done)})"
        job.say(message)
        return 130
    return 0


def _install_one(job: _Job, c: Choice, how: str, installer: Installer | None) -> Installer:
    """The verified wheel of ``c`` installed; the installer, picked at the first install."""
    from spacy_index.install.fetch import download
    from spacy_index.install.installer import install_wheel, pick_installer

    d = c.dist
    assert d.sha256 is not None
    path, downloaded = download(c, job.cache_dir, progress=job.err.is_terminal,
                                ca_bundle=job.args.ca_bundle, say=job.say, anywhere=True)
    job.say(f"{d.filename}: {'downloaded and verified' if downloaded else 'from the cache'} "
            f"(sha256 {d.sha256[:12]}…, {how})")
    if installer is None:
        installer = pick_installer(job.args.installer, job.environment, job.extra, job.env)
    report = install_wheel(c, path, job.environment, installer, job.extra, job.cache_dir,
                           no_deps=job.no_deps, index=job.index, force=job.force)
    job.say(f"{d.filename}: installed with {installer.how} in {report.seconds:.2f} s, "
            "sha256 pinned")
    if report.installed_requirements:
        where = job.index.text if job.index is not None else f"{installer.name}'s default index"
        job.say(f"{d.filename}: installed its requirements "
                f"{', '.join(report.installed_requirements)} from {where} in "
                f"{report.requirements_seconds:.2f} s")
    elif report.skipped_requirements:
        job.say(f"{d.filename}: --no-deps: not installed: "
                f"{', '.join(report.skipped_requirements)}")
    return installer


def _index_catalog(args: argparse.Namespace, index: IndexLocation, known: Catalog) -> Catalog:
    """The requested projects as ``--index`` lists them (a folder needs no network)."""
    from spacy_index.install.index import catalog_from_index

    if index.folder is not None:
        return catalog_from_index(index, args.models, known)
    import httpx

    from spacy_index.http import install_log_redaction, make_client

    install_log_redaction()
    with make_client(timeout=httpx.Timeout(30.0, connect=10.0),
                     ca_bundle=getattr(args, "ca_bundle", None)) as client:
        return catalog_from_index(index, args.models, known, client)


def run_list(args: argparse.Namespace, env: Mapping[str, str], out: Console, err: Console) -> int:
    import json as _json

    from packaging.version import Version

    from spacy_index.install.environment import Environment
    from spacy_index.install.target import resolve_spacy

    catalog, how, _ = install_catalog(args, env, err)
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
        from spacy_index.install.target import minor_series

        wheels = [d for p in catalog.projects.values() for d in p.files if d.kind == "wheel"]
        have = minor_series(wheels)
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

