"""Choosing: which pipeline wheel runs on which spaCy. Pure: no I/O, no network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.errors import (
    NoCompatibleVersion,
    NoSuchModel,
    SpacyIndexError,
    SpacyMissing,
    UsageError,
)
from spacy_index.model import Distribution
from spacy_index.model_spacy import KNOWN_SPACY_MINORS, SpacyTarget, spacy_compatible, spacy_target

if TYPE_CHECKING:
    from collections.abc import Iterable

    from spacy_index.catalog import Catalog
    from spacy_index.install.environment import Environment

@dataclass(frozen=True)
class Choice:
    dist: Distribution
    spacy: SpacyTarget | None
    #: chosen with --force although the spaCy target does not admit it
    forced: bool = False

    @property
    def requirement_line(self) -> str:
        return f"{self.dist.project}=={self.dist.version} --hash=sha256:{self.dist.sha256}"


def minor_series(dists: Iterable[Distribution]) -> list[str]:
    specs = {d.spacy_requirement for d in dists} - {None}
    return [str(m) for m in KNOWN_SPACY_MINORS if any(spacy_compatible(s, m) for s in specs)]


def split_model(text: str) -> tuple[str, SpecifierSet | None]:
    """What the user asked for, as ``(name, specifier or None)``:

    - ``en_core_web_sm`` (``en-core-web-sm`` alike) → the newest compatible version;
    - ``en_core_web_sm==3.8.0``, or any PEP 508 specifier such as ``'en_core_web_sm>=3.7,<3.8'``;
    - ``en_core_web_sm-3.8.0``: spaCy's ``download --direct`` form, the same as ``==3.8.0``.
    """
    text = text.strip()
    if any(c in text for c in "=<>!~ ;@[,("):
        from packaging.requirements import InvalidRequirement, Requirement

        try:
            req = Requirement(text)
        except InvalidRequirement:
            raise UsageError(f"{text!r} is not a pipeline name, NAME==VERSION, NAME-VERSION "
                             "or NAME with a version specifier such as 'NAME>=3.7,<3.8'") from None
        if req.url:
            raise UsageError(f"{text!r}: a direct URL is not a pipeline name; give NAME, "
                             "NAME==VERSION or NAME-VERSION (or --index for another index)")
        if req.marker is not None or req.extras:
            raise UsageError(f"{text!r}: extras and markers are not supported here; give NAME "
                             "with a version specifier")
        return req.name, (req.specifier if str(req.specifier) else None)
    name, dash, version = text.rpartition("-")
    if dash and name and version[:1].isdigit():
        try:
            Version(version)
        except InvalidVersion:
            pass
        else:
            return name, SpecifierSet(f"=={version}")
    try:
        canonicalize_name(text, validate=True)
    except ValueError:
        raise UsageError(f"{text!r} is not a pipeline name (see `spacy-index list`)") from None
    return text, None


def choose(catalog: Catalog, name: str, spacy: SpacyTarget | None, *, pre: bool = False,
           force: bool = False) -> Choice:
    """The newest hashed wheel of ``name`` (which may carry a version: :func:`split_model`)
    that runs on ``spacy``; with ``force`` (or no target) whatever spaCy it is for."""
    bare, pinned = split_model(name)
    project = catalog.projects.get(canonicalize_name(bare))
    if project is None:
        import difflib

        names = [p.display_name for p in catalog.projects.values()]
        close = difflib.get_close_matches(bare.replace("-", "_"), names, n=3, cutoff=0.6)
        raise NoSuchModel(bare, close)
    wheels = [d for d in project.files if d.kind == "wheel" and d.sha256 and d.version]
    if pinned is not None:
        have = sorted({d.version for d in wheels if d.version is not None})
        wheels = [d for d in wheels if pinned.contains(d.version, prereleases=True)]  # type: ignore[arg-type]
        if not wheels:
            versions = ", ".join(str(v) for v in have) or "none"
            raise SpacyIndexError(f"no hashed wheel of {project.display_name} matches "
                                  f"{pinned}; versions with one: {versions}")
        pre = pre or all(d.version.is_prerelease for d in wheels)  # type: ignore[union-attr]
    candidates = [d for d in wheels if pre or not d.version.is_prerelease]  # type: ignore[union-attr]
    label = project.display_name + (str(pinned) if pinned is not None else "")
    if spacy is not None and not force:
        fitting = [d for d in candidates if spacy.admits(d)]
        if not fitting:
            raise NoCompatibleVersion(label, spacy, minor_series(wheels))
        candidates = fitting
    if not candidates:
        raise SpacyIndexError(f"{label} has only pre-release wheels; pass --pre or a version")
    best = max(candidates, key=Distribution.sort_key)
    return Choice(best, spacy, forced=spacy is not None and not spacy.admits(best))


def resolve_spacy(option: str, env: Environment) -> SpacyTarget:
    """``auto`` → the installed spaCy; ``3.8`` → the whole 3.8 series; ``3.8.2`` → exactly."""
    if option == "auto":
        if env.spacy is None:
            raise SpacyMissing(env.python)
        return SpacyTarget(str(env.spacy), (env.spacy,), env.spacy)
    return spacy_target(option)
