"""Pure data model: projects, distributions and their hashes. No I/O.

Names and versions are handled only through :mod:`packaging`; every mapping is keyed by the
normalized project name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    is_normalized_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from spacy_index.errors import InvalidFilename

#: ``other``: a file an upstream index lists that is neither a wheel nor an sdist with a PEP 440
#: version (``.egg``, ``.exe``, ``.msi``, ``.rpm``, a legacy version): passed through, never
#: chosen by pip or uv, never given PEP 658 metadata.
Kind = Literal["wheel", "sdist", "other"]
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SDIST_SUFFIXES = (".tar.gz", ".zip")
#: every archive pip accepts as an sdist (``pip._internal.utils.filetypes``), for upstream pages
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar.lz",
                     ".tlz", ".tar.lzma", ".tar", ".zip")
#: what a legacy binary's version is followed by: ``foo-1.0.win32-py2.7.exe``
_PLATFORM_MARKS = (".win", ".linux", ".macosx", ".cygwin", ".freebsd", ".darwin")


def is_sha256(value: str) -> bool:
    """True for a lower-case hex sha256 digest."""
    return bool(_HEX64.fullmatch(value))


@dataclass(frozen=True, slots=True)
class ParsedFilename:
    name: NormalizedName
    version: Version
    kind: Kind


def parse_filename(filename: str, project: str | None = None) -> ParsedFilename:
    """Parse a wheel or sdist filename with :mod:`packaging`'s rules.

    Sdists from before PEP 625 may carry a version that is not in canonical form, e.g.
    ``en_core_web_sm-2.0.0-alpha.tar.gz``. ``parse_sdist_filename`` splits at the last dash and
    rejects those, so, like pip, we fall back to splitting where the project name ends (the
    known ``project`` if given, else the first dash after which a valid version follows).
    """
    if "/" in filename or "\\" in filename or filename in {"", ".", ".."}:
        raise InvalidFilename(filename, "contains a path separator")
    if filename.endswith(".whl"):
        try:
            name, version, _build, _tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion) as e:
            raise InvalidFilename(filename, str(e).split(":")[0]) from e
        parsed = ParsedFilename(name, version, "wheel")
    elif filename.endswith(_SDIST_SUFFIXES):
        parsed = _parse_sdist(filename, project)
    else:
        raise InvalidFilename(filename, "not a .whl, .tar.gz or .zip")
    if not is_normalized_name(parsed.name):
        raise InvalidFilename(filename, "the project name is not a valid name")
    if project is not None and parsed.name != canonicalize_name(project):
        raise InvalidFilename(filename, f"does not belong to project {project!r}")
    return parsed


def _parse_sdist(filename: str, project: str | None) -> ParsedFilename:
    try:
        name, version = parse_sdist_filename(filename)
        return ParsedFilename(name, version, "sdist")
    except (InvalidSdistFilename, InvalidVersion):
        pass
    stem = filename.removesuffix(".tar.gz").removesuffix(".zip")
    wanted = canonicalize_name(project) if project else None
    start = 0
    while (dash := stem.find("-", start)) > 0:
        name_part, version_part = stem[:dash], stem[dash + 1 :]
        start = dash + 1
        try:
            name = canonicalize_name(name_part, validate=True)
            version = Version(version_part)
        except (ValueError, InvalidVersion):
            continue
        if wanted is None or name == wanted:
            return ParsedFilename(name, version, "sdist")
    raise InvalidFilename(filename, "no valid name-version split")


def unsafe_filename_reason(filename: str) -> str | None:
    """Why ``filename`` cannot be a file name in a folder or URL path, or None when it can."""
    if not filename or filename in {".", ".."} or filename.startswith("."):
        return "is empty or starts with a dot"
    if "/" in filename or "\\" in filename:
        return "contains a path separator"
    if _CONTROL.search(filename):
        return "contains a control character"
    return None


@dataclass(frozen=True, slots=True)
class ListedFilename:
    """What an upstream listing's filename says, leniently: ``version`` is None when the
    version is not PEP 440 (then ``version_text`` keeps the spelling), ``kind`` is ``other``
    for formats pip does not install from an index (``.egg``, ``.exe``, ...)."""

    version: Version | None
    version_text: str
    kind: Kind


#: what one page's wheels share, checked once each (:func:`_listed_wheel`)
WheelMemo = dict[str, "ListedFilename | bool | None"]


def parse_listed_filename(filename: str, project: str,
                          memo: WheelMemo | None = None) -> ListedFilename:
    """Parse a file an upstream index lists for ``project``, whatever its format.

    Wheels and sdists go through :func:`parse_filename` (``packaging``'s rules); anything else
    keeps what can be read of its version. Only names that are unsafe as a path raise
    :class:`InvalidFilename`. (Release assets use the strict :func:`parse_filename`.)

    ``memo`` (one dict per page, for one ``project``): the wheels of a page share their
    ``name-version`` parts and their tags (pydantic-core: 15,000 wheels, a few hundred of
    each), so each distinct part is checked once, with the same answer.
    """
    reason = unsafe_filename_reason(filename)
    if reason:
        raise InvalidFilename(filename, reason)
    if memo is not None and filename.endswith(".whl"):
        listed = _listed_wheel(filename, project, memo)
        if listed is not None:
            return listed
    try:
        parsed = parse_filename(filename, project)
        if parsed.kind == "sdist" or filename.endswith(".whl"):
            return ListedFilename(parsed.version, str(parsed.version), parsed.kind)
    except InvalidFilename:
        pass
    lower = filename.lower()
    stem = filename
    archive = next((s for s in _ARCHIVE_SUFFIXES if lower.endswith(s)), None)
    if archive:
        stem = filename[: -len(archive)]
    elif "." in filename:
        stem = filename.rsplit(".", 1)[0]
    text = _version_after_name(stem, project)
    if not archive:  # ``foo-1.0-py2.7.egg``, ``foo-1.0.win32-py2.7.exe``, ``foo-1.0_x-py2-none-any.whl``
        low = text.lower()
        cut = min((i for i in (low.find(m) for m in _PLATFORM_MARKS) if i > 0), default=-1)
        text = (text[:cut] if cut > 0 else text).split("-", 1)[0]
    try:
        version: Version | None = Version(text)
    except InvalidVersion:
        version = None
    kind: Kind = "sdist" if (archive and version is not None) else "other"
    return ListedFilename(version, text, kind)


def _listed_wheel(filename: str, project: str, memo: WheelMemo) -> ListedFilename | None:
    """:func:`parse_filename`'s answer for a wheel, or None where it raises (the caller then
    reads the name leniently), from ``packaging``'s own checks of the wheel's two parts.

    ``parse_wheel_filename`` checks ``name-version[-build]`` and the tag triple apart (no check
    reads both), so each part is checked once per page in a stand-in filename: the head with
    the tag ``py3-none-any``, the tag behind the head ``a-0``; the dash count is checked here
    as ``packaging`` does, for the real filename."""
    stem = filename[:-4]
    if stem.count("-") not in (4, 5):
        return None
    head = stem.rsplit("-", 3)[0]
    tag = stem[len(head) + 1:]
    listed = memo.get(head, False)
    if listed is False:
        try:
            parsed = parse_filename(f"{head}-py3-none-any.whl", project)
            listed = ListedFilename(parsed.version, str(parsed.version), "wheel")
        except InvalidFilename:
            listed = None
        memo[head] = listed
    if listed is None:
        return None
    tag_ok = memo.get("-" + tag)  # no head starts with a dash: the two kinds of key never meet
    if tag_ok is None:
        try:
            parse_wheel_filename(f"a-0-{tag}.whl")
            tag_ok = True
        except (InvalidWheelFilename, InvalidVersion):
            tag_ok = False
        memo["-" + tag] = tag_ok
    return listed if tag_ok else None  # type: ignore[return-value]


def _version_after_name(stem: str, project: str) -> str:
    """The part of ``stem`` after the project's name and a dash (names compared normalized,
    as pip does); the whole stem when no prefix is the project's name."""
    wanted = canonicalize_name(project)
    for i, c in enumerate(stem):
        if c == "-" and canonicalize_name(stem[:i]) == wanted:
            return stem[i + 1 :]
    return stem


