"""Self-managed certificate planning (pure) and duration parsing."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from webhook import certs
from webhook.rotation import parse_duration, plan_bundle

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
    from webhook.rotation import trusted_cas

    new, old = certs.generate_ca(), certs.generate_ca()
    both = trusted_cas({"ca.crt": new.cert_pem, "ca-previous.crt": old.cert_pem})
    assert [c.serial_number for c in x509.load_pem_x509_certificates(both)] == [
        x509.load_pem_x509_certificate(p).serial_number for p in (new.cert_pem, old.cert_pem)]
    assert trusted_cas({"ca.crt": new.cert_pem}) == new.cert_pem
    expired = certs.generate_ca(days=0)  # expired by the time it is checked (X.509 times are whole seconds)
    assert trusted_cas({"ca.crt": new.cert_pem, "ca-previous.crt": expired.cert_pem}) == new.cert_pem


def test_live_lookups_do_not_write_into_the_watch_cache() -> None:
    import asyncio

    from webhook.cache import ListWatchCache

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
