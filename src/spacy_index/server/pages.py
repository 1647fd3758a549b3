"""Rendered project pages as the server keeps them: one :class:`PageEntry` per (name, content
type), and the rendering itself (pure: safe in a worker thread)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

from spacy_index.model import Distribution, Project
from spacy_index.render import html, pep691
from spacy_index.render.json_api import dumps, dumps_value, pypi_project_document
from spacy_index.render.pep691 import JSON_CONTENT_TYPE
from spacy_index.server.responses import body_etag, page_response


@dataclass(frozen=True)
class PageParts:
    """Where a rendered project page has each file, so that a re-render of the same project
    (after metadata arrived for one of its wheels) encodes only the files whose advertised
    metadata hash changed and copies the rest from the last body: a page of 15,000 files
    (pydantic-core, 5 MB of JSON) re-renders in milliseconds, not half a second."""

    #: per file, in order: the metadata sha256 the page advertises (None: ``true`` or none)
    metas: tuple[str | None, ...]
    #: per file: start and end of its fragment in the body (2 numbers per file)
    spans: array


class PageEntry(NamedTuple):
    """A rendered page, current while its project object and metadata version are."""

    project: Project
    #: the project's metadata version (MetadataStore.version_of) it was rendered at
    version: int
    body: bytes
    etag: str
    #: the raw headers of the 200 answer, without content-length (the PyPI JSON: its base)
    headers: list[tuple[bytes, bytes]]
    #: where the files are in the body (project pages only)
    parts: PageParts | None


def local_url(d: Distribution) -> str:
    return f"../../files/{quote(d.filename)}"


def entry_size(entry: PageEntry) -> int:
    parts = entry.parts
    return len(entry.body) + 512 + (0 if parts is None else 24 * len(parts.metas))


def pypi_json_entry(project: Project, base: str) -> PageEntry:
    """Render the PyPI-style JSON for ``base`` (the server's own URL)."""
    doc = pypi_project_document(project, lambda d: f"{base}/files/{quote(d.filename)}")
    body = dumps(doc).encode()
    return PageEntry(project, 0, body, body_etag(body), [(b"base", base.encode())], None)


def local_file_dict(d: Distribution, meta_sha: str | None) -> dict[str, Any]:
    """``pep691.file_dict`` of the file as ``Server.local_view`` shows it."""
    entry = pep691.file_dict(d, local_url)
    entry.pop("core-metadata", None)
    if meta_sha:
        entry["core-metadata"] = {"sha256": meta_sha}
    elif d.kind == "wheel" and d.sha256 is not None:
        entry["core-metadata"] = True
    return entry


def render_entry(project: Project, ctype: str, version: int, metas: list[str | None],
                 previous: PageEntry | None = None) -> PageEntry:
    """The bytes of ``pep691.project_dict(server.local_view(project))`` as JSON or HTML, file by
    file, ``metas`` being what each file advertises. With ``previous`` (the last render of this
    page) of the same project object, a file whose advertised metadata did not change is copied
    from its body, not encoded again."""
    old = previous.parts if previous is not None and previous.project is project else None
    if old is not None and len(old.metas) != len(metas):
        old = None
    shell = pep691.project_shell(project)
    if ctype == JSON_CONTENT_TYPE:
        text = dumps(shell)  # '{"files":[],"meta":...}\n' (sorted keys: "files" first)
        assert text.startswith('{"files":[]')
        head, tail, sep = text[:10].encode(), text[10:].encode(), b","
    else:
        head_s, tail_s = html.project_page_shell(shell, project.display_name)
        head, tail, sep = head_s.encode(), tail_s.encode(), b""
    last = memoryview(previous.body) if old is not None else None  # type: ignore[union-attr]
    parts: list[bytes | memoryview] = [head]
    spans = array("Q")
    at = len(head)
    for i, (d, meta) in enumerate(zip(project.files, metas, strict=True)):
        if i and sep:
            parts.append(sep)
            at += len(sep)
        if last is not None and old is not None and old.metas[i] == meta:
            fragment: bytes | memoryview = last[old.spans[2 * i]:old.spans[2 * i + 1]]
        else:
            entry = local_file_dict(d, meta)
            fragment = (dumps_value(entry) if ctype == JSON_CONTENT_TYPE
                        else html.file_anchor(entry)).encode()
        parts.append(fragment)
        spans.append(at)
        at += len(fragment)
        spans.append(at)
    parts.append(tail)
    body = b"".join(parts)
    etag = body_etag(body)
    headers = [(k, v) for k, v in page_response(None, body, ctype, etag=etag).raw_headers
               if k != b"content-length"]
    return PageEntry(project, version, body, etag, headers, PageParts(tuple(metas), spans))
