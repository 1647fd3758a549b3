"""The library API. The CLI is a thin layer over these functions.

>>> from spacy_index import fetch_catalog, render_find_links
>>> result = fetch_catalog(offline=True)           # the bundled snapshot, no network
>>> [d.filename for d in result.catalog.files][:1]  # doctest: +SKIP
['ca_core_news_lg-3.1.0-py3-none-any.whl']
>>> html = render_find_links(result.catalog)        # the complete, hashed find-links page

``fetch_catalog`` is the proper version of the well-known ``get_spacy_model_links()`` (it
reads every release, not one page, and attaches hashes) and ``render_find_links`` that of
``spacy_model_links_to_html()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.catalog import Catalog, assemble

if TYPE_CHECKING:
    from spacy_index.mirror import MirrorResult
from spacy_index.errors import SnapshotError
from spacy_index.http import (
    ConditionalStore,
    OriginBearerAuth,
    StoredResponse,
    make_client,
    redact_url,
)
from spacy_index.model import Distribution, ModelMeta, Release
from spacy_index.publish import PublishReport, publish_folder
from spacy_index.render import html, pep691
from spacy_index.render.tree import index_files, mirror_links
from spacy_index.sources import snapshot as snapshots
from spacy_index.sources.github import DEFAULT_API_URL, GitHubReleases, RequestStats
from spacy_index.sources.spacy_models import SPACY_MODELS_REPO, parse_archive

Notify = Callable[[str], None]
_CHECKED_KEY = "spacy-index:meta-checked-tags"


def _quiet(_: str) -> None:
    pass


@dataclass
class FetchResult:
    """A catalog plus what it cost to get it."""

    catalog: Catalog
    mode: str
    stats: RequestStats = field(default_factory=RequestStats)
    capped: bool = False


@dataclass
class BuildResult:
    fetch: FetchResult
    catalog: Catalog
    publish: PublishReport
    mirror: MirrorResult | None = None


def uses_spacy_models_meta(repo: str) -> bool:
    return repo.lower() == SPACY_MODELS_REPO


def fetch_catalog(
    repo: str = SPACY_MODELS_REPO,
    *,
    api_url: str = DEFAULT_API_URL,
    token: str | None = None,
    offline: bool = False,
    snapshot: Path | None = None,
    use_snapshot: bool = True,
    state_dir: Path | None = None,
    max_wait: float = 60.0,
    secondary_wait: float = 60.0,
    retries: int = 4,
    client: httpx.Client | None = None,
    notify: Notify = _quiet,
    ca_bundle: str | None = None,
) -> FetchResult:
    """Every distribution of ``repo``'s releases, with sha256 and requirements where known.

    - ``offline``: only the snapshot (``snapshot`` or the bundled one); no network at all.
    - online with an applicable snapshot: the snapshot plus a delta (releases page 1 and the
      tag refs, i.e. two requests when nothing is new).
    - online otherwise: the complete listing, past GitHub's 1,000-release cap via tag refs.

    ``state_dir`` keeps the ETag store; without it ETags live only for this call.
    """
    api_url = api_url.rstrip("/")
    snap = _load_snapshot(repo, api_url, offline=offline, path=snapshot, wanted=use_snapshot)
    host = redact_url(api_url)
    if offline:
        assert snap is not None
        dists, warnings = assemble(snap.releases, snap.metas)
        dists = with_meta(dists, snap.metas)
        catalog = Catalog.from_distributions(
            dists, source=f"{snap.repo} via {snap.api_url} (snapshot)", snapshot_date=snap.date,
            warnings=tuple(warnings),
        )
        return FetchResult(catalog, mode=f"offline, snapshot of {snap.date}")

    store = ConditionalStore(state_dir / "github.sqlite" if state_dir else None, notify)
    own_client = client is None
    if client is None:
        client = make_client(auth=OriginBearerAuth(token, api_url) if token else None,
                             ca_bundle=ca_bundle)
    try:
        gh = GitHubReleases(
            repo, client=client, store=store, api_url=api_url, authenticated=bool(token),
            max_wait=max_wait, secondary_wait=secondary_wait, notify=notify, retries=retries,
        )
        if snap is not None:
            page, _ = gh.list_pages(max_pages=1)
            tags = gh.tags()
            releases = snapshots.merge_releases(snap.releases, page)
            tagset = set(tags)
            releases = {t: r for t, r in releases.items() if t in tagset}
            without = gh.fill_from_tags(releases, tags)
            capped = False
            mode = f"snapshot of {snap.date} + live delta"
        else:
            listing = gh.listing()
            releases, without, capped = (
                listing.releases, listing.tags_without_release, listing.capped,
            )
            mode = "full listing" + (" (past the 1,000-release cap via tag refs)" if capped else "")
        metas: dict[str, ModelMeta] = {}
        if uses_spacy_models_meta(repo):
            metas = _spacy_models_metas(gh, store, releases.values(), snap)
        dists, warnings = assemble(releases.values(), metas)
        dists = with_meta(dists, metas)
        catalog = Catalog.from_distributions(
            dists,
            source=f"{repo} via {host}",
            snapshot_date=snap.date if snap else None,
            warnings=tuple(warnings),
            tags_without_release=tuple(without),
        )
        return FetchResult(catalog, mode=mode, stats=gh.stats, capped=capped)
    finally:
        if own_client:
            client.close()
        store.close()


def with_meta(dists: list[Distribution], metas: Mapping[str, ModelMeta]) -> list[Distribution]:
    """Each file with its release's meta file (description, licence, approximate size, for
    the catalogue page), matched by project and version as spacy-models' tags name them."""
    by_release: dict[tuple[str, Version], ModelMeta] = {}
    for meta in metas.values():
        try:
            by_release[(canonicalize_name(meta.project), Version(meta.version))] = meta
        except (InvalidVersion, ValueError):
            continue
    if not by_release:
        return dists
    return [
        replace(d, meta=found) if (found := by_release.get((d.project, d.version))) else d
        for d in dists
    ]


