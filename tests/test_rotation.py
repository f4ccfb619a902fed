"""Self-managed certificate planning (pure) and duration parsing."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable

import pytest
from cryptography import x509

from webhook.certificates import generate as certs
from webhook.certificates.rotation import CertRotator, RotationSettings, plan_bundle
from webhook.cli.config import parse_duration

HOSTS = ["svc.ns.svc", "svc.ns.svc.cluster.local"]
DAY = 86400.0


def sans(pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem)
    return {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}


def test_empty_secret_gets_a_full_bundle() -> None:
    bundle = plan_bundle({}, HOSTS, 90 * DAY)
    assert bundle is not None and set(bundle) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert sans(bundle["tls.crt"]) == set(HOSTS)
    serving = x509.load_pem_x509_certificate(bundle["tls.crt"])
    serving.verify_directly_issued_by(x509.load_pem_x509_certificate(bundle["ca.crt"]))


def test_valid_bundle_is_kept() -> None:
    bundle = plan_bundle({}, HOSTS, 90 * DAY)
    assert bundle is not None
    assert plan_bundle(bundle, HOSTS, 90 * DAY) is None


def test_serving_cert_renewed_before_expiry_with_same_ca() -> None:
    bundle = plan_bundle({}, HOSTS, 90 * DAY)
    assert bundle is not None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=300)  # serving cert (1 year) is within 90 days of expiry
    renewed = plan_bundle(bundle, HOSTS, 90 * DAY, now=later)
    assert renewed is not None and renewed["ca.crt"] == bundle["ca.crt"] and renewed["tls.crt"] != bundle["tls.crt"]


def test_ca_renewed_before_expiry() -> None:
    bundle = plan_bundle({}, HOSTS, 90 * DAY)
    assert bundle is not None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3600)
    renewed = plan_bundle(bundle, HOSTS, 90 * DAY, now=later)
    assert renewed is not None and renewed["ca.crt"] != bundle["ca.crt"]


def test_new_host_or_foreign_serving_cert_reissued() -> None:
    bundle = plan_bundle({}, HOSTS, 90 * DAY)
    assert bundle is not None
    renewed = plan_bundle(bundle, [*HOSTS, "127.0.0.1"], 90 * DAY)
    assert renewed is not None and "127.0.0.1" in sans(renewed["tls.crt"])
    other_ca = certs.generate_ca()
    foreign = {**bundle, "tls.crt": certs.generate_serving(other_ca, HOSTS).cert_pem}
    replaced = plan_bundle(foreign, HOSTS, 90 * DAY)
    assert replaced is not None and replaced["ca.crt"] == bundle["ca.crt"]


def test_garbage_secret_data_is_regenerated() -> None:
    bundle = plan_bundle({"ca.crt": b"junk", "ca.key": b"junk", "tls.crt": b"x", "tls.key": b"y"}, HOSTS, DAY)
    assert bundle is not None and bundle["ca.crt"].startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(("text", "seconds"), [("12h", 43200), ("90m", 5400), ("1h30m", 5400), ("45s", 45),
                                               ("2160h", 7776000), ("30", 30), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "12d", "-1h", "1h 30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_trusted_cas_overlap_previous_ca_while_valid() -> None:
    from webhook.certificates.rotation import trusted_cas

    new, old = certs.generate_ca(), certs.generate_ca()
    both = trusted_cas({"ca.crt": new.cert_pem, "ca-previous.crt": old.cert_pem})
    assert [c.serial_number for c in x509.load_pem_x509_certificates(both)] == [
        x509.load_pem_x509_certificate(p).serial_number for p in (new.cert_pem, old.cert_pem)]
    assert trusted_cas({"ca.crt": new.cert_pem}) == new.cert_pem
    expired = certs.generate_ca(days=0)  # expired by the time it is checked (X.509 times are whole seconds)
    assert trusted_cas({"ca.crt": new.cert_pem, "ca-previous.crt": expired.cert_pem}) == new.cert_pem


def test_live_lookups_do_not_write_into_the_watch_cache() -> None:
    import asyncio

    from webhook.sources.cache import ListWatchCache

    class Response:
        data = b'{"metadata": {"name": "sa", "namespace": "ns", "resourceVersion": "1"}}'

    class Cache(ListWatchCache[str, str]):
        def _read_call(self, key: str, timeout: float) -> Response:
            return Response()

        def _shrink(self, obj: dict[str, object]) -> tuple[str, str]:
            return "ns/sa", "version-1"

    cache = Cache()
    try:
        assert asyncio.run(cache.fetch("ns/sa")) == "version-1"
        assert cache.cached("ns/sa") is None  # only the watch writes: a slow GET never overwrites newer data
    finally:
        cache.stop()


class FakeCluster:
    """The two objects the rotator touches, with resourceVersion compare-and-swap, and a log of what happened."""

    def __init__(self, secret: dict[str, bytes], ca_bundle: bytes) -> None:
        import copy
        from types import SimpleNamespace

        self.events: list[tuple[str, object]] = []
        self.secret = SimpleNamespace(data={k: base64.b64encode(v).decode() for k, v in secret.items()},
                                      metadata=SimpleNamespace(resource_version="1"))
        hook = SimpleNamespace(client_config=SimpleNamespace(ca_bundle=base64.b64encode(ca_bundle).decode()))
        self.config = SimpleNamespace(webhooks=[hook], metadata=SimpleNamespace(resource_version="1"))
        self._copy = copy.deepcopy
        self.config_reads = 0
        self.on_config_read: dict[int, Callable[[], None]] = {}  # n-th read of the configuration: run this first

    # CoreV1Api
    def read_namespaced_secret(self, name: str, namespace: str) -> object:
        return self._copy(self.secret)

    def replace_namespaced_secret(self, name: str, namespace: str, body: object) -> None:
        self._swap("secret", body)
        self.events.append(("secret", self.secret_data()["ca.crt"]))

    # AdmissionregistrationV1Api
    def read_mutating_webhook_configuration(self, name: str) -> object:
        self.config_reads += 1
        if self.config_reads in self.on_config_read:
            self.on_config_read.pop(self.config_reads)()
        return self._copy(self.config)

    def replace_mutating_webhook_configuration(self, name: str, body: object) -> None:
        self._swap("config", body)
        self.events.append(("caBundle", self.trusted()))

    def _swap(self, attr: str, body: object) -> None:
        from kubernetes.client.exceptions import ApiException

        current = getattr(self, attr)
        if body.metadata.resource_version != current.metadata.resource_version:  # type: ignore[attr-defined]
            raise ApiException(status=409, reason="Conflict")
        body.metadata.resource_version = str(int(current.metadata.resource_version) + 1)  # type: ignore[attr-defined]
        setattr(self, attr, body)

    def secret_data(self) -> dict[str, bytes]:
        return {k: base64.b64decode(v) for k, v in self.secret.data.items()}

    def trusted(self) -> list[int]:
        """Serial numbers of the CAs in the caBundle."""
        pem = base64.b64decode(self.config.webhooks[0].client_config.ca_bundle or "")
        return [c.serial_number for c in x509.load_pem_x509_certificates(pem)] if pem else []

    def set_bundle(self, pem: bytes) -> None:
        """Another writer (a GitOps sync, another replica) replaces the caBundle."""
        self.config.webhooks[0].client_config.ca_bundle = base64.b64encode(pem).decode()
        self.config.metadata.resource_version = str(int(self.config.metadata.resource_version) + 1)


class FakeStop:
    """Stands in for the rotator's stop event: records each wait instead of sleeping, runs a hook meanwhile."""

    def __init__(self, cluster: FakeCluster, during_wait: Callable[[], None] | None = None,
                 stopping: bool = False) -> None:
        self.cluster, self.during_wait, self.stopping = cluster, during_wait, stopping

    def wait(self, timeout: float) -> bool:
        self.cluster.events.append(("wait", timeout))
        if self.during_wait is not None:
            self.during_wait()
            self.during_wait = None
        return self.stopping

    def is_set(self) -> bool:
        return self.stopping


