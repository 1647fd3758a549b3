"""The catalogue's data: every pipeline of a catalog with its language, newest version and
the spaCy minor series each file runs on (:mod:`spacy_index.render.catalogue` writes the pages
from it). Pure and deterministic.

spaCy compatibility is decided by the rule ``spacy-index install --spacy X.Y`` uses:
:func:`spacy_index.model_spacy.spacy_target` makes the target, :meth:`SpacyTarget.admits` says yes
or no.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from packaging.utils import NormalizedName
from packaging.version import InvalidVersion, Version

from spacy_index.catalog import Catalog
from spacy_index.model import Distribution, Project
from spacy_index.model_spacy import KNOWN_SPACY_MINORS, SpacyTarget, spacy_target

#: spaCy's language codes (``spacy.lang``) → English names, for the language column and filter
LANGUAGES = {
    "af": "Afrikaans", "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan",
    "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "ga": "Irish", "grc": "Ancient Greek", "he": "Hebrew", "hi": "Hindi",
    "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian",
    "is": "Icelandic", "it": "Italian", "ja": "Japanese", "kn": "Kannada", "ko": "Korean",
    "la": "Latin", "lb": "Luxembourgish", "lt": "Lithuanian", "lv": "Latvian",
    "mk": "Macedonian", "ml": "Malayalam", "mr": "Marathi", "nb": "Norwegian Bokmål",
    "ne": "Nepali", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sa": "Sanskrit", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian",
    "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "ta": "Tamil", "te": "Telugu",
    "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "tt": "Tatar", "uk": "Ukrainian",
    "ur": "Urdu", "vi": "Vietnamese", "xx": "Multi-language", "yo": "Yoruba", "zh": "Chinese",
}


@dataclass(frozen=True)
class Pipeline:
    """One project as the catalogue shows it."""

    project: Project
    lang: str
    #: the newest version (stable if there is one) and its files
    newest: Version | None
    newest_files: tuple[Distribution, ...]
    #: spaCy minor series (``3.8``) that ``spacy-index install --spacy X.Y`` finds a version
    #: for (a hashed, stable wheel whose requirement admits it), oldest first
    minors: tuple[Version, ...]
    #: per minor: the version ``install`` picks for it
    picks: Mapping[Version, Version]
    #: per file: the minors it runs on
    file_minors: Mapping[str, tuple[Version, ...]]

    @property
    def name(self) -> NormalizedName:
        return self.project.name

    @property
    def display_name(self) -> str:
        return self.project.display_name

    @property
    def meta_file(self) -> Distribution | None:
        """The newest file whose release has a meta file (description, licence)."""
        with_meta = [d for d in self.project.files if d.meta is not None]
        preferred = [d for d in with_meta if d in self.newest_files] or with_meta
        return max(preferred, key=Distribution.sort_key) if preferred else None

    @property
    def description(self) -> str | None:
        d = self.meta_file
        return d.meta.description if d is not None and d.meta is not None else None

    @property
    def license(self) -> str | None:
        d = self.meta_file
        return d.meta.license if d is not None and d.meta is not None else None

    @property
    def newest_wheel(self) -> Distribution | None:
        wheels = [d for d in self.newest_files if d.kind == "wheel"]
        return wheels[-1] if wheels else (self.newest_files[-1] if self.newest_files else None)


@dataclass(frozen=True)
class Catalogue:
    catalog: Catalog
    pipelines: tuple[Pipeline, ...]
    #: every spaCy minor series some pipeline runs on, oldest first
    minors: tuple[Version, ...]


def lang_of(name: str) -> str:
    """``en_core_web_sm`` → ``en`` (spaCy pipeline names start with the language code)."""
    return name.replace("-", "_").split("_", 1)[0].lower()


def language_name(code: str) -> str:
    return LANGUAGES.get(code, code)


def _candidate_minors(catalog: Catalog) -> list[Version]:
    """spaCy minors to ask about: the known ones plus every minor a requirement names."""
    minors = set(KNOWN_SPACY_MINORS)
    for spec in {d.spacy_requirement for d in catalog.files} - {None}:
        for s in spec or ():
            try:
                v = Version(s.version.removesuffix(".*"))
            except InvalidVersion:
                continue
            if v.major < 100:
                minors.add(Version(f"{v.major}.{v.minor}"))
    return sorted(minors)


def build_catalogue(catalog: Catalog) -> Catalogue:
    """The catalogue's view of ``catalog``: languages, newest versions and, for every file,
    the spaCy minor series it runs on by ``install``'s rule (asked once per distinct spaCy
    requirement: a few dozen in all of spacy-models)."""
    targets: list[tuple[Version, SpacyTarget]] = [
        (m, spacy_target(str(m))) for m in _candidate_minors(catalog)
    ]
    by_spec: dict[str, tuple[Version, ...]] = {}

    def minors_of(d: Distribution) -> tuple[Version, ...]:
        spec = d.spacy_requirement
        if spec is None:
            return ()
        key = str(spec)
        if key not in by_spec:
            by_spec[key] = tuple(m for m, target in targets if target.admits(d))
        return by_spec[key]

    pipelines = []
    used: set[Version] = set()
    for project in catalog.projects.values():
        newest = project.latest() or project.latest(prereleases=True)
        newest_files = tuple(d for d in project.files if newest is not None and d.version == newest)
        file_minors = {d.filename: minors_of(d) for d in project.files}
        # what ``install`` chooses from (``install.choose``): hashed wheels, no pre-releases
        candidates = [d for d in project.files if d.kind == "wheel" and d.sha256
                      and d.version is not None and not d.version.is_prerelease]
        picks: dict[Version, Version] = {}
        for d in sorted(candidates, key=Distribution.sort_key):
            for minor in file_minors[d.filename]:
                picks[minor] = d.version  # type: ignore[assignment]  (the newest wins)
        used.update(picks)
        pipelines.append(Pipeline(
            project=project, lang=lang_of(project.display_name), newest=newest,
            newest_files=newest_files, minors=tuple(sorted(picks)),
            picks=dict(sorted(picks.items())), file_minors=file_minors,
        ))
    return Catalogue(catalog, tuple(pipelines), tuple(sorted(used)))


def minor_ranges(minors: Iterable[Version], every: Iterable[Version]) -> str:
    """``2.0, 2.1, 2.2, 3.7, 3.8`` → ``2.0-2.2, 3.7-3.8`` (an en dash): runs of neighbours in
    ``every``."""
    order = {m: i for i, m in enumerate(sorted(every))}
    chosen = sorted(set(minors), key=lambda m: order.get(m, -1))
    runs: list[list[Version]] = []
    for m in chosen:
        if runs and order.get(m) == order.get(runs[-1][-1], -9) + 1:
            runs[-1].append(m)
        else:
            runs.append([m])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}\u2013{r[-1]}" for r in runs)


@dataclass(frozen=True)
class ServeView:
    """What only a running ``serve`` knows: its URL, its cache, its counters."""

    index_url: str | None = None
    #: the operator set the URL (``[server] public_url``): the script keeps it as it is
    index_url_fixed: bool = False
    #: sha256 → size of every file in the cache
    cached: Mapping[str, int] = field(default_factory=dict)
    #: ``(label, text)`` lines for the cache summary, e.g. hit rate since start
    summary: tuple[str, ...] = ()

