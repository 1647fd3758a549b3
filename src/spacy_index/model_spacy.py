"""spaCy's compatibility rule for pipelines: which spaCy release or minor series a pipeline's
``spacy`` requirement is for. Pure (``packaging`` only); the one rule behind ``install``,
``list``, ``build --spacy`` and the catalogue page.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from spacy_index.errors import UsageError

if TYPE_CHECKING:
    from spacy_index.model import Distribution


def spacy_admits(spec: SpecifierSet | None, spacy_version: Version) -> bool:
    """True when a pipeline's spaCy requirement admits ``spacy_version``.

    Model requirements name pre-releases (``>=3.7.0.dev0``) so pre-releases are allowed.
    """
    if spec is None:
        return False
    return spec.contains(spacy_version, prereleases=True)


#: operators that give a requirement its lower bound (the spaCy series a pipeline is for)
_LOWER_OPS = frozenset({">=", ">", "==", "~=", "==="})


def spacy_series(spec: SpecifierSet | None) -> tuple[int, int] | None:
    """The spaCy minor series ``(major, minor)`` a pipeline's spaCy requirement declares: the
    series of its lower bound (``>=3.7.2,<3.8.0`` → ``(3, 7)``; v2's open ``>=2.1.0`` →
    ``(2, 1)``), or None when it has none."""
    if spec is None:
        return None
    lower: Version | None = None
    for s in spec:
        if s.operator not in _LOWER_OPS:
            continue
        try:
            v = Version(s.version.removesuffix(".*"))
        except InvalidVersion:
            continue
        lower = v if lower is None else max(lower, v)
    if lower is None:
        return None
    return (lower.major, lower.minor)


def spacy_compatible(spec: SpecifierSet | None, spacy: Version) -> bool:
    """Whether a pipeline whose spaCy requirement is ``spec`` runs on ``spacy``, as spaCy
    means it: the requirement admits it AND the range it declares is for that ``X.Y``
    series. The one rule behind ``install``, ``list``, ``build --spacy`` and ``build --mirror
    --spacy`` (and the catalogue page, through ``install.SpacyTarget.admits``).

    ``spacy`` with two release numbers (``3.8``) means the whole 3.8 series (some 3.8.x is
    admitted); with three or more (``3.8.2``) exactly that release.

    The series is the requirement's lower bound's (:func:`spacy_series`): spaCy pipelines are
    built for one minor release, and spacy-models' ``compatibility.json`` lists each for that
    series. So a v2 pipeline's open ``>=2.0.0``, which technically admits 3.8, counts for 2.0
    only: v2 pipelines never count for spaCy 3. (Checked against the compatibility table of
    the recorded spacy-models repository: every stable v2 and v3 release agrees, except that
    the table also lists en_vectors_web_lg 2.0.0 and 2.1.0 for the next minor.)
    """
    if spec is None:
        return False
    return _compatible(spec, str(spacy))


@functools.lru_cache(maxsize=8192)
def _compatible(spec: SpecifierSet, spacy_text: str) -> bool:
    spacy = Version(spacy_text)
    series = spacy_series(spec)
    if series != (spacy.major, spacy.minor):
        return False
    if len(spacy.release) >= 3:
        return spec.contains(spacy, prereleases=True)
    major, minor = series
    probes = [Version(f"{major}.{minor}.{patch}") for patch in range(100)]
    probes += [Version(s.version.removesuffix(".*")) for s in spec if s.operator in (">=", "==")
               and not s.version.endswith(".*")]
    return any(spec.contains(v, prereleases=True) for v in probes
               if (v.major, v.minor) == series)


#: spaCy minor series a pipeline can target, for "which spaCy versions have one" messages.
KNOWN_SPACY_MINORS = tuple(Version(v) for v in (
    "1.6", "1.7", "1.8", "1.9", "1.10", "2.0", "2.1", "2.2", "2.3",
    "3.0", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "3.8", "3.9",
))


@dataclass(frozen=True)
class SpacyTarget:
    """The spaCy a pipeline must work with: one version, or a whole ``X.Y`` series.

    ``version`` is what :func:`~spacy_index.model_spacy.spacy_compatible` takes (``3.8``: the
    series, ``3.8.2``: exactly); ``versions`` is kept for callers that list them.
    """

    label: str
    versions: tuple[Version, ...]
    version: Version | None = None

    def admits(self, dist: Distribution) -> bool:
        """Whether ``dist`` runs on this spaCy (the one rule: ``spacy_compatible``)."""
        spec = dist.spacy_requirement
        if self.version is not None:
            return spacy_compatible(spec, self.version)
        return any(spacy_compatible(spec, v) for v in self.versions)

    def __str__(self) -> str:
        return self.label


def spacy_target(option: str) -> SpacyTarget:
    """``3.8`` → the whole 3.8 series; ``3.8.2`` → exactly that release."""
    try:
        v = Version(option)
    except InvalidVersion:
        raise UsageError(f"--spacy needs auto or a version such as 3.8, got {option!r}") from None
    if len(v.release) >= 3:
        return SpacyTarget(str(v), (v,), v)
    major, minor = v.release[0], (v.release[1] if len(v.release) > 1 else 0)
    series = tuple(Version(f"{major}.{minor}.{patch}") for patch in range(40))
    return SpacyTarget(f"{major}.{minor}.x", series, Version(f"{major}.{minor}"))
