"""Catalog snapshots: releases, URLs, sha256s and requirements of one repository, frozen.

The package ships one for explosion/spacy-models on github.com, so ``build --offline`` works
with no network and an online build needs only a small delta. A snapshot records the API
origin and repository it describes and is never applied to any other: its URLs and hashes are
facts about that host only. Values it does not know (e.g. sizes) are stored as null, never
guessed.

Dates: each release records its ``date`` and each asset its own ``upload_time`` where known.
An asset's ``upload_time`` of null means "its release's date", and that is what offline builds
give as the file's PEP 700 ``upload-time``. The bundled snapshot knows only release dates (the
tag dates of the recorded inventory), so its files are dated by their release. A snapshot
written live (``spacy-index snapshot``) knows every asset's own upload time (GitHub's
``created_at``), so offline builds from it show the same upload times as a live build; its
release ``date`` is the earliest of them. Both keys are optional: snapshots written before they
existed load unchanged (their files simply have no upload time), and the format stays 1.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from spacy_index.catalog import Catalog
from spacy_index.errors import SnapshotError
from spacy_index.model import (
    ModelMeta,
    Release,
    ReleaseAsset,
    parse_timestamp,
    upload_time_text,
)

FORMAT = 1
BUNDLED = "spacy-models.snapshot.json.gz"


@dataclass(frozen=True)
class Snapshot:
    api_url: str
    repo: str
    date: str
    releases: tuple[Release, ...]
    metas: Mapping[str, ModelMeta] = field(default_factory=dict)
    #: Release tags the metas were last checked against (so warm runs skip the archive).
    note: str = ""
    #: tag -> the release's date (the bundled snapshot: its tag date). A release missing here
    #: is dated by the earliest upload time of its assets, if any.
    release_dates: Mapping[str, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every asset with no upload time of its own carries its release's date, so whatever
        # assembles these releases (offline builds, snapshot + delta) gives each file one
        object.__setattr__(
            self, "releases", tuple(_dated(r, self.release_date(r)) for r in self.releases)
        )

    def release_date(self, release: Release) -> datetime | None:
        """The release's date: as recorded, else the earliest upload time of its assets."""
        recorded = self.release_dates.get(release.tag)
        if recorded is not None:
            return recorded
        times = [a.upload_time for a in release.assets if a.upload_time is not None]
        return min(times) if times else None

    def applies_to(self, api_url: str, repo: str) -> bool:
        return (
            self.api_url.rstrip("/").lower() == api_url.rstrip("/").lower()
            and self.repo.lower() == repo.lower()
        )


def _dated(release: Release, date: datetime | None) -> Release:
    if date is None or all(a.upload_time is not None for a in release.assets):
        return release
    assets = tuple(
        a if a.upload_time is not None else replace(a, upload_time=date) for a in release.assets
    )
    return replace(release, assets=assets)


def _time_text(value: datetime | None) -> str | None:
    return upload_time_text(value) if value is not None else None


def _asset_to_json(a: ReleaseAsset, release_date: datetime | None) -> dict[str, Any]:
    return {
        "name": a.name,
        "url": a.url,
        "size": a.size,
        # null: the release's date (so a snapshot that knows only release dates stays small)
        "upload_time": None if a.upload_time == release_date else _time_text(a.upload_time),
        "digest_sha256": a.digest_sha256,
    }


def _meta_to_json(m: ModelMeta) -> dict[str, Any]:
    return {
        "project": m.project,
        "version": m.version,
        "spacy_version": m.spacy_version,
        "requirements": list(m.requirements),
        "sdist_sha256": m.sdist_sha256,
        "wheel_sha256": m.wheel_sha256,
        "description": m.description,
        "size_text": m.size_text,
        **({"license": m.license} if m.license else {}),
    }


def to_json(snap: Snapshot) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "api_url": snap.api_url,
        "repo": snap.repo,
        "date": snap.date,
        "note": snap.note,
        "releases": [
            {
                "tag": r.tag,
                "id": r.release_id,
                "prerelease": r.prerelease,
                "date": _time_text(snap.release_date(r)),
                "assets": [_asset_to_json(a, snap.release_date(r)) for a in r.assets],
            }
            for r in sorted(snap.releases, key=lambda r: r.tag)
        ],
        "metas": {tag: _meta_to_json(m) for tag, m in sorted(snap.metas.items())},
    }


