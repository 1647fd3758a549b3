"""Regenerate the bundled snapshot from the recorded spacy-models inventory (run by hand).

The live way is `spacy-index snapshot --out FILE` (needs GitHub). This script exists because
the inventory was recorded once; it keeps only what is known to be true: names, URLs, tags,
each release's date (the tag date: `published_at`, else `created_at`) and the meta files'
checksums and requirements. The recorded sizes are approximate, so they are dropped (stored
as null). The recorded asset dates are copies of the tag dates, not the assets' own upload
times, so assets store null ("the release's date"), and offline builds give each file its
release's date as upload-time. The asset `digest` is dropped as the live API returns null for
these pre-June-2025 assets.

    python tools/snapshot_from_fixture.py [--fixture DIR] src/spacy_index/data/spacy-models.snapshot.json.gz

DIR holds `releases.json` (or `releases.json.gz`) and `repo-data.tar.gz`; it defaults to the
copy in tests/data/spacy-models. The project and its tests never read DIR: only this script.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

from spacy_index.model import Release, ReleaseAsset, parse_timestamp
from spacy_index.sources import snapshot as snapshots
from spacy_index.sources.spacy_models import parse_archive

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "spacy-models"
DATE = "2025-05-27"  # the repository commit the meta files were read from
NOTE = ("Recorded inventory: sizes unknown (null); asset upload times unknown, so each file "
        "is dated by its release (the tag date); hashes from meta files.")


def read_releases(folder: Path) -> list[dict[str, Any]]:
    plain = folder / "releases.json"
    if plain.exists():
        return json.loads(plain.read_text())
    return json.loads(gzip.decompress((folder / "releases.json.gz").read_bytes()))


def build(folder: Path) -> snapshots.Snapshot:
    raw = [r for r in read_releases(folder) if not r.get("draft")]
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
    )
    dates = {}
    for r in raw:
        date = parse_timestamp(r.get("published_at")) or parse_timestamp(r.get("created_at"))
        if date is not None:
            dates[r["tag_name"]] = date
    metas, _ = parse_archive((folder / "repo-data.tar.gz").read_bytes())
    return snapshots.Snapshot(
        api_url="https://api.github.com",
        repo="explosion/spacy-models",
        date=DATE,
        releases=releases,
        metas=metas,
        note=NOTE,
        release_dates=dates,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="snapshot file to write (.json.gz)")
    parser.add_argument("--fixture", type=Path, default=DATA,
                        help="folder with releases.json[.gz] and repo-data.tar.gz")
    args = parser.parse_args(argv)
    snap = build(args.fixture)
    snapshots.write(snap, args.out)
    dated = sum(1 for r in snap.releases if snap.release_date(r) is not None)
    print(f"wrote {args.out}: {len(snap.releases)} releases ({dated} dated), "
          f"{len(snap.metas)} meta files")


if __name__ == "__main__":
    main()
