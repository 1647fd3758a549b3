"""spacy-models' own metadata: ``meta/<model>-<version>.json`` and ``compatibility.json``.

GitHub's asset ``digest`` is null for every asset uploaded before June 2025, i.e. for all of
spacy-models. The meta files carry the real sha256 of each file (``checksum`` for the sdist,
``checksum_whl`` for the wheel) plus the spaCy range and requirements. One repository archive
brings all 1,100 of them in a single request.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.errors import UpstreamError
from spacy_index.http import StoredResponse
from spacy_index.model import Distribution, ModelMeta, Release, is_sha256

if TYPE_CHECKING:
    from spacy_index.sources.github import GitHubReleases
    from spacy_index.sources.snapshot import Snapshot

SPACY_MODELS_REPO = "explosion/spacy-models"
#: the ETag store's record of the release tags whose metas the cached archive was read for
_CHECKED_KEY = "spacy-index:meta-checked-tags"


def uses_spacy_models_meta(repo: str) -> bool:
    return repo.lower() == SPACY_MODELS_REPO


def meta_from_json(tag: str, data: Mapping[str, Any]) -> ModelMeta | None:
    """One meta file's fields, or ``None`` if it is not a model meta."""
    lang, name, version = data.get("lang"), data.get("name"), data.get("version")
    if not (isinstance(lang, str) and isinstance(name, str) and isinstance(version, str)):
        return None

    def sha(key: str) -> str | None:
        value = data.get(key)
        return value.lower() if isinstance(value, str) and is_sha256(value.lower()) else None

    reqs = data.get("requirements") or []
    spacy_version = data.get("spacy_version")
    return ModelMeta(
        tag=tag,
        project=f"{lang}_{name}",
        version=version,
        spacy_version=spacy_version if isinstance(spacy_version, str) and spacy_version else None,
        requirements=tuple(str(r) for r in reqs if isinstance(r, str)),
        sdist_sha256=sha("checksum"),
        wheel_sha256=sha("checksum_whl"),
        description=data.get("description") if isinstance(data.get("description"), str) else None,
        size_text=data.get("size") if isinstance(data.get("size"), str) else None,
        license=data.get("license") if isinstance(data.get("license"), str) else None,
    )


def parse_archive(data: bytes) -> tuple[dict[str, ModelMeta], dict[str, Any] | None]:
    """Read every ``meta/*.json`` (and ``compatibility.json``) from a repository tarball.

    GitHub's tarballs put everything under one top-level folder; files at the top level are
    accepted too. Unreadable members are skipped, not fatal.
    """
    metas: dict[str, ModelMeta] = {}
    compatibility: dict[str, Any] | None = None
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 (closed below)
    except (tarfile.TarError, OSError) as e:
        raise UpstreamError(f"the spacy-models archive is not a readable tarball: {e}") from e
    with archive:
        for member in archive:
            if not member.isfile():
                continue
            parts = member.name.split("/")
            if len(parts) >= 2 and parts[-2] == "meta" and parts[-1].endswith(".json"):
                kind = "meta"
            elif parts[-1] == "compatibility.json" and len(parts) <= 2:
                kind = "compat"
            else:
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            try:
                doc = json.loads(handle.read())
            except ValueError:
                continue
            if kind == "compat":
                compatibility = doc if isinstance(doc, dict) else None
                continue
            tag = parts[-1].removesuffix(".json")
            meta = meta_from_json(tag, doc) if isinstance(doc, dict) else None
            if meta is not None:
                metas[tag] = meta
    return metas, compatibility


def release_metas(
    gh: GitHubReleases, releases: Iterable[Release], snap: Snapshot | None
) -> dict[str, ModelMeta]:
    """Meta checksums for every release, fetching the repo archive only when some release
    has not been checked against it yet (so warm runs and snapshot runs skip it)."""
    tags = {r.tag for r in releases}
    metas: dict[str, ModelMeta] = dict(snap.metas) if snap else {}
    checked: set[str] = {r.tag for r in snap.releases} if snap else set()
    archive_url = f"{gh.api_url}/repos/{gh.repo}/tarball"
    stored = gh.store.get(_CHECKED_KEY + " " + archive_url, False)
    cached_archive = gh.store.get(archive_url, gh.authenticated)
    if stored and cached_archive:
        checked |= set(json.loads(stored.body))
        metas.update(parse_archive(cached_archive.body)[0])
    if tags - checked:
        gh.notify(f"reading checksums of {len(tags - checked)} release(s) from the repository")
        fresh, _compat = parse_archive(gh.archive())
        metas.update(fresh)
        gh.store.put(
            _CHECKED_KEY + " " + archive_url,
            False,
            StoredResponse("-", json.dumps(sorted(tags | checked)).encode()),
        )
    return metas


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
