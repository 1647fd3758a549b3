"""The content-addressed file cache behind ``spacy-index serve`` (and ``install``/mirroring).

Files are keyed by their sha256 and live at ``root/files/<sha[:2]>/<sha>``. A file only gets
there after its size and sha256 were checked, so whatever is at a final path is complete and
correct (a file planted or damaged behind our back is caught by :meth:`FileCache.cached`, which
hashes every entry fully once per process).

How a download works (one *flight* per sha256, shared by everyone who asks for it):

* The flight is a detached task (:mod:`.store`). It writes ``root/partial/<sha>.partial``
  (``flock``-ed, so a second process on the same cache uses a private name instead of
  clobbering it), hashing while it streams (:mod:`.download`), then checks size and sha256 and
  ``os.replace``-s the file into place. Consumers that go away (a client disconnects, a task
  is cancelled) never stop it, except that with ``max_flights`` (serve: the size of the file
  pool) a new download never waits behind downloads nobody waits for any more: the oldest of
  those are cancelled to make room.
* Consumers *tail* the partial file (:mod:`.stream`).
* The flight always holds back the last ``chunk_size`` bytes it wrote; they are published only
  after the size and sha256 checks passed. A consumer can therefore never receive a complete
  file that is wrong: on a mismatch every consumer gets :class:`DigestMismatch` (or
  :class:`SizeMismatch`) instead of the last chunk, nothing is stored, and the failure is
  remembered for ``failure_ttl`` seconds so that retries fail fast without hitting upstream.
* A broken connection is resumed with a range request (:mod:`.download`).
* ``resume=True`` (``install``, ``build --mirror``; not ``serve``) keeps a download across
  runs: a flight that stops early (Ctrl-C, a lost network) leaves its partial file, and the
  next flight of the same sha256 re-hashes those bytes and asks only for the rest. A partial
  file that fails the final check is removed as usual.

Beside it: :mod:`.index` (what the folder holds, and its size bound), :mod:`.s3` (a bucket
shared by several servers); ``spacy-index cache ...`` is :mod:`spacy_index.cli.cache`.
"""

from spacy_index.cache.download import Upstream
from spacy_index.cache.store import FileCache
from spacy_index.errors import (
    CacheWriteError,
    InvalidDigest,
    SizeMismatch,
    UpstreamChanged,
    UpstreamFileError,
)

__all__ = [
    "CacheWriteError",
    "FileCache",
    "InvalidDigest",
    "SizeMismatch",
    "Upstream",
    "UpstreamChanged",
    "UpstreamFileError",
]