@dataclass(frozen=True, slots=True)
class Distribution:
    """One downloadable file of one project version."""

    project: NormalizedName
    filename: str
    url: str
    #: None only for files an upstream index lists with a non-PEP 440 version (kind "other")
    version: Version | None
    kind: Kind
    sha256: str | None = None
    size: int | None = None
    upload_time: datetime | None = None
    requires_python: str | None = None
    #: Requires-Dist lines, where known from the source's metadata (not the wheel itself).
    requires_dist: tuple[str, ...] | None = None
    #: sha256 of the wheel's METADATA file, once known (PEP 658).
    core_metadata_sha256: str | None = None
    #: the index serves ``<url>.metadata`` even if its hash is not known yet (PEP 714 ``true``)
    has_core_metadata: bool = False
    yanked: str | None = None
    #: PEP 740: the URL of the file's provenance, as the upstream index gives it
    provenance: str | None = None
    #: the version as written in the filename, where it is not PEP 440 (``version`` is None)
    version_text: str | None = None
    #: what spacy-models' ``meta/<model>-<version>.json`` says of this file's release, where
    #: known (description, licence, approximate size): shown by the catalogue page only
    meta: ModelMeta | None = None

    def __post_init__(self) -> None:
        if self.sha256 is not None and not is_sha256(self.sha256):
            raise ValueError(f"not a sha256 hex digest: {self.sha256!r}")
        if self.upload_time is not None and self.upload_time.tzinfo is None:
            raise ValueError("upload_time must be timezone-aware")

    @property
    def spacy_requirement(self) -> SpecifierSet | None:
        """The ``spacy`` specifier among :attr:`requires_dist`, if known."""
        for line in self.requires_dist or ():
            name, spec = split_requirement(line)
            if name == "spacy":
                return spec
        return None

    @property
    def release(self) -> str:
        """The release this file belongs to, as a string (PyPI-style JSON keys)."""
        return str(self.version) if self.version is not None else (self.version_text or "")

    def sort_key(self) -> tuple[Version, int, str]:
        return (self.version or _NO_VERSION, 0 if self.kind == "sdist" else 1, self.filename)


