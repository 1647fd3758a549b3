"""The server's configuration as the rest of the server sees it: frozen values, checked and
resolved by :func:`spacy_index.server.config.load_config` (the TOML file's schema and its
error messages live there)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spacy_index.http import redact_url
from spacy_index.model import name_matches

Kind = Literal["simple", "find-links", "github", "spacy-models", "folder"]
KINDS: tuple[str, ...] = ("simple", "find-links", "github", "spacy-models", "folder")
DEFAULT_UPSTREAM = "https://pypi.org/simple/"

#: spaCy pipeline names: ``{lang}_{kind}_{genre}_{size}``, any language and any words, so a
#: future ``xx_core_web_xl`` can never be answered by PyPI.
PIPELINE_GLOBS: tuple[str, ...] = tuple(
    f"{lang}-*-*-{size}"
    for lang in ("??", "???")
    for size in ("sm", "md", "lg", "trf", "xl", "xs", "xxl")
)


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: Kind
    projects: tuple[str, ...]
    #: may carry credentials in its userinfo (Prodigy's key): never shown, see display_url
    url: str | None = field(default=None, repr=False)
    repo: str | None = None
    path: Path | None = None
    #: resolved from the environment at load time; never printed (repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    credentials: Literal["none", "netrc", "keyring"] = "none"
    #: refuse (502) files this source lists without a sha256, instead of serving them unverified
    require_hashes: bool = False
    ca_bundle: str | None = None
    proxy: str | None = field(default=None, repr=False)

    @property
    def display_url(self) -> str | None:
        return redact_url(self.url) if self.url else None

    def serves(self, name: str) -> bool:
        return name_matches(name, self.projects)


@dataclass(frozen=True)
class CacheConfig:
    """``[cache]``: the file cache's bound and what is never evicted."""

    #: bytes; None = unbounded. Least recently used files and metadata go first.
    max_size: int | None = None
    #: project-name globs whose files are never evicted (``spacy-index cache warm`` fills them)
    pin: tuple[str, ...] = ()


#: connections asyncio accepts per wake-up of the listener (its ``backlog`` argument; the
#: kernel's listen backlog is set larger apart from it). Up to about three batches are open
#: beyond the table at once: accepted, not yet in it, or closed for room but not yet freed.
ACCEPT_BATCH = 16
LISTEN_BACKLOG = 1024


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: what one client connection may take (nginx-class defaults)."""

    #: client connections open at once; beyond it a new one gets 503 and is closed (the
    #: effective cap is lower when the process's open-file limit is: see ``effective``)
    max_connections: int = 1000
    #: seconds from a request's first byte (or the connection's start) to its blank line
    header_timeout: float = 15.0
    #: seconds a keep-alive connection may wait for its next request
    idle_timeout: float = 5.0
    #: bytes of one request's request line and headers together (431 beyond)
    max_header_size: int = 64 << 10
    #: bytes of one header line (431)
    max_header_line: int = 8 << 10
    #: bytes of the request target, path and query (414)
    max_url_length: int = 8 << 10
    #: header lines in one request (431 beyond)
    max_headers: int = 100
    #: seconds running transfers may finish after SIGTERM before they are cut
    shutdown_grace: float = 10.0
    #: bytes of one upstream page (PEP 691 JSON or HTML), on the wire and decoded
    max_page_size: int = 96 << 20
    #: files one upstream page may list (counted before it is parsed); PyPI's longest pages
    #: list about 15,000 (pydantic-core), so 50,000 leaves room
    max_page_files: int = 50_000
    #: bytes of one upstream ``.metadata`` file, on the wire and decoded
    max_metadata_size: int = 32 << 20
    #: seconds parsing one upstream page may take (in a worker thread), else a 502
    parse_budget: float = 10.0
    #: where upstream page fetches run: ``process`` (one process per source, off serve's
    #: GIL) or ``thread`` (a thread of serve's process)
    page_fetch: str = "process"

    def effective_connections(self, open_files: int | None) -> int:
        """``max_connections``, lowered so that the process keeps file descriptors for
        cached files, upstream connections, the listener and the connections of ``accept()``
        batches not yet in the table or not yet freed (``ACCEPT_BATCH``): a quarter of its
        limit, at least 64 + 4 * ``ACCEPT_BATCH``. A full table then makes room
        or refuses cleanly instead of failing ``accept()``."""
        if open_files is None or open_files <= 0:
            return self.max_connections
        reserve = max(64 + 4 * ACCEPT_BATCH, open_files // 4)
        return max(1, min(self.max_connections, open_files - reserve))


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: optional client authentication (off when nothing is set)."""

    #: an htpasswd file of bcrypt hashes (``htpasswd -B``)
    htpasswd: Path | None = None
    #: a file with one bearer token per line
    tokens_file: Path | None = None
    #: bearer tokens from the environment (resolved at load; never printed)
    tokens: tuple[str, ...] = field(default=(), repr=False)
    realm: str = "spacy-index"

    @property
    def enabled(self) -> bool:
        return bool(self.htpasswd or self.tokens_file or self.tokens)


@dataclass(frozen=True)
class ServeConfig:
    sources: tuple[SourceConfig, ...]
    upstream: str = DEFAULT_UPSTREAM
    page_ttl: float = 60.0
    refresh: float = 600.0
    stale_while_revalidate: float = 86400.0
    #: pages of a served wheel's requirements fetched behind, at most, per wheel (0: off)
    prefetch: int = 64
    #: TLS and proxy settings for the upstream, and for sources that set none of their own
    ca_bundle: str | None = None
    proxy: str | None = field(default=None, repr=False)
    public_url: str | None = None
    cache: CacheConfig = field(default_factory=lambda: CacheConfig())
    auth: AuthConfig = field(default_factory=lambda: AuthConfig())
    limits: LimitsConfig = field(default_factory=lambda: LimitsConfig())

    def route(self, name: str) -> SourceConfig | None:
        """The one source that answers ``name``, or ``None`` for the upstream."""
        for source in self.sources:
            if source.serves(name):
                return source
        return None


def default_spacy_models_source() -> SourceConfig:
    return SourceConfig(name="spacy-models", kind="spacy-models", projects=PIPELINE_GLOBS,
                        repo="explosion/spacy-models")

