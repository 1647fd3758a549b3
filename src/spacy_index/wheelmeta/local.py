"""The core metadata of a wheel on disk, read with :mod:`zipfile`."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from spacy_index.errors import CorruptWheel, MetadataError
from spacy_index.gcpause import gc_paused
from spacy_index.wheelmeta.member import (
    MAX_CENTRAL_DIRECTORY,
    CappedFile,
    TooBig,
    metadata_info,
    zip_error,
)


def metadata_from_wheel_file(path: Path, filename: str | None = None) -> bytes:
    """Byte-exact content of the wheel's ``<name>-<version>.dist-info/METADATA``.

    ``filename`` is the wheel's filename when ``path`` has another name (a temporary file).
    A central directory over :data:`MAX_CENTRAL_DIRECTORY` is refused before zipfile reads
    it into memory (a hostile upstream's 401 MiB file claiming 400 MiB).
    """
    path = Path(path)
    filename = filename or path.name
    try:
        with open(path, "rb") as raw, gc_paused():
            capped = CappedFile(raw, MAX_CENTRAL_DIRECTORY)
            try:
                zf = zipfile.ZipFile(capped)  # type: ignore[arg-type]
            except TooBig as big:
                raise CorruptWheel(f"the central directory claims {big.size:,} bytes, over the "
                                   f"{MAX_CENTRAL_DIRECTORY:,} byte limit") from None
            capped.cap = None
            with zf:
                return zf.read(metadata_info(zf, filename, remote=False))
    except MetadataError as e:
        if e.filename and e.source:
            raise
        raise e.with_context(filename=filename, source=str(path)) from e.__cause__
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CorruptWheel(zip_error(e), filename=filename, source=str(path)) from e
    except NotImplementedError as e:
        raise MetadataError(str(e), filename=filename, source=str(path)) from e