def split_requirement(line: str) -> tuple[NormalizedName, SpecifierSet | None]:
    """Split ``"spacy>=3.7.2,<3.8.0"`` into its name and specifier, via :mod:`packaging`."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(line)
    except InvalidRequirement:
        return canonicalize_name(line.split(";")[0].strip()), None
    return canonicalize_name(req.name), req.specifier


_NO_VERSION = Version("0.dev0")


def upload_time_text(value: datetime) -> str:
    """PEP 700 ``upload-time``: ISO 8601 in UTC with a ``Z`` suffix, always with microseconds
    (``isoformat``, not ``strftime``: the same text at a third less time, for every file of
    every page rendered)."""
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class Project:
    """A project and its files, sorted by version then filename."""

    name: NormalizedName
    display_name: str
    files: tuple[Distribution, ...] = field(default_factory=tuple)
    #: the upstream index's own ``versions`` list (PEP 700), passed through as it is
    listed_versions: tuple[str, ...] | None = None
    #: PEP 792 ``(status, reason)`` as the upstream index gives it
    status: tuple[str, str | None] | None = None

    @property
    def versions(self) -> list[Version]:
        return sorted({d.version for d in self.files if d.version is not None})

    def version_strings(self) -> list[str]:
        """PEP 700 ``versions``: the upstream's list where it gave one, else every version of
        the files (legacy spellings included), PEP 440 ones in order first."""
        if self.listed_versions is not None:
            return list(self.listed_versions)
        legacy = sorted({d.version_text or "" for d in self.files if d.version is None} - {""})
        return [str(v) for v in self.versions] + legacy

    def latest(self, *, prereleases: bool = False) -> Version | None:
        candidates = [v for v in self.versions if prereleases or not v.is_prerelease]
        return max(candidates) if candidates else None


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """True when ``name`` matches any glob, both compared in normalized form.

    ``en_core_web_*`` and ``en-core-web-*`` select the same projects.
    """
    norm = canonicalize_name(name)
    return any(fnmatch.fnmatchcase(norm, normalize_glob(p)) for p in patterns)


def normalize_glob(pattern: str) -> str:
    """Normalize a project-name glob the way names are normalized (PEP 503); ``*?[]`` survive."""
    return canonicalize_name(pattern)


def parse_specifier(text: str | None) -> SpecifierSet | None:
    if not text:
        return None
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        return None


@dataclass(frozen=True, slots=True)
class ReleaseAsset:
    """A file attached to a release, as any release host describes it."""

    name: str
    url: str
    size: int | None = None
    upload_time: datetime | None = None
    #: sha256 hex digest reported by the host itself (GitHub's ``digest``), if any.
    digest_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """One release (a tag) and its assets."""

    tag: str
    assets: tuple[ReleaseAsset, ...]
    prerelease: bool = False
    release_id: int | None = None


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """What spacy-models' ``meta/<model>-<version>.json`` says about one release."""

    tag: str
    project: str
    version: str
    spacy_version: str | None
    requirements: tuple[str, ...] = ()
    sdist_sha256: str | None = None
    wheel_sha256: str | None = None
    description: str | None = None
    size_text: str | None = None
    #: the meta file's ``license`` (e.g. ``MIT``, ``CC BY-SA 4.0``); the bundled snapshot does
    #: not record it, so it is known only where the meta files were read (live builds)
    license: str | None = None

    def requires_dist(self) -> tuple[str, ...] | None:
        if self.spacy_version is None:
            return None
        return (f"spacy{self.spacy_version}", *self.requirements)