def _load_snapshot(
    repo: str, api_url: str, *, offline: bool, path: Path | None, wanted: bool
) -> snapshots.Snapshot | None:
    explicit = offline or path is not None
    if not (explicit or wanted):
        return None
    try:
        snap = snapshots.load(path)
    except SnapshotError:
        if explicit:
            raise
        return None
    if snap.applies_to(api_url, repo):
        return snap
    if explicit:
        raise SnapshotError(
            f"the snapshot describes {snap.repo} on {snap.api_url}, not {repo} on "
            f"{redact_url(api_url)}; its URLs and hashes cannot be used for another host or "
            "repository (drop --offline/--snapshot, or regenerate one with "
            "`spacy-index snapshot`)"
        )
    return None


def _spacy_models_metas(
    gh: GitHubReleases,
    store: ConditionalStore,
    releases: Sequence[Release] | object,
    snap: snapshots.Snapshot | None,
) -> dict[str, ModelMeta]:
    """Meta checksums for every release, fetching the repo archive only when some release
    has not been checked against it yet (so warm runs and snapshot runs skip it)."""
    all_releases = list(releases)  # type: ignore[call-overload]
    tags = {r.tag for r in all_releases}
    metas: dict[str, ModelMeta] = dict(snap.metas) if snap else {}
    checked: set[str] = {r.tag for r in snap.releases} if snap else set()
    archive_url = f"{gh.api_url}/repos/{gh.repo}/tarball"
    stored = store.get(_CHECKED_KEY + " " + archive_url, False)
    cached_archive = store.get(archive_url, gh.authenticated)
    if stored and cached_archive:
        checked |= set(json.loads(stored.body))
        metas.update(parse_archive(cached_archive.body)[0])
    if tags - checked:
        gh.notify(f"reading checksums of {len(tags - checked)} release(s) from the repository")
        fresh, _compat = parse_archive(gh.archive())
        metas.update(fresh)
        store.put(
            _CHECKED_KEY + " " + archive_url,
            False,
            StoredResponse("-", json.dumps(sorted(tags | checked)).encode()),
        )
    return metas


