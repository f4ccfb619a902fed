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
from pathlib import Path

from webhook.metrics import Metrics

log = logging.getLogger("tls")

TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class ServingCertificate:
    """`tls.crt` + `tls.key` from a directory, hot-reloaded into one server SSLContext."""

    def __init__(self, cert_dir: str | Path, min_version: str = "1.3", metrics: Metrics | None = None) -> None:
        self.cert_file = Path(cert_dir) / "tls.crt"
        self.key_file = Path(cert_dir) / "tls.key"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = TLS_VERSIONS[min_version]
        self._metrics = metrics
        self._digest = ""
        self.loaded = False
        self.last_error = ""

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.cert_file.read_bytes() + b"\0" + self.key_file.read_bytes()).hexdigest()
        except OSError as exc:
            self.last_error = f"cannot read {exc.filename}: {exc.strerror}"
            return None

    def refresh(self) -> bool:
        """Load the pair if it changed since the last successful load; return True when a new pair is in use."""
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        try:
            self.context.load_cert_chain(str(self.cert_file), str(self.key_file))
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
