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

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from packaging.version import Version

from spacy_index.catalog import Catalog, assemble
from spacy_index.errors import SnapshotError
from spacy_index.http import ConditionalStore, OriginBearerAuth, make_client, redact_url
from spacy_index.model import ModelMeta, Release
from spacy_index.publish import PublishReport, parse_target, publish
from spacy_index.render import html, pep691
from spacy_index.render.tree import index_files, mirror_links
from spacy_index.sources import snapshot as snapshots
from spacy_index.sources.github import GitHubReleases, Listing
from spacy_index.sources.github_api import DEFAULT_API_URL, RequestStats
from spacy_index.sources.spacy_models import (
    SPACY_MODELS_REPO,
    parse_archive,
    release_metas,
    uses_spacy_models_meta,
    with_meta,
)

if TYPE_CHECKING:
    from spacy_index.mirror import MirrorResult
    from spacy_index.s3 import S3Location

Notify = Callable[[str], None]


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
    if offline:
        assert snap is not None
        catalog = _catalog(snap.releases, snap.metas,
                           source=f"{snap.repo} via {snap.api_url} (snapshot)",
                           snapshot_date=snap.date)
        return FetchResult(catalog, mode=f"offline, snapshot of {snap.date}")
    with _github(repo, api_url=api_url, token=token, state_dir=state_dir, client=client,
                 notify=notify, ca_bundle=ca_bundle, max_wait=max_wait,
                 secondary_wait=secondary_wait, retries=retries) as gh:
        listing, mode = _live_listing(gh, snap)
        releases = listing.releases.values()
        metas = release_metas(gh, releases, snap) if uses_spacy_models_meta(repo) else {}
        catalog = _catalog(
            releases, metas, source=f"{repo} via {redact_url(api_url)}",
            snapshot_date=snap.date if snap else None,
            tags_without_release=tuple(listing.tags_without_release),
        )
        return FetchResult(catalog, mode=mode, stats=gh.stats, capped=listing.capped)


@contextlib.contextmanager
def _github(
    repo: str, *, api_url: str, token: str | None, state_dir: Path | None,
    client: httpx.Client | None, notify: Notify, ca_bundle: str | None, **options: Any,
) -> Iterator[GitHubReleases]:
    """A reader of ``repo`` with the ETag store of ``state_dir``, over ``client`` (or one made
    here, closed after)."""
    store = ConditionalStore(state_dir / "github.sqlite" if state_dir else None, notify)
    own_client = client is None
    if client is None:
        client = make_client(auth=OriginBearerAuth(token, api_url) if token else None,
                             ca_bundle=ca_bundle)
    try:
        yield GitHubReleases(repo, client=client, store=store, api_url=api_url,
                             authenticated=bool(token), notify=notify, **options)
    finally:
        if own_client:
            client.close()
        store.close()


def _live_listing(gh: GitHubReleases, snap: snapshots.Snapshot | None) -> tuple[Listing, str]:
    """Every release (and how it was read): a snapshot's plus the live delta, or the full
    listing."""
    if snap is None:
        listing = gh.listing()
        capped = " (past the 1,000-release cap via tag refs)" if listing.capped else ""
        return listing, "full listing" + capped
    page, _ = gh.list_pages(max_pages=1)
    tags = gh.tags()
    tagset = set(tags)
    releases = {t: r for t, r in snapshots.merge_releases(snap.releases, page).items()
                if t in tagset}
    without = gh.fill_from_tags(releases, tags)
    return Listing(releases, tags_without_release=without), f"snapshot of {snap.date} + live delta"


def _catalog(releases: Iterable[Release], metas: Mapping[str, ModelMeta], **info: Any) -> Catalog:
    dists, warnings = assemble(releases, metas)
    return Catalog.from_distributions(with_meta(dists, metas), warnings=tuple(warnings), **info)


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


def render_index_files(catalog: Catalog) -> dict[str, bytes]:
    """The whole static index as ``{relative path: bytes}`` (deterministic)."""
    return index_files(catalog)


def render_find_links(catalog: Catalog) -> str:
    """The flat find-links page: every file, hashed where the hash is known."""
    files = [pep691.file_dict(d) for d in catalog.files]
    return html.find_links_page(files)


def build_index(
    out: str | Path | S3Location,
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
    """Filter ``catalog`` and publish it to ``out`` (a folder, or ``s3://BUCKET[/PREFIX]``).

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
    report = publish(tree, parse_target(out), allow_shrink=allow_shrink,
                     s3_endpoint_url=s3_endpoint_url)
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
    with _github(repo, api_url=api_url, token=token, state_dir=state_dir, client=client,
                 notify=notify, ca_bundle=ca_bundle, max_wait=max_wait) as gh:
        listing = gh.listing()
        metas = parse_archive(gh.archive())[0] if uses_spacy_models_meta(repo) else {}
        snap = snapshots.Snapshot(
            api_url=api_url, repo=repo, date=date,
            releases=tuple(listing.releases.values()), metas=metas,
        )
        return snap, gh.stats
