"""Server configuration: which source answers which project names.

A TOML file (all keys optional)::

    [server]
    upstream = "https://pypi.org/simple/"   # every name no source claims
    page_ttl = 60                            # seconds an upstream page is fresh
    stale_while_revalidate = 86400           # then answered at once, refreshed behind
    prefetch = 64                            # requirements' pages fetched behind a .metadata
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

    [limits]                   # per client connection (defaults shown)
    max_connections = 1000     # open at once; beyond: 503 and close (lowered to fit ulimit -n)
    header_timeout = 15        # seconds to send a request's head
    idle_timeout = 5           # seconds a keep-alive connection waits for its next request
    max_header_size = "64KiB"  # request line + headers (431)
    max_header_line = "8KiB"   # one header line (431)
    max_url_length = "8KiB"    # the request target (414)
    max_headers = 100          # header lines (431)
    shutdown_grace = 10        # seconds transfers may finish after SIGTERM, then cut
    max_page_size = "96MiB"    # one upstream page, on the wire and decoded (502 beyond)
    max_page_files = 50000     # files one upstream page may list (502 beyond)
    max_metadata_size = "32MiB" # one upstream .metadata, on the wire and decoded
    parse_budget = 10          # seconds parsing one upstream page may take (502 beyond)
    page_fetch = "process"     # upstream page fetches in a process per source, or "thread"

Sources are tried in file order; the first whose ``projects`` globs match a name answers it,
alone: a routed name is never merged with the upstream. Globs compare normalized names.
Secrets are only ever taken from the environment, netrc or keyring, never from the file.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from spacy_index.errors import UsageError
from spacy_index.http import redact_url
from spacy_index.server.config_types import (
    ACCEPT_BATCH,
    DEFAULT_UPSTREAM,
    KINDS,
    LISTEN_BACKLOG,
    PIPELINE_GLOBS,
    AuthConfig,
    CacheConfig,
    Kind,
    LimitsConfig,
    ServeConfig,
    SourceConfig,
    default_spacy_models_source,
)
from spacy_index.urls import split_userinfo

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_size(text: str | int, where: str = "size") -> int:
    """``"50GB"``, ``"500 MiB"``, ``"1.5T"`` or a number of bytes → bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise UsageError(f"{where} must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"{where}: {text!r} is not a size such as 50GB, 500MiB or 1e9 bytes")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    power = " kmgtp".index(unit) if unit else 0
    value = int(number * (1024 if binary else 1000) ** power)
    if value <= 0:
        raise UsageError(f"{where} must be positive, got {text!r}")
    return value


class _ServerTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    upstream: str | None = None
    page_ttl: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    stale_while_revalidate: Annotated[float, msgspec.Meta(ge=0)] = 86400.0
    prefetch: Annotated[int, msgspec.Meta(ge=0)] = 64
    refresh: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    spacy_models: bool = True
    ca_bundle: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    proxy: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    #: the URL clients reach this server at (absolute links in the PyPI-style JSON); without
    #: it they are built from the request's Host header
    public_url: Annotated[str, msgspec.Meta(min_length=1)] | None = None


class _SourceTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: Kind
    name: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    projects: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)] | None = None
    url: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    repo: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")] | None = None
    path: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    username: str | None = None
    password: str | None = None
    credentials: Literal["none", "netrc", "keyring"] = "none"
    require_hashes: bool = False
    ca_bundle: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    proxy: Annotated[str, msgspec.Meta(min_length=1)] | None = None


class _CacheTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_size: int | str | None = None
    pin: list[Annotated[str, msgspec.Meta(min_length=1)]] = msgspec.field(default_factory=list)


