"""Regenerate the bundled snapshot from the recorded spacy-models inventory in tests/data.

The live way is `spacy-index snapshot --out FILE` (needs GitHub). This script exists because
the inventory in tests/data was recorded once; it keeps only what is known to be true:
names, URLs, tags and the meta files' checksums and requirements. The recorded sizes are
approximate and the asset dates are tag dates, so both are dropped (stored as null), and the
asset ``digest`` is dropped as the live API returns null for these pre-June-2025 assets.

    python tools/snapshot_from_fixture.py src/spacy_index/data/spacy-models.snapshot.json.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from spacy_index.model import Release, ReleaseAsset
from spacy_index.sources import snapshot as snapshots
from spacy_index.sources.spacy_models import parse_archive

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "spacy-models"
DATE = "2025-05-27"  # the repository commit the meta files were read from


def main(out: Path) -> None:
    raw = json.loads(gzip.decompress((DATA / "releases.json.gz").read_bytes()))
    releases = tuple(
        Release(
            tag=r["tag_name"],
            release_id=r.get("id"),
            prerelease=bool(r.get("prerelease")),
            assets=tuple(
                sorted(
                    (ReleaseAsset(name=a["name"], url=a["browser_download_url"]) for a in r["assets"]),
                    key=lambda a: a.name,
                )
            ),
        )
        for r in raw
        if not r.get("draft")
    )
    metas, _ = parse_archive((DATA / "repo-data.tar.gz").read_bytes())
    snap = snapshots.Snapshot(
        api_url="https://api.github.com",
        repo="explosion/spacy-models",
        date=DATE,
        releases=releases,
        metas=metas,
        note="Recorded inventory: sizes and upload times unknown (null), hashes from meta files.",
    )
    snapshots.write(snap, out)
    print(f"wrote {out}: {len(releases)} releases, {len(metas)} meta files")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
