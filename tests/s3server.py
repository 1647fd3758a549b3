"""An S3 endpoint for tests: moto's server mode on 127.0.0.1 (ephemeral port), one per test.

moto checks ``If-None-Match``/``If-Match`` on PUT and then stores the object with no lock in
between, so two concurrent conditional writes to one key can both succeed (real S3, MinIO and
R2 make the check and the write atomic). :class:`AtomicMotoServer` restores S3's guarantee by
serialising the *mutating* requests (PUT, POST, DELETE); reads stay concurrent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-print",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
AWS_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN",
             "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS")


def aws_test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials only; nothing from the developer's ~/.aws or environment."""
    for name in AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


class _SerialWrites:
    """WSGI middleware: one mutating request at a time (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with self.lock:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


def _make_server_class() -> type:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class AtomicMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _SerialWrites(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True,
                                       request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return AtomicMotoServer


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL; wiped and stopped on exit."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    server = _make_server_class()(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        yield url
    finally:
        # moto's state is process-global: reset it so the next test starts empty
        with contextlib.suppress(OSError):
            urllib.request.urlopen(
                urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10
            ).close()
        server.stop()


@dataclass
class S3Env:
    endpoint_url: str
    client: Any
    bucket: str

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix`` as ``{key relative to prefix: bytes}``."""
        out: dict[str, bytes] = {}
        start = prefix + "/" if prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        ):
            for obj in page.get("Contents", ()):
                body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                out[obj["Key"][len(start):]] = body
        return out

    def head(self, key: str) -> dict[str, Any]:
        return self.client.head_object(Bucket=self.bucket, Key=key)


def new_client(endpoint_url: str) -> Any:
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=endpoint_url)


@pytest.fixture(name="s3")
def s3_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    """A fresh bucket on a moto server that lives as long as the test."""
    aws_test_env(monkeypatch)
    with moto_server() as url:
        client = new_client(url)
        bucket = f"test-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        yield S3Env(url, client, bucket)
