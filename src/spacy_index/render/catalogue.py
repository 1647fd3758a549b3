"""The catalogue: a page people read (every pipeline, its versions, sizes, spaCy compatibility,
copy-paste install lines), beside the index machines read. Pure and deterministic.

Layout, the same in every static build and in ``serve``, all links relative so a folder works
under any path prefix (and from ``file://``):

- ``index.html``: one row per pipeline; ``catalogue.js`` filters it in the browser (without
  JavaScript the full table shows);
- ``catalogue/<normalized name>.html``: every file of one pipeline, and its install lines;
- ``catalogue.js``, ``catalogue.css``: the only script and style (no inline script or style,
  so the pages run under ``script-src 'self'; style-src 'self'``).

spaCy compatibility is decided by the rule ``spacy-index install --spacy X.Y`` uses:
:func:`spacy_index.install.resolve_spacy` makes the target, :meth:`SpacyTarget.admits` says yes
or no. Every value that comes from a release, a meta file or an upstream is escaped.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote, urlsplit

from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName
from packaging.version import InvalidVersion, Version

from spacy_index.catalog import Catalog
from spacy_index.install import KNOWN_SPACY_MINORS, Environment, SpacyTarget, resolve_spacy
from spacy_index.model import Distribution, Project

INDEX_PAGE = "index.html"
SCRIPT = "catalogue.js"
STYLE = "catalogue.css"
PIPELINE_DIR = "catalogue"
#: the policy the pages are written for; ``serve`` sends it as a header (plus
#: ``frame-ancestors``, which a ``<meta>`` policy may not carry)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")
#: where the index is, as the pages say it when no URL is known (JavaScript puts the real one)
URL_PLACEHOLDER = "https://HOST/PREFIX/simple/"
SOURCE_NAME = "spacy-models"

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

#: the URL of a file as written into the page at relative path ``page`` (see tree.Linker)
FileLink = Callable[[Distribution, str], str]


def _origin(dist: Distribution, page: str) -> str:
    return dist.url


# --------------------------------------------------------------------------- the model
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
    env = Environment("", None, {}, False)
    targets: list[tuple[Version, SpacyTarget]] = [
        (m, resolve_spacy(str(m), env)) for m in _candidate_minors(catalog)
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


# --------------------------------------------------------------------------- formatting
def _e(value: object) -> str:
    return escape(str(value), quote=True)


def size_text(size: int) -> str:
    """Decimal units, as GitHub and the meta files give them."""
    if size >= 1_000_000_000:
        return f"{size / 1e9:.2f} GB"
    if size >= 1_000_000:
        return f"{size / 1e6:.1f} MB"
    if size >= 1000:
        return f"{size / 1e3:.0f} kB"
    return f"{size} B"


def _size_cell(d: Distribution | None) -> str:
    if d is None:
        return '<td class="num">—</td>'
    if d.size is not None:
        return f'<td class="num" data-bytes="{d.size}" title="{d.size:,} bytes">{size_text(d.size)}</td>'
    if d.meta is not None and d.meta.size_text:
        return (f'<td class="num" title="approximate: from the pipeline&#39;s meta file (this '
                f'build does not know the file&#39;s exact size)">≈{_e(d.meta.size_text)}</td>')
    return '<td class="num">—</td>'


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


def _safe_href(url: str) -> str | None:
    """``url`` if it may be a link target (http(s) or relative), else None."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https", "") and not url.lower().startswith(("//", "javascript:")):
        return url
    return None


def _date(d: Distribution) -> str:
    return d.upload_time.strftime("%Y-%m-%d") if d.upload_time is not None else "—"


def pipeline_path(name: str) -> str:
    return f"{PIPELINE_DIR}/{quote(name)}.html"


# --------------------------------------------------------------------------- serve's extras
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


# --------------------------------------------------------------------------- pages
_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<meta name="spacy-index:root" content="{root}">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}{style}">
<script src="{root}{script}" defer></script>
</head>
<body>
"""
_TAIL = """</body>
</html>
"""


def _head(title: str, root: str) -> str:
    return _HEAD.format(csp=_e(CSP), root=root, title=_e(title), style=STYLE, script=SCRIPT)


def _index_url(view: ServeView | None) -> str:
    """The index URL as a span ``catalogue.js`` rewrites from the page's own location."""
    url = view.index_url if view and view.index_url else URL_PLACEHOLDER
    fixed = " data-fixed" if view and view.index_url_fixed else ""
    return f'<span class="index-url"{fixed}>{_e(url)}</span>'


