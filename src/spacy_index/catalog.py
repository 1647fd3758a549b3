"""The catalog: every project and file an index will show, assembled from sources. Pure.

``assemble`` merges release assets with spacy-models' meta checksums; ``Catalog`` filters and
counts. Rendering and publishing take a ``Catalog``; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from spacy_index.errors import InvalidFilename
from spacy_index.model import (
    Distribution,
    ModelMeta,
    Project,
    Release,
    name_matches,
    parse_filename,
)
from spacy_index.model_spacy import spacy_compatible


@dataclass(frozen=True)
class Catalog:
    """Projects keyed by normalized name, plus where they came from."""

    projects: Mapping[NormalizedName, Project]
    source: str = ""
    snapshot_date: str | None = None
    warnings: tuple[str, ...] = ()
    #: Release tags that exist upstream but have no release (informational).
    tags_without_release: tuple[str, ...] = field(default=())

    @classmethod
    def from_distributions(
        cls, dists: Iterable[Distribution], *, display_names: Mapping[str, str] | None = None,
        **info: object,
    ) -> Catalog:
        by_project: dict[NormalizedName, list[Distribution]] = {}
        for d in dists:
            by_project.setdefault(d.project, []).append(d)
        projects = {}
        for name in sorted(by_project):
            files = tuple(sorted(by_project[name], key=Distribution.sort_key))
            display = (display_names or {}).get(name) or _display_name(files)
            projects[name] = Project(name=name, display_name=display, files=files)
        return cls(projects=projects, **info)  # type: ignore[arg-type]

    @property
    def files(self) -> list[Distribution]:
        return [d for p in self.projects.values() for d in p.files]

    def counts(self) -> tuple[int, int, int]:
        """(projects, files, files with a sha256)."""
        files = self.files
        return len(self.projects), len(files), sum(1 for d in files if d.sha256)

    def filter(
        self,
        *,
        only: Sequence[str] = (),
        spacy: Version | None = None,
        wheels_only: bool = False,
    ) -> Catalog:
        """Keep the projects matching any ``only`` glob, and the files admitted by the filters.

        ``spacy``: files compatible with that spaCy by :func:`~spacy_index.model_spacy.spacy_compatible`
        (``3.8`` the whole series, ``3.8.2`` exactly), the rule ``install`` and ``list`` use.
        Pre-releases are kept: clients filter them out themselves.
        """

        def keep(d: Distribution) -> bool:
            if wheels_only and d.kind != "wheel":
                return False
            return spacy is None or spacy_compatible(d.spacy_requirement, spacy)

        projects = {}
        for name, project in self.projects.items():
            if only and not name_matches(name, only):
                continue
            files = tuple(d for d in project.files if keep(d))
            if files:
                projects[name] = replace(project, files=files)
        return replace(self, projects=projects)


def _display_name(files: Sequence[Distribution]) -> str:
    """The project's name as its newest file spells it (``en_core_web_sm``)."""
    newest = max(files, key=Distribution.sort_key)
    stem = newest.filename.removesuffix(".whl").removesuffix(".tar.gz").removesuffix(".zip")
    spelled = stem.split("-")[0]
    return spelled if canonicalize_name(spelled) == newest.project else newest.project


def assemble(
    releases: Iterable[Release],
    metas: Mapping[str, ModelMeta] | None = None,
) -> tuple[list[Distribution], list[str]]:
    """Turn release assets into distributions, attaching hashes and requirements.

    The hash of a file is the host's own digest, else spacy-models' meta checksum. When both
    exist and disagree the file is left out with a warning: we cannot tell which is right.
    Assets that are not valid wheel/sdist names for their project are left out with a warning.
    """
    metas = metas or {}
    dists: dict[str, Distribution] = {}
    warnings: list[str] = []
    for release in sorted(releases, key=lambda r: r.tag):
        meta = metas.get(release.tag)
        for asset in release.assets:
            try:
                parsed = parse_filename(asset.name, meta.project if meta else None)
            except InvalidFilename as e:
                warnings.append(f"skipped asset of release {release.tag!r}: {e}")
                continue
            if urlsplit(asset.url).scheme not in {"http", "https"}:
                warnings.append(f"skipped {asset.name!r}: its URL is not http(s)")
                continue
            expected = None
            if meta is not None:
                expected = meta.wheel_sha256 if parsed.kind == "wheel" else meta.sdist_sha256
            if asset.digest_sha256 and expected and asset.digest_sha256 != expected:
                warnings.append(
                    f"skipped {asset.name!r}: GitHub digest sha256:{asset.digest_sha256} "
                    f"disagrees with meta checksum sha256:{expected}"
                )
                continue
            if asset.name in dists:
                warnings.append(
                    f"skipped {asset.name!r} of release {release.tag!r}: "
                    "the same filename is attached to another release"
                )
                continue
            dists[asset.name] = Distribution(
                project=parsed.name,
                filename=asset.name,
                url=asset.url,
                version=parsed.version,
                kind=parsed.kind,
                sha256=asset.digest_sha256 or expected,
                size=asset.size,
                upload_time=asset.upload_time,
                requires_dist=meta.requires_dist() if meta else None,
            )
    return list(dists.values()), warnings


def catalog_from_files_json(doc: Mapping[str, object]) -> Catalog:
    """A catalog from the cached-catalog JSON's ``files`` (``snapshot.catalog_to_json``).
    Pure, and light to import: ``install`` reads its cache with it at start-up."""
    from spacy_index.model import parse_timestamp

    dists = []
    for f in doc["files"]:  # type: ignore[attr-defined]
        parsed = parse_filename(f["filename"])
        dists.append(Distribution(
            project=parsed.name, filename=f["filename"], url=f["url"], version=parsed.version,
            kind=parsed.kind, sha256=f.get("sha256"), size=f.get("size"),
            upload_time=parse_timestamp(f.get("upload_time")),
            requires_dist=tuple(f["requires_dist"]) if f.get("requires_dist") is not None else None,
        ))
    return Catalog.from_distributions(dists, source=str(doc.get("source", "")),
                                      snapshot_date=doc.get("snapshot_date"))  # type: ignore[arg-type]
