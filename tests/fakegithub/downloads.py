"""The download origins: web (``github.com``'s release-download redirects and
``codeload``'s archives) and objects (signed, expiring blob URLs with byte ranges). A mixin
of :class:`FakeGitHub`: the state it reads lives there."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import math
import re
import secrets
import time
from urllib.parse import unquote

from tests.fakegithub.data import _etag_matches, _now_iso, _parse_range, _tar_to_zip
from tests.fakegithub.faults import RecordedRequest
from tests.fakegithub.server import _Response


class DownloadOrigins:
    """``FakeGitHub._respond`` for the web (:meth:`_web`) and objects (:meth:`_objects`)
    origins, and the signed URLs that lead from one to the other (:meth:`_sign`)."""

    # -- web (github.com + codeload) --------------------------------------- #
    def _web(self, rec: RecordedRequest) -> _Response:
        with self._lock:
            fault = self._take_fault(rec, ("status",))
            if fault is not None:
                return _Response(fault.code, [("Content-Type", "text/plain")], b"Error\n")
            base = f"/{self.owner}/{self.repo}/".lower()
            if rec.method not in ("GET", "HEAD") or not rec.path.lower().startswith(base):
                return self._not_found_text()
            rest = rec.path[len(base):]
            m = re.fullmatch(r"releases/download/([^/]+)/([^/]+)", rest)
            if m:
                tag, name = unquote(m.group(1)), unquote(m.group(2))
                for rel in self._releases:
                    if rel["tag_name"] != tag:
                        continue
                    for asset in rel["assets"]:
                        if asset["name"] == name and asset["id"] in self._blobs:
                            return _Response(302, [("Location", self._sign(asset["id"])),
                                                   ("Content-Type", "text/html; charset=utf-8")])
                return self._not_found_text()
            m = re.fullmatch(r"legacy\.(tar\.gz|zip)/(.+)", rest)
            if m:
                if m.group(1) == "tar.gz":
                    data, ctype, ext = self.archive, "application/x-gzip", "tar.gz"
                else:
                    if self._zip is None:
                        self._zip = _tar_to_zip(self.archive)
                    data, ctype, ext = self._zip, "application/zip", "zip"
                return _Response(200, [
                    ("Content-Type", ctype),
                    ("Content-Disposition", f"attachment; filename={self.archive_prefix}.{ext}"),
                    ("ETag", f'"{hashlib.sha1(data).hexdigest()}"')], data)
            return self._not_found_text()

    @staticmethod
    def _not_found_text() -> _Response:
        return _Response(404, [("Content-Type", "text/plain; charset=utf-8")], b"Not Found")

    def _sign(self, blob_id: int) -> str:
        exp = math.ceil(time.time() + self.signed_url_ttl)
        nonce = next(self._nonces)
        sig = self._signature(blob_id, exp, nonce)
        return f"{self.objects_url}/blob/{blob_id}?sig={sig}&exp={exp}&n={nonce}"

    def _signature(self, blob_id: int, exp: int, nonce: int) -> str:
        msg = f"{blob_id}:{exp}:{nonce}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    # -- objects (signed blob storage) ------------------------------------- #
    @staticmethod
    def _azure_error(status: int, code: str, message: str, detail: str = "") -> _Response:
        extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
        body = ('<?xml version="1.0" encoding="utf-8"?><Error>'
                f"<Code>{code}</Code><Message>{message}\nRequestId:{secrets.token_hex(8)}\n"
                f"Time:{_now_iso()}</Message>{extra}</Error>").encode()
        return _Response(status, [("Content-Type", "application/xml")], body)

    def _refuse_signature(self, rec: RecordedRequest, blob_id: int) -> _Response | None:
        """The 403 blob storage answers to a bad or an expired (or revoked) signature; None
        for a good one."""
        params = rec.params
        try:
            exp, nonce = int(params["exp"]), int(params["n"])
            good = hmac.compare_digest(params["sig"], self._signature(blob_id, exp, nonce))
        except (KeyError, ValueError):
            good = False
        if not good:
            return self._azure_error(
                403, "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of "
                "Authorization header is formed correctly including the signature.",
                "Signature did not match.")
        now = time.time()
        if params["sig"] in self._revoked or now > exp:
            stamp = email.utils.formatdate(exp, usegmt=True)
            return self._azure_error(
                403, "AuthenticationFailed",
                "Server failed to authenticate the request. Request has expired.",
                f"Signature not valid in the specified time frame: Expiry [{stamp}] - "
                f"Current [{email.utils.formatdate(now, usegmt=True)}]")
        return None

    def _objects(self, rec: RecordedRequest) -> _Response:
        with self._lock:
            m = re.fullmatch(r"/blob/(\d+)", rec.path)
            if m is None or rec.method not in ("GET", "HEAD"):
                return self._azure_error(404, "ResourceNotFound",
                                         "The specified resource does not exist.")
            blob_id = int(m.group(1))
            refused = self._refuse_signature(rec, blob_id)
            if refused is not None:
                return refused
            fault = self._take_fault(rec, ("status",))
            if fault is not None:
                return self._azure_error(fault.code, "ServerBusy", "Injected fault.")
            blob = self._blobs.get(blob_id)
            if blob is None:
                return self._azure_error(404, "BlobNotFound", "The specified blob does not exist.")
            headers = [("Content-Type", "application/octet-stream"),
                       ("Accept-Ranges", "bytes"), ("ETag", blob.etag),
                       ("Last-Modified", blob.last_modified),
                       ("x-ms-blob-type", "BlockBlob")]
            inm = rec.headers.get("if-none-match")
            if inm and _etag_matches(inm, blob.etag):
                return _Response(304, headers)
            size = len(blob.data)
            rng = rec.headers.get("range")
            if_range = rec.headers.get("if-range")
            if rng and if_range and if_range.strip() not in (blob.etag, blob.last_modified):
                rng = None  # validator mismatch → full body
            span = _parse_range(rng, size) if rng else None
            if span == "unsatisfiable":
                resp = self._azure_error(416, "InvalidRange",
                                         "The range specified is invalid for the current size "
                                         "of the resource.")
                resp.headers.append(("Content-Range", f"bytes */{size}"))
                return resp
            if isinstance(span, tuple):
                start, end = span
                status, body = 206, blob.data[start:end + 1]
                headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            else:
                status, body = 200, blob.data
            resp = _Response(status, headers, body)
            if rec.method == "GET":
                fault = self._take_fault(rec, ("reset_connection", "expire_mid_transfer"))
                if fault is not None:
                    resp.abort_after = fault.after_bytes
                    if fault.kind == "expire_mid_transfer":
                        self._revoked.add(rec.params["sig"])
            return resp