def from_json(doc: Mapping[str, Any]) -> Snapshot:
    if doc.get("format") != FORMAT:
        raise SnapshotError(f"unsupported snapshot format {doc.get('format')!r}; regenerate it")
    try:
        releases = tuple(
            Release(
                tag=r["tag"],
                release_id=r.get("id"),
                prerelease=bool(r.get("prerelease")),
                assets=tuple(
                    ReleaseAsset(
                        name=a["name"],
                        url=a["url"],
                        size=a.get("size"),
                        upload_time=parse_timestamp(a.get("upload_time")),
                        digest_sha256=a.get("digest_sha256"),
                    )
                    for a in r["assets"]
                ),
            )
            for r in doc["releases"]
        )
        release_dates = {
            r["tag"]: date
            for r in doc["releases"]
            if (date := parse_timestamp(r.get("date"))) is not None
        }
        metas = {
            tag: ModelMeta(
                tag=tag,
                project=m["project"],
                version=m["version"],
                spacy_version=m.get("spacy_version"),
                requirements=tuple(m.get("requirements") or ()),
                sdist_sha256=m.get("sdist_sha256"),
                wheel_sha256=m.get("wheel_sha256"),
                description=m.get("description"),
                size_text=m.get("size_text"),
                license=m.get("license"),
            )
            for tag, m in doc.get("metas", {}).items()
        }
        return Snapshot(
            api_url=doc["api_url"], repo=doc["repo"], date=doc["date"], releases=releases,
            metas=metas, note=doc.get("note", ""), release_dates=release_dates,
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise SnapshotError(f"the snapshot is malformed ({e!r}); regenerate it") from e


def dumps(snap: Snapshot) -> bytes:
    """Deterministic gzip'd JSON (fixed mtime), so regenerating identical data is a no-op."""
    raw = json.dumps(to_json(snap), sort_keys=True, indent=0, separators=(",", ":")).encode()
    return gzip.compress(raw, compresslevel=9, mtime=0)


def load(path: Path | None = None) -> Snapshot:
    """Load ``path``, or the snapshot bundled with the package when ``path`` is None."""
    where = "the bundled snapshot" if path is None else str(path)
    try:
        if path is None:
            data = importlib.resources.files("spacy_index").joinpath("data", BUNDLED).read_bytes()
        else:
            data = Path(path).read_bytes()
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {where}: {e.strerror or e}") from e
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        return from_json(json.loads(raw))
    except (OSError, ValueError, EOFError) as e:
        raise SnapshotError(f"snapshot {where} is not readable JSON: {e}") from e


def write(snap: Snapshot, path: Path) -> None:
    """Write atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(dumps(snap))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def merge_releases(base: Iterable[Release], newer: Iterable[Release]) -> dict[str, Release]:
    """Releases by tag, ``newer`` replacing ``base``."""
    out = {r.tag: r for r in base}
    out.update((r.tag, r) for r in newer)
    return out


def catalog_to_json(catalog: Catalog) -> dict[str, Any]:
    """A catalog's distributions, for the install/list cache (not a snapshot: no releases)."""
    return {
        "format": FORMAT,
        "source": catalog.source,
        "snapshot_date": catalog.snapshot_date,
        "files": [
            {
                "filename": d.filename, "url": d.url, "sha256": d.sha256, "size": d.size,
                "upload_time": upload_time_text(d.upload_time) if d.upload_time else None,
                "requires_dist": list(d.requires_dist) if d.requires_dist is not None else None,
            }
            for d in catalog.files
        ],
    }


def catalog_from_json(doc: Mapping[str, Any]) -> Catalog:
    if doc.get("format") != FORMAT:
        raise SnapshotError("unsupported cached catalog format")
    from spacy_index.catalog import catalog_from_files_json

    return catalog_from_files_json(doc)
