"""Self-managed certificates (the chart's default mode, like the reference's cert-controller).

Each replica runs a `CertRotator` thread. It keeps a CA and a serving certificate in the webhook's Secret (keys
`ca.crt`, `ca.key`, `tls.crt`, `tls.key`) and the CA in every webhook's `clientConfig.caBundle` of the
MutatingWebhookConfiguration. Replicas coordinate through optimistic concurrency: writes are `replace` calls that
carry the resourceVersion that was read, so when two replicas race, one gets 409 Conflict, re-reads and finds the
winner's certificate valid. The Secret reaches the pods through its volume; the server's reloader picks it up.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from webhook.certificates import generate as certs

log = logging.getLogger("rotation")

@dataclass(frozen=True)
class RotationSettings:
    namespace: str
    secret_name: str
    webhook_config_name: str
    hosts: list[str]
    validating_config_name: str = ""
    renew_before: float = 90 * 86400.0
    check_interval: float = 12 * 3600.0
    # Besides the expiry check, re-read the Secret and webhook configurations this often, so a caBundle cleared
    # by `kubectl replace` or a GitOps sync, or an emptied Secret, is repaired within a minute (the reference
    # reacts to watch events; two GETs a minute per replica are cheaper than two more watches).
    repair_interval: float = 60.0
    # How long a new CA must have been in the caBundle before the Secret (and so the served certificate) changes.
    # The API server applies a caBundle change through its informer, which can lag by seconds under load (the
    # rotation e2e test saw a lag above 1 s), and each API server of an HA control plane has its own. Rotations are
    # rare and the rotator has its own thread, so waiting costs nothing. Not applied to the first issuance, when no
    # certificate is trusted or served yet.
    ca_settle_delay: float = 10.0


def _valid_until(pem: bytes | None) -> dt.datetime | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem).not_valid_after_utc
    except ValueError:
        return None


def _serving_matches(serving_pem: bytes | None, ca_pem: bytes, hosts: list[str]) -> bool:
    """True when the serving cert is signed by this CA and names every host."""
    if not serving_pem:
        return False
    try:
        cert = x509.load_pem_x509_certificate(serving_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
        names = {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return set(hosts) <= names


def plan_bundle(data: dict[str, bytes], hosts: list[str], renew_before: float,
                now: dt.datetime | None = None) -> dict[str, bytes] | None:
    """Return the new Secret data when the CA or serving cert must be (re)generated, else None. Pure."""
    now = now or dt.datetime.now(dt.UTC)
    horizon = now + dt.timedelta(seconds=renew_before)
    ca_until = _valid_until(data.get("ca.crt"))
    if ca_until is None or not data.get("ca.key") or ca_until <= horizon:
        ca = certs.generate_ca()
    else:
        ca = certs.KeyPair(data["ca.crt"], data["ca.key"])
        tls_until = _valid_until(data.get("tls.crt"))
        if (tls_until is not None and tls_until > horizon and data.get("tls.key")
                and _serving_matches(data.get("tls.crt"), ca.cert_pem, hosts)):
            return None
    serving = certs.generate_serving(ca, hosts)
    return {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem, "tls.crt": serving.cert_pem, "tls.key": serving.key_pem}


class CertRotator:
    """Keeps the Secret and the webhook configuration's caBundle current; runs in its own thread."""

    def __init__(self, api_client: Any, settings: RotationSettings) -> None:
        from kubernetes import client

        self._core: Any = client.CoreV1Api(api_client)
        self._admission: Any = client.AdmissionregistrationV1Api(api_client)
        self.settings = settings
        self.done_once = threading.Event()
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cert-rotator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.reconcile()
                self.done_once.set()
                self.last_error = ""
                delay = 1.0
                self._stop.wait(min(self.settings.check_interval, self.settings.repair_interval))
            except Exception as exc:  # API errors: retry with back-off, keep serving the current certificate
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("certificate rotation failed; retrying", extra={"error": self.last_error})
                self._stop.wait(delay)
                delay = min(delay * 2, 60.0)

    def reconcile(self) -> None:
        """One pass: ensure a valid bundle in the Secret (compare-and-swap), then the caBundle in the MWC.

        A new CA is trusted first: the caBundle gets the new CA (and keeps the previous one, also stored in the
        Secret as `ca-previous.crt`, and whatever else it trusts at that moment, e.g. another replica's candidate)
        and keeps it for `ca_settle_delay` before the Secret — and so, via the volume, the served certificate —
        changes. Replicas still serving the old certificate keep working during the volume's propagation delay.
        """
        from kubernetes.client.exceptions import ApiException

        s = self.settings
        for _ in range(5):
            secret = self._core.read_namespaced_secret(s.secret_name, s.namespace)
            data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            bundle = plan_bundle(data, s.hosts, s.renew_before)
            if bundle is None:
                break
            if bundle["ca.crt"] != data.get("ca.crt"):
                # Keep trusting every CA that is trusted now (the Secret's old CA and what the caBundle holds):
                # a replica may serve a certificate signed by any of them until its volume updates.
                trusted = b"".join(self._bundles())
                previous = _valid_pems([data.get("ca.crt", b""), trusted])[:MAX_PREVIOUS_CAS]
                if previous:
                    bundle["ca-previous.crt"] = b"".join(previous)
                self._inject_ca(trusted_cas(bundle), keep_current=True)
                # The new CA must reach the API servers before a certificate it signed is served, but only a
                # Secret that held a CA can have had its certificate served. On a fresh install it held none: other
                # replicas' candidates in the caBundle were never served, so the first issuance does not wait.
                if data.get("ca.crt") and not self._settle(bundle["ca.crt"]):
                    if self._stop.is_set():
                        return  # shutting down: the Secret stays; another replica drops the unused candidate
                    continue  # the new CA left the caBundle meanwhile: start over
            elif data.get("ca-previous.crt"):
                bundle["ca-previous.crt"] = data["ca-previous.crt"]
            secret.data = {k: base64.b64encode(v).decode() for k, v in bundle.items()}
            try:
                self._core.replace_namespaced_secret(s.secret_name, s.namespace, secret)  # carries resourceVersion
            except ApiException as exc:
                if exc.status == 409:
                    continue  # another replica rotated first: re-read and validate its bundle
                raise
            log.info("generated webhook certificates", extra={"secret": f"{s.namespace}/{s.secret_name}"})
            data = bundle
            break
        else:
            raise RuntimeError(f"secret {s.namespace}/{s.secret_name} kept changing; giving up this round")
        self._inject_ca(trusted_cas(data))

    def _settle(self, ca_pem: bytes) -> bool:
        """Wait `ca_settle_delay`, then confirm every webhook still trusts `ca_pem` (False: stopping, or removed)."""
        if self._stop.wait(self.settings.ca_settle_delay):
            return False
        wanted = _valid_pems([ca_pem])
        return all(p in _valid_pems([bundle]) for bundle in self._bundles() for p in wanted)

    def _configurations(self) -> list[tuple[str, str]]:
        """The webhook configurations whose caBundle is kept: (kind, name), the validating one only if configured."""
        kinds = [("mutating", self.settings.webhook_config_name)]
        if self.settings.validating_config_name:
            kinds.append(("validating", self.settings.validating_config_name))
        return kinds

    def _bundles(self) -> list[bytes]:
        """Each webhook's caBundle (PEM), in every configuration kept."""
        configs = [getattr(self._admission, f"read_{kind}_webhook_configuration")(name)
                   for kind, name in self._configurations()]
        return [base64.b64decode(hook.client_config.ca_bundle or "") for c in configs for hook in c.webhooks or []]

    def _inject_ca(self, ca_pem: bytes, keep_current: bool = False) -> None:
        """Write the caBundle into every configuration kept.

        `keep_current` adds to what each webhook trusts instead of replacing it: used while a new CA waits to be
        served, so two replicas rotating at once cannot take each other's candidate out (the loser's is removed
        by the next plain injection, once the Secret says which CA won).
        """
        for kind, name in self._configurations():
            self._inject_into(kind, name, ca_pem, keep_current)

    def _inject_into(self, kind: str, name: str, ca_pem: bytes, keep_current: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        read = getattr(self._admission, f"read_{kind}_webhook_configuration")
        replace = getattr(self._admission, f"replace_{kind}_webhook_configuration")
        for _ in range(5):
            config = read(name)
            stale = False
            for hook in config.webhooks or []:
                pem = ca_pem
                if keep_current:
                    current = base64.b64decode(hook.client_config.ca_bundle or "")
                    pem = b"".join(_valid_pems([ca_pem, current])[:MAX_TRUSTED_CAS]) or ca_pem
                wanted = base64.b64encode(pem).decode()
                if hook.client_config.ca_bundle != wanted:
                    hook.client_config.ca_bundle = wanted
                    stale = True
            if not stale:
                return
            try:
                replace(name, config)  # carries the resourceVersion read: compare-and-swap
                log.info("injected CA bundle", extra={"webhook-configuration": name})
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError(f"{kind} webhook configuration {name} kept changing; giving up this round")


MAX_PREVIOUS_CAS = 3
# The current CA, its predecessors and candidates of replicas rotating at the same moment.
MAX_TRUSTED_CAS = 8


def _valid_pems(bundles: list[bytes]) -> list[bytes]:
    """The still-valid certificates in PEM bundles, each once, in order."""
    seen: list[bytes] = []
    now = dt.datetime.now(dt.UTC)
    for bundle in bundles:
        try:
            certificates = x509.load_pem_x509_certificates(bundle) if bundle.strip() else []
        except ValueError:
            continue
        for cert in certificates:
            pem = cert.public_bytes(serialization.Encoding.PEM)
            if cert.not_valid_after_utc > now and pem not in seen:
                seen.append(pem)
    return seen


def trusted_cas(data: dict[str, bytes]) -> bytes:
    """The caBundle: the current CA, plus the previous ones while still valid (rotation overlap)."""
    current = _valid_pems([data["ca.crt"]])
    previous = [p for p in _valid_pems([data.get("ca-previous.crt", b"")]) if p not in current]
    return b"".join(current + previous) or data["ca.crt"]