def render_index(cat: Catalogue, *, view: ServeView | None = None) -> str:
    """``index.html``: the table of pipelines, with the filters ``catalogue.js`` drives."""
    catalog = cat.catalog
    projects, files, hashed = catalog.counts()
    parts = [_head("spaCy pipelines", "")]
    parts.append('<header>\n<h1>spaCy pipelines</h1>\n')
    parts.append(
        f'<p class="lede">{projects:,} pipelines, {files:,} files ({hashed:,} with a sha256). '
        f'Install them with pip, uv, poetry or pdm from this index: '
        f'<code>{_index_url(view)}</code>.</p>\n'
    )
    source = catalog.source or SOURCE_NAME
    dated = f", snapshot of {_e(catalog.snapshot_date)}" if catalog.snapshot_date else ""
    flat = ', <a href="find-links.html">find-links page</a>' if view is None else ""
    parts.append(f'<p class="source">Source: {_e(source)}{dated}. Machine-readable: '
                 f'<a href="simple/">PEP 503 index</a>{flat}.</p>\n')
    if view is not None and view.summary:
        parts.append('<ul class="cache" aria-label="File cache">\n')
        parts.extend(f"<li>{_e(line)}</li>\n" for line in view.summary)
        parts.append("</ul>\n")
    parts.append("</header>\n<main>\n")
    parts.append(_filters(cat))
    parts.append('<table id="pipelines">\n<caption>Pipelines: language, newest version, the '
                 "size of its wheel, the spaCy versions that a hashed wheel of it runs on (the "
                 "versions <code>spacy-index install --spacy X.Y</code> finds one for), licence "
                 "and description</caption>\n<thead><tr>"
                 '<th scope="col">Language</th><th scope="col">Pipeline</th>'
                 '<th scope="col">Version</th><th scope="col">Size</th>'
                 '<th scope="col">spaCy</th><th scope="col">Licence</th>'
                 + ('<th scope="col">Cached</th>' if view is not None else "")
                 + '<th scope="col">Description</th></tr></thead>\n<tbody>\n')
    for p in cat.pipelines:
        parts.append(_index_row(p, cat, view))
    parts.append("</tbody>\n</table>\n")
    parts.append('<p id="none" class="none" hidden>No pipeline matches these filters.</p>\n')
    parts.append("</main>\n")
    parts.append(_footer())
    parts.append(_TAIL)
    return "".join(parts)


def _filters(cat: Catalogue) -> str:
    langs: dict[str, int] = {}
    for p in cat.pipelines:
        langs[p.lang] = langs.get(p.lang, 0) + 1
    per_minor = {m: sum(1 for p in cat.pipelines if m in p.picks) for m in cat.minors}
    total = len(cat.pipelines)
    out = ['<div id="filters" class="filters" role="search" aria-label="Filter pipelines" hidden>\n',
           '<label for="q">Search</label> <input type="search" id="q" name="q" '
           'placeholder="name, description, licence" autocomplete="off">\n',
           '<label for="lang">Language</label> <select id="lang" name="lang">'
           '<option value="">all languages</option>']
    for code in sorted(langs, key=lambda c: (language_name(c).lower(), c)):
        out.append(f'<option value="{_e(code)}">{_e(language_name(code))} ({_e(code)}), '
                   f"{langs[code]}</option>")
    out.append('</select>\n<label for="spacy">Runs on spaCy</label> <select id="spacy" '
               'name="spacy"><option value="">any version</option>')
    for m in sorted(cat.minors, reverse=True):
        out.append(f'<option value="{_e(m)}">{_e(m)} ({per_minor[m]})</option>')
    out.append("</select>\n</div>\n")
    out.append(f'<p id="count" class="count" role="status" aria-live="polite">'
               f"{total:,} pipelines</p>\n")
    return "".join(out)


def _index_row(p: Pipeline, cat: Catalogue, view: ServeView | None) -> str:
    minors = " ".join(str(m) for m in p.minors)
    picks = " ".join(f"{m}={v}" for m, v in p.picks.items())
    version = _e(p.newest) if p.newest is not None else "—"
    if p.newest is not None and p.newest.is_prerelease:
        version += ' <span class="pre">pre-release</span>'
    version = f'<span class="newest">{version}</span>'
    spacy = _e(minor_ranges(p.minors, cat.minors)) if p.minors else _no_wheel(p)
    cells = [
        f'<tr data-lang="{_e(p.lang)}" data-spacy="{_e(minors)}" data-pick="{_e(picks)}">',
        f'<td><abbr title="{_e(language_name(p.lang))}">{_e(p.lang)}</abbr></td>',
        f'<td><a href="{_e(pipeline_path(p.name))}">{_e(p.display_name)}</a></td>',
        f'<td class="v">{version}</td>',
        _size_cell(p.newest_wheel),
        f'<td class="sp">{spacy}</td>',
        f"<td>{_e(p.license) if p.license else '—'}</td>",
    ]
    if view is not None:
        hashed = [d for d in p.project.files if d.sha256]
        n = sum(1 for d in hashed if d.sha256 in view.cached)
        cells.append(f'<td class="num">{n} of {len(p.project.files)}</td>')
    cells.append(f'<td class="desc">{_e(p.description) if p.description else "—"}</td>')
    return "".join(cells) + "</tr>\n"


