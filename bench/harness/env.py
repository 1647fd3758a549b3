"""The environment the benches give servers: none of the machine's pip/uv/GitHub/proxpi/
spacy-index settings, and the machine's CA bundle (the inspecting proxy's CA is in it)."""

from __future__ import annotations

import os
from pathlib import Path

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def tls_env(env: dict[str, str]) -> dict[str, str]:
    """Trust the machine's CA bundle (the inspecting proxy's CA is in it) explicitly."""
    if Path(CA_BUNDLE).exists():
        env.update(SSL_CERT_FILE=CA_BUNDLE, REQUESTS_CA_BUNDLE=CA_BUNDLE, PIP_CERT=CA_BUNDLE)
    return env


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("PIP_", "UV_", "GITHUB_", "PROXPI_", "SPACY_INDEX_"))}
    return tls_env(env)