def render_index_files(catalog: Catalog) -> dict[str, bytes]:
    """The whole static index as ``{relative path: bytes}`` (deterministic)."""
    return index_files(catalog)


def render_find_links(catalog: Catalog) -> str:
    """The flat find-links page: every file, hashed where the hash is known."""
    files = [pep691.file_dict(d) for d in catalog.files]
    return html.find_links_page(files)


def build_index(
    out: Path,
    catalog: Catalog,
    *,
    only: Sequence[str] = (),
    spacy: Version | None = None,
    wheels_only: bool = False,
    allow_shrink: bool = False,
    fetch: FetchResult | None = None,
    mirror_cache: Path | None = None,
    base_url: str | None = None,
    notify: Notify = _quiet,
    s3_endpoint_url: str | None = None,
    ca_bundle: str | None = None,
    mirror_progress: bool = False,
) -> BuildResult:
    """Filter ``catalog`` and publish it to ``out`` atomically.

    With ``mirror_cache``, every selected file is downloaded (once, verified) through that
    cache and published under ``files/`` with ``.metadata`` sidecars and relative links;
    ``mirror_progress`` shows a rich progress display on stderr (for a terminal), else each
    finished file is one line through ``notify``.
    """
    selected = catalog.filter(only=only, spacy=spacy, wheels_only=wheels_only)
    extra: dict[str, Path | bytes] = {}
    mirrored = None
    if mirror_cache is not None:
        from spacy_index.mirror import mirror

        mirrored = mirror(selected, mirror_cache, notify=notify, ca_bundle=ca_bundle,
                          progress=mirror_progress)
        selected = mirrored.catalog
        extra = mirrored.files
        for warning in mirrored.warnings:
            notify(f"warning: {warning}")
        tree: dict[str, Path | bytes] = {**index_files(selected, mirror_links(base_url)), **extra}
    else:
        tree = dict(index_files(selected))
    if str(out).startswith("s3://"):
        from spacy_index.publish_s3 import parse_s3_url, publish_s3

        location = parse_s3_url(str(out))
        s3 = publish_s3(tree, location, endpoint_url=s3_endpoint_url, allow_shrink=allow_shrink)
        report = PublishReport(
            path=str(location), changed=s3.changed, files_written=s3.uploaded_objects,  # type: ignore[arg-type]
            bytes_written=s3.uploaded_bytes, files_changed=s3.uploaded_objects + s3.deleted_objects,
        )
    else:
        report = publish_folder(tree, Path(out), allow_shrink=allow_shrink)
    return BuildResult(fetch=fetch or FetchResult(catalog, mode="given"), catalog=selected,
                       publish=report, mirror=mirrored)


def snapshot_from_live(
    repo: str = SPACY_MODELS_REPO,
    *,
    date: str,
    api_url: str = DEFAULT_API_URL,
    token: str | None = None,
    state_dir: Path | None = None,
    max_wait: float = 60.0,
    client: httpx.Client | None = None,
    notify: Notify = _quiet,
    ca_bundle: str | None = None,
) -> tuple[snapshots.Snapshot, RequestStats]:
    """Read every release (and spacy-models' meta files) live into a new snapshot."""
    api_url = api_url.rstrip("/")
    store = ConditionalStore(state_dir / "github.sqlite" if state_dir else None, notify)
    own_client = client is None
    if client is None:
        client = make_client(auth=OriginBearerAuth(token, api_url) if token else None,
                             ca_bundle=ca_bundle)
    try:
        gh = GitHubReleases(
            repo, client=client, store=store, api_url=api_url, authenticated=bool(token),
            max_wait=max_wait, notify=notify,
        )
        listing = gh.listing()
        metas = parse_archive(gh.archive())[0] if uses_spacy_models_meta(repo) else {}
        snap = snapshots.Snapshot(
            api_url=api_url, repo=repo, date=date,
            releases=tuple(listing.releases.values()), metas=metas,
        )
        return snap, gh.stats
    finally:
        if own_client:
            client.close()
        store.close()