def _no_wheel(p: Pipeline) -> str:
    """The spaCy cell of a pipeline with no hashed stable wheel: its newest requirement."""
    specs = [d.spacy_requirement for d in p.newest_files if d.spacy_requirement is not None]
    if not specs:
        return "—"
    return (f'<span title="no wheel with a known sha256: spacy-index install does not install '
            f'it">requires <code>spacy{_e(specs[-1])}</code></span>')


def _footer() -> str:
    return ('<footer><p>Built by spacy-index. Every file is listed with its sha256 where known; '
            "pip, uv, poetry and pdm verify it.</p></footer>\n")


def _copyable(ident: str, label: str, text: str, *, lang: str = "") -> str:
    """A code block with a copy button (``catalogue.js`` shows the button)."""
    cls = f' class="{lang}"' if lang else ""
    return (f'<div class="snippet"><pre><code id="{_e(ident)}"{cls}>{text}</code></pre>'
            f'<button type="button" class="copy" data-copy="{_e(ident)}" hidden>'
            f'<span class="label">Copy</span><span class="visually-hidden"> {_e(label)}</span>'
            "</button></div>\n")


def _install_lines(p: Pipeline, view: ServeView | None, version: Version) -> str:
    name = _e(p.display_name)
    norm = _e(p.name)
    ver = _e(version)
    url = _index_url(view)
    files = sorted((d for d in p.project.files if d.version == version),
                   key=lambda d: (d.kind != "wheel", d.filename))  # the wheel's hash first
    hashes = " ".join(f"--hash=sha256:{_e(d.sha256)}" for d in files if d.sha256)
    wheel = next((d for d in files if d.kind == "wheel" and d.sha256), None)
    out = [f'<section aria-labelledby="install">\n<h2 id="install">Install {name} {ver}</h2>\n']
    if view is None:
        out.append('<p class="note">This index holds only spaCy pipelines: with pip, install '
                   "spaCy first (from PyPI), then the pipeline with this index alone; uv, "
                   "poetry and pdm take just the pipeline from it.</p>\n")
    out.append('<div class="tools">\n<div class="tool">\n<h3>pip</h3>\n')
    out.append(_copyable("pip", "pip command",
                         f"pip install --index-url {url} {name}=={ver}"))
    out.append("</div>\n")
    out.append('<div class="tool">\n<h3>spacy-index</h3>\n')
    if wheel is not None:
        out.append(_copyable("spacy-index", "spacy-index command",
                             f"spacy-index install --index {url} {name}=={ver}"))
    else:
        out.append('<p class="note">No wheel of this version has a known sha256, so '
                   "<code>spacy-index install</code> does not install it.</p>\n")
    out.append("</div>\n")
    out.append('<div class="tool">\n<h3>uv</h3>\n<p>In <code>pyproject.toml</code> (an explicit '
               "index: only the packages pinned to it come from it), then <code>uv add</code>:"
               "</p>\n")
    out.append(_copyable("uv-toml", "uv index settings",
                         f'[[tool.uv.index]]\nname = "{SOURCE_NAME}"\nurl = "{url}"\n'
                         "explicit = true", lang="toml"))
    out.append(_copyable("uv", "uv command",
                         f"uv add --index {SOURCE_NAME}={url} {name}=={ver}"))
    out.append('</div>\n<div class="tool">\n<h3>poetry</h3>\n')
    out.append(_copyable("poetry", "poetry source",
                         f'[[tool.poetry.source]]\nname = "{SOURCE_NAME}"\nurl = "{url}"\n'
                         f'priority = "explicit"\n'
                         f"# then: poetry add --source {SOURCE_NAME} {name}=={ver}",
                         lang="toml"))
    out.append('</div>\n<div class="tool">\n<h3>pdm</h3>\n')
    out.append(_copyable("pdm", "pdm source",
                         f'[[tool.pdm.source]]\nname = "{SOURCE_NAME}"\nurl = "{url}"\n'
                         f'include_packages = ["{norm}"]\n# then: pdm add {name}=={ver}',
                         lang="toml"))
    out.append('</div>\n<div class="tool">\n<h3>requirements.txt</h3>\n')
    if hashes:
        out.append(_copyable("requirements", "requirements line",
                             f"{norm}=={ver} {hashes}"))
    else:
        out.append('<p class="note">No file of this version has a known sha256.</p>\n')
    out.append("</div>\n</div>\n</section>\n")
    return "".join(out)


