"""The chart's `webhookURL` (a URL clientConfig) and `hostNetwork` values, rendered offline; the same values run
on a real node in tests/node/test_node_chart.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_chart import deployment, flag_values, helm_error, manager, one, render, webhook

URL = "https://127.0.0.1:19443"


def test_default_is_the_service_and_the_pod_network() -> None:
    objects = render()
    assert "service" in webhook(objects)["clientConfig"] and "url" not in webhook(objects)["clientConfig"]
    spec = deployment(objects)["spec"]["template"]["spec"]
    assert "hostNetwork" not in spec and "dnsPolicy" not in spec
    assert deployment(objects)["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert all("host" not in manager(objects)[probe]["httpGet"]
               for probe in ("startupProbe", "livenessProbe", "readinessProbe"))
    assert not any(arg.startswith("--cert-host") for arg in manager(objects)["args"])


@pytest.mark.parametrize("url", [URL, URL + "/"])
def test_webhook_url_replaces_the_service_reference(url: str) -> None:
    objects = render({"webhookURL": url, "serviceAccountValidator": {"enabled": True}})
    assert webhook(objects)["clientConfig"] == {"url": f"{URL}/mutate-v1-pod"}
    validator = one(objects, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert validator["clientConfig"] == {"url": f"{URL}/validate-v1-serviceaccount"}
    # Self-managed certificates: the URL's host is in the serving certificate (IP SAN 127.0.0.1).
    assert flag_values(manager(objects)["args"])["--cert-host"] == "127.0.0.1"


def test_webhook_url_with_existing_secret_keeps_the_ca_bundle() -> None:
    values: dict[str, Any] = {"webhookURL": "https://webhook.example.com:8443",
                              "certificates": {"mode": "existingSecret",
                                               "existingSecret": {"name": "tls", "caBundle": "Y2E="}}}
    objects = render(values)
    assert webhook(objects)["clientConfig"] == {"url": "https://webhook.example.com:8443/mutate-v1-pod",
                                                "caBundle": "Y2E="}
    assert not any(arg.startswith("--cert-host") for arg in manager(objects)["args"])


def test_webhook_url_must_be_https() -> None:
    message = helm_error({"webhookURL": "http://127.0.0.1:9443"})
    assert "webhookURL" in message and "https://" in message


def test_host_network_probes_loopback_and_rolls_one_pod_at_a_time() -> None:
    objects = render({"hostNetwork": True})
    # A surge pod could not be scheduled beside the one it replaces (same host ports): one at a time instead.
    assert deployment(objects)["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    spec = deployment(objects)["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert manager(objects)[probe]["httpGet"]["host"] == "127.0.0.1"