class _LimitsTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = LimitsConfig.max_connections
    header_timeout: Annotated[float, msgspec.Meta(gt=0)] = LimitsConfig.header_timeout
    idle_timeout: Annotated[float, msgspec.Meta(gt=0)] = LimitsConfig.idle_timeout
    max_header_size: str | int = LimitsConfig.max_header_size
    max_header_line: str | int = LimitsConfig.max_header_line
    max_url_length: str | int = LimitsConfig.max_url_length
    max_headers: Annotated[int, msgspec.Meta(ge=1)] = LimitsConfig.max_headers
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0)] = LimitsConfig.shutdown_grace
    max_page_size: str | int = LimitsConfig.max_page_size
    max_page_files: Annotated[int, msgspec.Meta(ge=1)] = LimitsConfig.max_page_files
    max_metadata_size: str | int = LimitsConfig.max_metadata_size
    parse_budget: Annotated[float, msgspec.Meta(gt=0)] = LimitsConfig.parse_budget
    page_fetch: Literal["process", "thread"] = "process"


class _AuthTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    htpasswd: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    tokens_file: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    #: the NAME of an environment variable holding comma-separated bearer tokens
    tokens_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    realm: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "spacy-index"


class _ConfigFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: _ServerTable = msgspec.field(default_factory=_ServerTable)
    source: list[_SourceTable] = msgspec.field(default_factory=list)
    cache: _CacheTable = msgspec.field(default_factory=_CacheTable)
    auth: _AuthTable = msgspec.field(default_factory=_AuthTable)
    limits: _LimitsTable = msgspec.field(default_factory=_LimitsTable)


