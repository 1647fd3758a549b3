"""Publish a rendered tree (``{relative path: bytes or local file}``) to its target: a local
folder (:mod:`.folder`, swapped in atomically) or S3-compatible object storage (:mod:`.s3`,
written in link order). Both run the same checks first (:mod:`.guard`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from spacy_index.publish.folder import publish_folder
from spacy_index.publish.report import Content, PublishReport
from spacy_index.publish.s3 import publish_s3
from spacy_index.s3 import S3Location, parse_s3_url

__all__ = ["Content", "PublishReport", "Target", "parse_target", "publish"]

#: where a tree goes: a folder, or a bucket and prefix
Target = Path | S3Location


def parse_target(out: str | Path | S3Location) -> Target:
    """``s3://BUCKET[/PREFIX]`` is object storage (a bad one is a :class:`UsageError`), anything
    else a folder."""
    if isinstance(out, (Path, S3Location)):
        return out
    return parse_s3_url(out) if out.startswith("s3://") else Path(out)


def publish(
    tree: Mapping[str, Content],
    target: Target,
    *,
    allow_shrink: bool = False,
    s3_endpoint_url: str | None = None,
) -> PublishReport:
    """Make ``target`` hold exactly ``tree``, with each target's guarantees."""
    if isinstance(target, S3Location):
        s3 = publish_s3(tree, target, endpoint_url=s3_endpoint_url, allow_shrink=allow_shrink)
        return PublishReport(
            path=target, changed=s3.changed, files_written=s3.uploaded_objects,
            bytes_written=s3.uploaded_bytes, files_changed=s3.uploaded_objects + s3.deleted_objects,
        )
    return publish_folder(tree, target, allow_shrink=allow_shrink)
