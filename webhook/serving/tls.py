"""The serving certificate: one SSLContext whose key pair is reloaded in place when the files change.

Kubernetes updates Secret volumes by swapping a symlink, which inotify does not always report, so we poll the
files' contents (sha256) like kopf does. Reloading calls `load_cert_chain` on the same context: the listener keeps
running and the next TLS handshake presents the new certificate. A half-written pair that fails to load keeps
the previous one and is retried on the next poll.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import tempfile
from pathlib import Path

from webhook.serving.metrics import Metrics

log = logging.getLogger("tls")

TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def effective_min_version(requested: str) -> ssl.TLSVersion:
    """The minimum TLS version the listener really enforces for `--tls-min-version`.

    Decision: "1.0" and "1.1" are accepted (the reference's flag takes them, and a values file carried over must
    not stop the webhook from starting) but mean 1.2, with a warning: OpenSSL 3 at its default security level
    refuses TLS 1.0/1.1 handshakes whatever the minimum says, so the flag had no effect, and lowering the security
    level to allow them would weaken every connection. The API server speaks TLS 1.2 and 1.3.
    """
    if requested in ("1.0", "1.1"):
        log.warning(f"--tls-min-version {requested}: TLS 1.0 and 1.1 are refused by this OpenSSL; the minimum is "
                    "1.2. Set --tls-min-version 1.2 (or 1.3) to silence this warning",
                    extra={"tls-min-version": requested, "effective": "1.2"})
        return ssl.TLSVersion.TLSv1_2
    return TLS_VERSIONS[requested]


class ServingCertificate:
    """`tls.crt` + `tls.key` from a directory, hot-reloaded into one server SSLContext."""

    def __init__(self, cert_dir: str | Path, min_version: str = "1.3", metrics: Metrics | None = None) -> None:
        self.cert_file = Path(cert_dir) / "tls.crt"
        self.key_file = Path(cert_dir) / "tls.key"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = effective_min_version(min_version)
        self._metrics = metrics
        self._digest = ""
        self.loaded = False
        self.last_error = ""

    def _read(self) -> tuple[bytes, bytes] | None:
        try:
            return self.cert_file.read_bytes(), self.key_file.read_bytes()
        except OSError as exc:
            self.last_error = f"cannot read {exc.filename}: {exc.strerror}"
            return None

    def refresh(self) -> bool:
        """Load the pair if it changed since the last successful load; return True when a new pair is in use.

        The bytes are read once and proven to load into a scratch context before the live context sees them:
        OpenSSL would otherwise install a new certificate, reject a mismatched key and leave the live context
        with no usable pair (every handshake failing until a good pair appears).
        """
        pair = self._read()
        if pair is None:
            return False
        digest = hashlib.sha256(pair[0] + b"\0" + pair[1]).hexdigest()
        if digest == self._digest:
            return False
        try:
            with tempfile.TemporaryDirectory(prefix="wi-webhook-tls-") as tmp:
                cert_copy, key_copy = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
                cert_copy.write_bytes(pair[0])
                key_copy.touch(mode=0o600)
                key_copy.write_bytes(pair[1])
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_copy, key_copy)  # validate first
                self.context.load_cert_chain(cert_copy, key_copy)  # the same bytes: cannot fail differently
        except (ssl.SSLError, OSError) as exc:
            self.last_error = f"cannot load {self.cert_file} / {self.key_file}: {exc}"
            log.warning("serving certificate not loaded; keeping the previous one", extra={"error": self.last_error})
            if self._metrics:
                self._metrics.cert_reloads.labels("error").inc()
            return False
        self._digest = digest
        self.loaded = True
        self.last_error = ""
        if self._metrics:
            self._metrics.cert_reloads.labels("ok").inc()
        log.info("serving certificate loaded", extra={"cert": str(self.cert_file), "sha256": digest[:12]})
        return True