def render_pipeline(p: Pipeline, cat: Catalogue, *, links: FileLink = _origin,
                    view: ServeView | None = None) -> str:
    """``catalogue/<name>.html``: every file with date, size, sha256 and spaCy range, and
    the install lines for this index."""
    page = pipeline_path(p.name)
    root = "../"
    parts = [_head(f"{p.display_name}: spaCy pipeline", root)]
    parts.append(f'<header>\n<p class="crumb"><a href="{root}{INDEX_PAGE}">All pipelines</a></p>\n'
                 f"<h1>{_e(p.display_name)}</h1>\n")
    if p.description:
        parts.append(f'<p class="lede">{_e(p.description)}</p>\n')
    newest = _e(p.newest) if p.newest is not None else "—"
    runs_on = _e(minor_ranges(p.minors, cat.minors)) if p.minors else _no_wheel(p)
    parts.append("<dl>\n"
                 f"<dt>Language</dt><dd>{_e(language_name(p.lang))} ({_e(p.lang)})</dd>\n"
                 f"<dt>Newest version</dt><dd>{newest}</dd>\n"
                 f"<dt>Runs on spaCy</dt><dd>{runs_on}</dd>\n"
                 f"<dt>Licence</dt><dd>{_e(p.license) if p.license else '—'}</dd>\n"
                 f"<dt>Files</dt><dd>{len(p.project.files):,}</dd>\n"
                 f'<dt>Index page</dt><dd><a href="{root}simple/{_e(quote(p.name))}/">'
                 f"simple/{_e(p.name)}/</a></dd>\n"
                 "</dl>\n</header>\n<main>\n")
    if p.newest is not None:
        parts.append(_install_lines(p, view, p.newest))
    parts.append('<section aria-labelledby="versions">\n<h2 id="versions">Every version</h2>\n'
                 '<table class="files">\n<thead><tr><th scope="col">Version</th>'
                 '<th scope="col">Date</th><th scope="col">File</th><th scope="col">Size</th>'
                 '<th scope="col">spaCy</th><th scope="col">sha256</th>'
                 + ('<th scope="col">Cached</th>' if view is not None else "")
                 + '<th scope="col">Requirement</th></tr></thead>\n<tbody>\n')
    for i, d in enumerate(sorted(p.project.files, key=Distribution.sort_key, reverse=True)):
        parts.append(_file_row(i, d, p, cat, page, links, view))
    parts.append("</tbody>\n</table>\n</section>\n</main>\n")
    parts.append(_footer())
    parts.append(_TAIL)
    return "".join(parts)


def _file_row(i: int, d: Distribution, p: Pipeline, cat: Catalogue, page: str,
              links: FileLink, view: ServeView | None) -> str:
    version = _e(d.release)
    if d.version is not None and d.version.is_prerelease:
        version += ' <span class="pre">pre</span>'
    href = _safe_href(links(d, page))
    name = _e(d.filename)
    link = f'<a href="{_e(href)}">{name}</a>' if href else name
    spec: SpecifierSet | None = d.spacy_requirement
    minors = p.file_minors.get(d.filename, ())
    if spec is None:
        spacy = "—"
    else:
        spacy = f"<code>{_e(spec)}</code>"
        if minors:
            spacy += f" ({_e(minor_ranges(minors, cat.minors))})"
    sha = f'<code class="sha">{_e(d.sha256)}</code>' if d.sha256 else "unknown"
    cells = [f"<tr><td>{version}</td><td>{_e(_date(d))}</td><td>{link}</td>",
             _size_cell(d), f"<td>{spacy}</td><td>{sha}</td>"]
    if view is not None:
        cells.append("<td>yes</td>" if d.sha256 and d.sha256 in view.cached else "<td>no</td>")
    if d.sha256 and d.version is not None:
        req = f"{_e(p.name)}=={_e(d.version)} --hash=sha256:{_e(d.sha256)}"
        cells.append(f'<td>{_copyable(f"req-{i}", f"requirement for {d.filename}", req)}</td>')
    else:
        cells.append("<td>—</td>")
    return "".join(cells) + "</tr>\n"


# --------------------------------------------------------------------------- assets, tree
def asset(name: str) -> bytes:
    """``catalogue.js`` or ``catalogue.css``, as shipped in the package."""
    if name not in (SCRIPT, STYLE):
        raise KeyError(name)
    return importlib.resources.files("spacy_index.render").joinpath(name).read_bytes()


def catalogue_files(catalog: Catalog, links: FileLink = _origin) -> dict[str, bytes]:
    """The catalogue's part of a static index tree: ``{relative path: bytes}``."""
    cat = build_catalogue(catalog)
    out = {INDEX_PAGE: render_index(cat).encode(), SCRIPT: asset(SCRIPT), STYLE: asset(STYLE)}
    for p in cat.pipelines:
        out[pipeline_path(p.name)] = render_pipeline(p, cat, links=links).encode()
    return out
