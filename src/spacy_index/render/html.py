"""PEP 503 HTML, rendered from the PEP 691 dicts so both forms always agree.

Every value that reaches the page is escaped with :func:`html.escape` (quotes included).
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from packaging.utils import canonicalize_name

_HEAD = """<!DOCTYPE html>
<html>
  <head>
    <meta name="pypi:repository-version" content="{version}">{extra}
    <title>{title}</title>
  </head>
  <body>
    <h1>{title}</h1>
"""
_TAIL = """  </body>
</html>
"""


def _anchor(file: dict[str, Any], text: str | None = None) -> str:
    href = file["url"]
    sha = file.get("hashes", {}).get("sha256")
    if sha:
        href = f"{href.split('#')[0]}#sha256={sha}"
    attrs = [f'href="{escape(href)}"']
    if "requires-python" in file:
        attrs.append(f'data-requires-python="{escape(file["requires-python"])}"')
    meta = file.get("core-metadata")
    value = None
    if isinstance(meta, dict) and meta.get("sha256"):
        value = escape(f"sha256={meta['sha256']}")
    elif meta is True:
        value = "true"
    if value is not None:
        attrs.append(f'data-core-metadata="{value}"')
        attrs.append(f'data-dist-info-metadata="{value}"')
    if "yanked" in file:
        reason = file["yanked"] if isinstance(file["yanked"], str) else ""
        attrs.append(f'data-yanked="{escape(reason)}"')
    if "upload-time" in file:
        # not in PEP 503, but uv reads it (``--exclude-newer`` on HTML indexes)
        attrs.append(f'data-upload-time="{escape(file["upload-time"])}"')
    if file.get("provenance"):
        attrs.append(f'data-provenance="{escape(file["provenance"])}"')
    return f"    <a {' '.join(attrs)}>{escape(text or file['filename'])}</a><br>\n"


def project_page(doc: dict[str, Any], display_name: str | None = None) -> str:
    """The PEP 503 project page for one PEP 691 project dict."""
    head, tail = project_page_shell(doc, display_name)
    return head + "".join(_anchor(f) for f in doc["files"]) + tail


def file_anchor(file: dict[str, Any]) -> str:
    """One file's line of :func:`project_page` (its ``files`` are these lines, in order)."""
    return _anchor(file)


def project_page_shell(doc: dict[str, Any], display_name: str | None = None) -> tuple[str, str]:
    """:func:`project_page` before and after its file lines (``doc["files"]`` not read)."""
    title = f"Links for {display_name or doc['name']}"
    extra = ""
    status = doc.get("project-status")
    if status:  # PEP 792
        extra = f'\n    <meta name="pypi:project-status" content="{escape(status["status"])}">'
        if status.get("reason"):
            extra += f'\n    <meta name="pypi:project-status-reason" content="{escape(status["reason"])}">'
    return _HEAD.format(version=escape(doc["meta"]["api-version"]), title=escape(title),
                        extra=extra), _TAIL


def root_page(doc: dict[str, Any]) -> str:
    """The PEP 503 root page for one PEP 691 project-list dict."""
    parts = [_HEAD.format(version=escape(doc["meta"]["api-version"]), title="Simple index", extra="")]
    for project in doc["projects"]:
        name = project["name"]
        parts.append(f'    <a href="{escape(canonicalize_name(name))}/">{escape(name)}</a><br>\n')
    parts.append(_TAIL)
    return "".join(parts)


def find_links_page(files: Iterable[dict[str, Any]], title: str = "spaCy pipelines") -> str:
    """A flat page of links (pip's ``--find-links``/``-f``), every link hashed where known."""
    parts = [_HEAD.format(version="1.0", title=escape(title), extra="")]
    parts.extend(_anchor(f) for f in files)
    parts.append(_TAIL)
    return "".join(parts)
