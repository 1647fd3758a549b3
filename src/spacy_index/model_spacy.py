"""spaCy's compatibility rule for pipelines: which spaCy release or minor series a pipeline's
``spacy`` requirement is for. Pure (``packaging`` only); the one rule behind ``install``,
``list``, ``build --spacy`` and the catalogue page.
"""

from __future__ import annotations

import functools

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


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
