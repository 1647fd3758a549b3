"""``--index``: where it points (a URL or a folder made by ``build``) and the requested
projects' distributions as its pages list them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from packaging.utils import NormalizedName, canonicalize_name

from spacy_index.catalog import Catalog
from spacy_index.errors import SpacyIndexError, UpstreamUnreachable, UsageError
from spacy_index.install.target import split_model
from spacy_index.model import Distribution

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class IndexLocation:
    """``--index``: an http(s) index (a static one, or ``spacy-index serve``), or a folder
    made by ``build`` / ``build --mirror`` (given as a path or a ``file://`` URL)."""

    text: str
    #: the folder that holds ``<project>/index.json`` (a build's ``simple/``), for local ones
    folder: Path | None
    #: the index URL installers get (``--index-url``), ending in ``/``
    url: str


def parse_index(text: str) -> IndexLocation:
    from urllib.request import url2pathname

    if text.startswith(("http://", "https://")):
        return IndexLocation(text, None, text if text.endswith("/") else text + "/")
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"--index {text}: a file:// URL names a folder on this machine "
                             "(file:///path/to/index/)")
        path = Path(url2pathname(unquote(parts.path)))
    elif "://" in text:
        raise UsageError(f"--index {text}: give an http(s):// index, a file:// URL or a "
                         "folder made by `spacy-index build`")
    else:
        path = Path(text).expanduser()
    path = path.resolve()
    if not path.is_dir():
        raise UsageError(f"--index {text}: no such folder (give a folder made by "
                         "`spacy-index build`, a file:// URL or an http(s):// index)")
    simple = path / "simple" if (path / "simple").is_dir() else path
    return IndexLocation(text, simple, simple.as_uri() + "/")


def catalog_from_index(index: str | IndexLocation, names: Sequence[str], known: Catalog,
                       client: httpx.Client | None = None) -> Catalog:
    """Distributions of ``names`` as an index lists them, in PEP 691 JSON or PEP 503 HTML
    (relative links resolved against the page); spaCy requirements come from the catalog by
    filename, else from PEP 658 metadata (the ``.metadata`` file beside a mirror's wheel)."""
    from urllib.parse import urldefrag

    from spacy_index.simple.parse import parse_page

    where = parse_index(index) if isinstance(index, str) else index
    by_filename = {d.filename: d for d in known.files}
    dists: list[Distribution] = []
    for raw in names:
        name = canonicalize_name(split_model(raw)[0])
        page = _project_page(where, name, client)
        if page is None:
            continue
        body, ctype, page_url = page
        try:
            parsed = parse_page(body, ctype, page_url, name)
        except (ValueError, RecursionError) as e:
            raise SpacyIndexError(f"the index {where.text} sent an unreadable page for {name!r}") from e
        for d in parsed.dists:
            if d.version is None:
                continue
            d = replace(d, url=urldefrag(d.url)[0])
            reqs = by_filename[d.filename].requires_dist if d.filename in by_filename else None
            info = parsed.files.get(d.filename)
            if reqs is None and info is not None and info.has_metadata:
                reqs = _requires_from_metadata(d.url + ".metadata", client)
            dists.append(replace(d, requires_dist=reqs))
    return Catalog.from_distributions(dists, source=where.text)


def _project_page(where: IndexLocation, name: NormalizedName,
                  client: httpx.Client | None) -> tuple[bytes, str, str] | None:
    json_type = "application/vnd.pypi.simple.v1+json"
    if where.folder is not None:
        folder = where.folder / name
        if (folder / "index.json").is_file():
            return (folder / "index.json").read_bytes(), json_type, folder.as_uri() + "/"
        if (folder / "index.html").is_file():
            return (folder / "index.html").read_bytes(), "text/html", folder.as_uri() + "/"
        return None
    import httpx

    from spacy_index.http import describe_error, redact_url

    assert client is not None
    url = where.url + f"{name}/"
    try:
        resp = client.get(url, headers={"Accept": f"{json_type}, text/html;q=0.1"})
    except httpx.TransportError as e:
        raise UpstreamUnreachable(f"the index {redact_url(where.text)}", describe_error(e, url)) from None
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise SpacyIndexError(f"the index {redact_url(where.text)} answered HTTP "
                              f"{resp.status_code} for {name!r}")
    ctype = resp.headers.get("content-type", "text/html").split(";")[0].strip().lower()
    return resp.content, ctype, str(resp.url)


def _requires_from_metadata(url: str, client: httpx.Client | None) -> tuple[str, ...] | None:
    from spacy_index.wheelmeta.requires import requires_dist

    if url.startswith("file:"):
        try:
            data = local_path(url).read_bytes()
        except OSError:
            return None
    else:
        import httpx

        if client is None:
            return None
        try:
            resp = client.get(url)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        data = resp.content
    return requires_dist(data)


def local_path(url: str) -> Path:
    from urllib.request import url2pathname

    return Path(url2pathname(unquote(urlsplit(url).path)))

