"""The catalogue: a page people read (every pipeline, its versions, sizes, spaCy compatibility,
copy-paste install lines), beside the index machines read. Pure and deterministic.

Layout, the same in every static build and in ``serve``, all links relative so a folder works
under any path prefix (and from ``file://``):

- ``index.html``: one row per pipeline; ``catalogue.js`` filters it in the browser (without
  JavaScript the full table shows);
- ``catalogue/<normalized name>.html``: every file of one pipeline, and its install lines;
- ``catalogue.js``, ``catalogue.css``: the only script and style (no inline script or style,
  so the pages run under ``script-src 'self'; style-src 'self'``).

The data behind the pages (pipelines, versions, spaCy ranges) comes from
:mod:`spacy_index.render.catalogue_data`. Every value that comes from a release, a meta file or
an upstream is escaped.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from html import escape
from urllib.parse import quote, urlsplit

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from spacy_index.catalog import Catalog
from spacy_index.model import Distribution
from spacy_index.render.catalogue_data import (
    Catalogue,
    Pipeline,
    ServeView,
    build_catalogue,
    language_name,
    minor_ranges,
)

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
#: the URL of a file as written into the page at relative path ``page`` (see tree.Linker)
FileLink = Callable[[Distribution, str], str]


def _origin(dist: Distribution, page: str) -> str:
    return dist.url


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