_FIELDS = {
    "$": [f.name for f in msgspec.structs.fields(_ConfigFile)],
    "server": [f.name for f in msgspec.structs.fields(_ServerTable)],
    "source": [f.name for f in msgspec.structs.fields(_SourceTable)],
    "cache": [f.name for f in msgspec.structs.fields(_CacheTable)],
    "auth": [f.name for f in msgspec.structs.fields(_AuthTable)],
    "limits": [f.name for f in msgspec.structs.fields(_LimitsTable)],
}
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`(?: - at `(.*)`)?$")
_AT = re.compile(r"^(.*) - at `(.*)`$")


def _where(path: str) -> str:
    """``$.source[1].kind`` → ``[[source]] #2, key 'kind'``."""
    m = re.fullmatch(r"\$(?:\.(server|source|cache|auth)(?:\[(\d+)\])?)?(?:\.(\w+))?", path)
    if not m:
        return path
    table, index, key = m.groups()
    where = "the top level" if table is None else (
        f"[[source]] #{int(index or 0) + 1}" if table == "source" else f"[{table}]")
    return f"{where}, key {key!r}" if key else where


def _line_of(text: str, key: str, after: int = 0) -> int | None:
    """The first line (1-based) at or after ``after`` where ``key`` is set or opened."""
    pattern = re.compile(rf"^\s*(\[\[?\s*{re.escape(key)}\s*\]\]?|{re.escape(key)}\s*=)")
    for number, line in enumerate(text.splitlines(), 1):
        if number >= after and pattern.match(line):
            return number
    return None


def _schema_error(e: msgspec.ValidationError, text: str, origin: str) -> UsageError:
    message = str(e)
    unknown = _UNKNOWN.match(message)
    if unknown:
        key, at = unknown.group(1), unknown.group(2) or "$"
        table = next((t for t in ("server", "source", "cache", "auth", "limits") if at.startswith(f"$.{t}")), "$")
        known = _FIELDS[table]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
        what = f"unknown table [{key}]" if table == "$" else f"unknown key {key!r} in {_where(at)}"
        line = _line_of(text, key)
        return UsageError(f"{origin}{f', line {line}' if line else ''}: {what}{hint} "
                          "(nothing was started: a mistyped key could send names to the wrong index)")
    found = _AT.match(message)
    detail, at = (found.group(1), found.group(2)) if found else (message, "$")
    key = at.rsplit(".", 1)[-1] if "." in at else ""
    key = re.sub(r"\[\d+\]$", "", key)
    line = _line_of(text, key) if key else None
    choices = {"kind": KINDS, "credentials": ("none", "netrc", "keyring")}.get(key)
    if choices and detail.startswith("Invalid enum value"):
        detail = f"{key} must be one of {', '.join(choices)}, got {detail.split(' ', 3)[-1]}"
    return UsageError(f"{origin}{f', line {line}' if line else ''}: {_where(at)}: {detail}")


def load_config(
    path: Path | None, env: Mapping[str, str], *, upstream: str | None = None,
    ca_bundle: str | None = None,
) -> ServeConfig:
    """Read ``path`` (or build the default), expanding ``${VAR}`` from ``env``.

    The file is checked against a strict schema: an unknown table or key (``upstrem``,
    ``[[sources]]``, ``projcts``) is an error naming its line with a did-you-mean, never
    ignored, because an ignored routing key quietly sends private names to the upstream.
    Types and ranges are checked, folders must exist, and a literal credential in any URL is
    refused (use ``${ENV}``, netrc or keyring).
    """
    table = _ConfigFile()
    if path is not None:
        origin = f"config {str(path)!r}"
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise UsageError(f"cannot read config {str(path)!r}: {e.strerror or e}") from e
        except UnicodeDecodeError:
            raise UsageError(f"{origin} is not UTF-8 text") from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{origin} is not valid TOML: {e}") from e
        try:
            table = msgspec.convert(doc, _ConfigFile)
        except msgspec.ValidationError as e:
            raise _schema_error(e, text, origin) from None
    server = table.server
    sources = [_source(i, raw, env) for i, raw in enumerate(table.source)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"two [[source]] tables are named {dup!r}; give each its own name")
    if server.spacy_models and not any(s.kind == "spacy-models" for s in sources):
        sources.append(default_spacy_models_source())
    server_ca = ca_bundle or (_expand(server.ca_bundle, env, "[server]") if server.ca_bundle else None)
    server_proxy = _url_setting(server.proxy, env, "[server] proxy")
    sources = [replace(s, ca_bundle=s.ca_bundle or server_ca, proxy=s.proxy or server_proxy)
               for s in sources]
    chosen = upstream or _url_setting(server.upstream, env, "[server] upstream")
    return ServeConfig(
        sources=tuple(sources),
        upstream=chosen or DEFAULT_UPSTREAM,
        page_ttl=server.page_ttl, refresh=server.refresh,
        stale_while_revalidate=server.stale_while_revalidate, prefetch=server.prefetch,
        ca_bundle=server_ca,
        proxy=server_proxy,
        public_url=(_url_setting(server.public_url, env, "[server] public_url") or "").rstrip("/")
        or None,
        cache=CacheConfig(
            max_size=parse_size(table.cache.max_size, "[cache] max_size")
            if table.cache.max_size is not None else None,
            pin=tuple(table.cache.pin)),
        auth=_auth(table.auth, env),
        limits=_limits(table.limits),
    )


def _limits(raw: _LimitsTable) -> LimitsConfig:
    head = parse_size(raw.max_header_size, "[limits] max_header_size")
    line = parse_size(raw.max_header_line, "[limits] max_header_line")
    if line > head:
        raise UsageError(f"[limits] max_header_line ({line:,} bytes) is larger than "
                         f"max_header_size ({head:,} bytes); a header line is part of the head")
    return LimitsConfig(max_connections=raw.max_connections, header_timeout=raw.header_timeout,
                        idle_timeout=raw.idle_timeout, max_header_size=head,
                        max_header_line=line, max_headers=raw.max_headers,
                        max_url_length=parse_size(raw.max_url_length,
                                                  "[limits] max_url_length"),
                        shutdown_grace=raw.shutdown_grace,
                        max_page_size=parse_size(raw.max_page_size, "[limits] max_page_size"),
                        max_page_files=raw.max_page_files,
                        max_metadata_size=parse_size(raw.max_metadata_size,
                                                     "[limits] max_metadata_size"),
                        parse_budget=raw.parse_budget, page_fetch=raw.page_fetch)


def _auth(raw: _AuthTable, env: Mapping[str, str]) -> AuthConfig:
    files = {}
    for key in ("htpasswd", "tokens_file"):
        value = getattr(raw, key)
        if value is not None:
            path = Path(os.path.expanduser(_expand(value, env, "[auth]")))
            if not path.is_file():
                raise UsageError(f"[auth] {key}: {str(path)!r} is not a file")
            files[key] = path
    tokens: tuple[str, ...] = ()
    if raw.tokens_env is not None:
        if raw.tokens_env not in env:
            raise UsageError(f"[auth] tokens_env needs the environment variable {raw.tokens_env}, "
                             "which is not set")
        tokens = tuple(t.strip() for t in env[raw.tokens_env].split(",") if t.strip())
        if not tokens:
            raise UsageError(f"[auth] the environment variable {raw.tokens_env} holds no token")
    return AuthConfig(htpasswd=files.get("htpasswd"), tokens_file=files.get("tokens_file"),
                      tokens=tokens, realm=raw.realm)


def _expand(value: str, env: Mapping[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise UsageError(f"{where} needs the environment variable {m.group(1)}, which is not set")
        return env[m.group(1)]

    return _ENV.sub(sub, value)


def _url_setting(raw: str | None, env: Mapping[str, str], where: str) -> str | None:
    """An http(s) URL from the config: ``${VAR}`` expanded; userinfo only from ``${VAR}``."""
    if raw is None:
        return None
    parts, found, _host = split_userinfo(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{where}: {redact_url(raw)!r} is not an http:// or https:// URL")
    userinfo = found or ""
    user, _, password = userinfo.partition(":")
    # the secret part must come from ${VAR}: the password, or the username when it stands
    # alone (Prodigy's key); a literal user name before a ${VAR} password is fine
    secret = password or user
    if userinfo and not _ENV.fullmatch(secret):
        raise UsageError(f"{where}: the URL carries a literal credential ({redact_url(raw)}); "
                         "use ${ENV} in its place, credentials = \"netrc\" or \"keyring\"")
    return _expand(raw, env, where)


def _source(index: int, raw: _SourceTable, env: Mapping[str, str]) -> SourceConfig:
    name = raw.name or f"source-{index + 1}"
    where = f"source {name!r}"
    kind = raw.kind
    projects = raw.projects
    if kind == "spacy-models" and projects is None:
        projects = list(PIPELINE_GLOBS)
    if not projects:
        raise UsageError(f"{where}: projects must be a non-empty list of name globs")
    if kind in ("simple", "find-links") and not raw.url:
        raise UsageError(f"{where}: kind {kind!r} needs url")
    if kind not in ("simple", "find-links") and raw.url:
        raise UsageError(f"{where}: url is for kinds 'simple' and 'find-links', not {kind!r}")
    repo = raw.repo or ("explosion/spacy-models" if kind == "spacy-models" else None)
    if kind == "github" and not repo:
        raise UsageError(f"{where}: kind 'github' needs repo = \"OWNER/NAME\"")
    if kind == "folder" and not raw.path:
        raise UsageError(f"{where}: kind 'folder' needs path")
    for key, value in (("username", raw.username), ("password", raw.password)):
        if value is not None and not _ENV.search(value):
            raise UsageError(
                f"{where}: {key} must come from the environment, e.g. {key} = \"${{MY_SECRET}}\"; "
                "don't write secrets into the config file"
            )
    folder = None
    if raw.path:
        folder = Path(os.path.expanduser(_expand(raw.path, env, where)))
        if not folder.is_dir():
            raise UsageError(f"{where}: path {str(folder)!r} is not a folder")
    return SourceConfig(
        name=name,
        kind=kind,
        projects=tuple(projects),
        url=_url_setting(raw.url, env, f"{where} url") if raw.url else None,
        repo=repo,
        path=folder,
        username=_expand(raw.username, env, where) if raw.username is not None else None,
        password=_expand(raw.password, env, where) if raw.password is not None else None,
        credentials=raw.credentials,
        require_hashes=raw.require_hashes,
        ca_bundle=_expand(raw.ca_bundle, env, where) if raw.ca_bundle else None,
        proxy=_url_setting(raw.proxy, env, f"{where} proxy"),
    )



# the value types are imported from here everywhere (the loader and its types read as one
# module from outside)
__all__ = ["ACCEPT_BATCH", "DEFAULT_UPSTREAM", "KINDS", "LISTEN_BACKLOG", "PIPELINE_GLOBS",
           "AuthConfig", "CacheConfig", "Kind", "LimitsConfig", "ServeConfig", "SourceConfig",
           "default_spacy_models_source", "load_config", "parse_size"]