def rotator(cluster: FakeCluster, settle: float = 10.0, during_wait: Callable[[], None] | None = None,
            stopping: bool = False) -> CertRotator:
    rot = CertRotator(None, RotationSettings(namespace="ns", secret_name="cert", webhook_config_name="mwc",
                                             hosts=HOSTS, ca_settle_delay=settle))
    rot._core = rot._admission = cluster
    rot._stop = FakeStop(cluster, during_wait, stopping)  # type: ignore[assignment]
    return rot


def serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def test_first_issuance_does_not_wait() -> None:
    cluster = FakeCluster({}, b"")
    rotator(cluster).reconcile()
    ca = serial(cluster.secret_data()["ca.crt"])
    assert [kind for kind, _ in cluster.events] == ["caBundle", "secret"]  # nothing was trusted or served yet
    assert cluster.trusted() == [ca]


def test_a_fresh_install_race_does_not_wait() -> None:
    """Two replicas of a fresh install: the other's candidate is in the caBundle already, but the Secret has held no
    CA, so no certificate was ever served and this replica need not wait the settle delay (it used to, 10 s)."""
    other = certs.generate_ca()
    cluster = FakeCluster({}, other.cert_pem)
    rotator(cluster).reconcile()
    assert [kind for kind, _ in cluster.events] == ["caBundle", "secret"], cluster.events


