"""Server configuration: which source answers which project names.

A TOML file (all keys optional)::

    [server]
    upstream = "https://pypi.org/simple/"   # every name no source claims
    page_ttl = 60                            # seconds an upstream page is fresh
    stale_while_revalidate = 300             # then answered at once, refreshed behind
    spacy_models = true                      # route spaCy pipeline names (the default)
    ca_bundle = "/etc/company-ca.pem"        # verify HTTPS with this CA (default: system store)
    proxy = "http://proxy.internal:3128"     # default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY

    [[source]]
    name = "prodigy"
    kind = "find-links"        # "simple" | "find-links" | "github" | "spacy-models" | "folder"
    url = "https://download.prodi.gy/"
    username = "${PRODIGY_KEY}" # from the environment; or credentials = "netrc" | "keyring"
    projects = ["prodigy", "prodigy-*"]
    require_hashes = false     # true: refuse files the source lists without a sha256
    ca_bundle = "…"            # per source; else [server].ca_bundle
    proxy = "…"                # per source; else [server].proxy

Sources are tried in file order; the first whose ``projects`` globs match a name answers it,
alone: a routed name is never merged with the upstream. Globs compare normalized names.
Secrets are only ever taken from the environment, netrc or keyring, never from the file.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from spacy_index.errors import UsageError
from spacy_index.http import redact_url
from spacy_index.model import name_matches

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
class ServeConfig:
    sources: tuple[SourceConfig, ...]
    upstream: str = DEFAULT_UPSTREAM
    page_ttl: float = 60.0
    refresh: float = 600.0
    stale_while_revalidate: float = 300.0
    #: TLS and proxy settings for the upstream, and for sources that set none of their own
    ca_bundle: str | None = None
    proxy: str | None = field(default=None, repr=False)

    def route(self, name: str) -> SourceConfig | None:
        """The one source that answers ``name``, or ``None`` for the upstream."""
        for source in self.sources:
            if source.serves(name):
                return source
        return None


def default_spacy_models_source() -> SourceConfig:
    return SourceConfig(name="spacy-models", kind="spacy-models", projects=PIPELINE_GLOBS,
                        repo="explosion/spacy-models")


def load_config(
    path: Path | None, env: Mapping[str, str], *, upstream: str | None = None,
    ca_bundle: str | None = None,
) -> ServeConfig:
    """Read ``path`` (or build the default), expanding ``${VAR}`` from ``env``."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise UsageError(f"cannot read config {str(path)!r}: {e.strerror or e}") from e
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"config {str(path)!r} is not valid TOML: {e}") from e
    server = doc.get("server", {})
    sources = [_source(i, raw, env) for i, raw in enumerate(doc.get("source", []))]
    if server.get("spacy_models", True) and not any(s.kind == "spacy-models" for s in sources):
        sources.append(default_spacy_models_source())
    server_ca = ca_bundle or _opt_str(server, "ca_bundle", env, "[server]")
    server_proxy = _opt_str(server, "proxy", env, "[server]")
    sources = [replace(s, ca_bundle=s.ca_bundle or server_ca, proxy=s.proxy or server_proxy)
               for s in sources]
    return ServeConfig(
        sources=tuple(sources),
        upstream=(upstream or server.get("upstream") or DEFAULT_UPSTREAM),
        page_ttl=float(server.get("page_ttl", 60)),
        stale_while_revalidate=float(server.get("stale_while_revalidate", 300)),
        refresh=float(server.get("refresh", 600)),
        ca_bundle=server_ca,
        proxy=server_proxy,
    )


def _opt_str(raw: Mapping[str, Any], key: str, env: Mapping[str, str], where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: {key} must be a non-empty string")
    return _expand(value, env, where)


def _expand(value: str, env: Mapping[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise UsageError(f"{where} needs the environment variable {m.group(1)}, which is not set")
        return env[m.group(1)]

    return _ENV.sub(sub, value)


def _source(index: int, raw: Mapping[str, Any], env: Mapping[str, str]) -> SourceConfig:
    name = str(raw.get("name") or f"source-{index + 1}")
    where = f"source {name!r}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise UsageError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    projects = raw.get("projects")
    if kind == "spacy-models" and projects is None:
        projects = list(PIPELINE_GLOBS)
    if not isinstance(projects, Sequence) or isinstance(projects, str) or not projects:
        raise UsageError(f"{where}: projects must be a non-empty list of name globs")
    url = raw.get("url")
    if kind in ("simple", "find-links") and not url:
        raise UsageError(f"{where}: kind {kind!r} needs url")
    repo = raw.get("repo") or ("explosion/spacy-models" if kind == "spacy-models" else None)
    if kind == "github" and not repo:
        raise UsageError(f"{where}: kind 'github' needs repo = \"OWNER/NAME\"")
    path = raw.get("path")
    if kind == "folder" and not path:
        raise UsageError(f"{where}: kind 'folder' needs path")
    username = raw.get("username")
    password = raw.get("password")
    for key, value in (("username", username), ("password", password)):
        if value is not None and not _ENV.search(str(value)):
            raise UsageError(
                f"{where}: {key} must come from the environment, e.g. {key} = \"${{MY_SECRET}}\"; "
                "don't write secrets into the config file"
            )
    credentials = raw.get("credentials", "none")
    if credentials not in ("none", "netrc", "keyring"):
        raise UsageError(f"{where}: credentials must be none, netrc or keyring")
    return SourceConfig(
        name=name,
        kind=kind,
        projects=tuple(str(p) for p in projects),
        url=_expand(str(url), env, where) if url else None,
        repo=str(repo) if repo else None,
        path=Path(os.path.expanduser(_expand(str(path), env, where))) if path else None,
        username=_expand(str(username), env, where) if username is not None else None,
        password=_expand(str(password), env, where) if password is not None else None,
        credentials=credentials,
        require_hashes=_flag(raw, "require_hashes", where),
        ca_bundle=_opt_str(raw, "ca_bundle", env, where),
        proxy=_opt_str(raw, "proxy", env, where),
    )


def _flag(raw: Mapping[str, Any], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise UsageError(f"{where}: {key} must be true or false")
    return value