def test_new_ca_is_trusted_for_the_settle_delay_before_the_secret_changes() -> None:
    old = plan_bundle({}, HOSTS, 90 * DAY)
    assert old is not None
    cluster = FakeCluster({**old, "ca.crt": b"garbage"}, old["ca.crt"])  # forces a new CA; the old one is served
    rotator(cluster, settle=7.0).reconcile()
    new = serial(cluster.secret_data()["ca.crt"])
    kinds = [kind for kind, _ in cluster.events]
    assert kinds == ["caBundle", "wait", "secret"], cluster.events
    assert cluster.events[0][1] == [new, serial(old["ca.crt"])]  # new CA added, old one kept
    assert cluster.events[1][1] == 7.0
    assert cluster.secret_data()["ca-previous.crt"] == old["ca.crt"]
    assert cluster.trusted() == [new, serial(old["ca.crt"])]


def test_a_candidate_removed_while_settling_is_not_served() -> None:
    old = plan_bundle({}, HOSTS, 90 * DAY)
    assert old is not None
    cluster = FakeCluster({**old, "ca.crt": b"garbage"}, old["ca.crt"])
    rotator(cluster, during_wait=lambda: cluster.set_bundle(old["ca.crt"])).reconcile()
    kinds = [kind for kind, _ in cluster.events]
    assert kinds == ["caBundle", "wait", "caBundle", "wait", "secret"], cluster.events
    first, second = cluster.events[0][1], cluster.events[2][1]
    written = serial(cluster.secret_data()["ca.crt"])
    assert isinstance(first, list) and isinstance(second, list)
    assert written == second[0] and written != first[0]  # the candidate that was taken out is never served
    assert written in cluster.trusted()


def test_concurrent_candidates_are_kept_until_the_secret_decides() -> None:
    old = plan_bundle({}, HOSTS, 90 * DAY)
    assert old is not None
    other = certs.generate_ca()  # another replica's candidate, already in the caBundle
    cluster = FakeCluster({**old, "ca.crt": b"garbage"}, other.cert_pem + old["ca.crt"])
    rotator(cluster).reconcile()
    new = serial(cluster.secret_data()["ca.crt"])
    assert cluster.events[0][1] == [new, serial(other.cert_pem), serial(old["ca.crt"])]  # added, none replaced
    # The other candidate was trusted when this rotation started, so it stays trusted as a previous CA: a replica
    # that raced may already have had it in its volume.
    assert cluster.trusted() == [new, serial(other.cert_pem), serial(old["ca.crt"])]


def test_a_candidate_injected_meanwhile_is_not_taken_out_while_settling() -> None:
    old = plan_bundle({}, HOSTS, 90 * DAY)
    assert old is not None
    cluster = FakeCluster({**old, "ca.crt": b"garbage"}, old["ca.crt"])
    other = certs.generate_ca()
    # Another replica adds its candidate after this one read the trusted CAs and before it writes the caBundle.
    cluster.on_config_read[2] = lambda: cluster.set_bundle(other.cert_pem + old["ca.crt"])
    rotator(cluster).reconcile()
    new = serial(cluster.secret_data()["ca.crt"])
    assert cluster.events[0][1] == [new, serial(old["ca.crt"]), serial(other.cert_pem)]
    # Once the Secret holds this replica's CA, the other one lost its compare-and-swap and never serves its own.
    assert cluster.trusted() == [new, serial(old["ca.crt"])]


def test_stopping_while_settling_leaves_the_secret_alone() -> None:
    old = plan_bundle({}, HOSTS, 90 * DAY)
    assert old is not None
    cluster = FakeCluster({**old, "ca.crt": b"garbage"}, old["ca.crt"])
    rotator(cluster, stopping=True).reconcile()
    assert [kind for kind, _ in cluster.events] == ["caBundle", "wait"]
    assert cluster.secret_data()["ca.crt"] == b"garbage"


@pytest.mark.parametrize(("value", "ok"), [("0s", True), ("10s", True), ("10m", True), ("11m", False),
                                           ("soon", False)])
def test_ca_settle_delay_setting(value: str, ok: bool) -> None:
    from pydantic import ValidationError

    from webhook.cli.config import ServeOptions

    if ok:
        assert ServeOptions(cert_ca_settle_delay=value).cert_ca_settle_delay == value
    else:
        with pytest.raises(ValidationError, match="cert_ca_settle_delay"):
            ServeOptions(cert_ca_settle_delay=value)
