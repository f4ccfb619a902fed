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


def test_host_network_hands_the_node_ports_over_with_a_surge_pod() -> None:
    objects = render({"hostNetwork": True, "serviceMonitor": {"enabled": True}})
    # The new pod starts beside the old one on the same node ports (serve --reuse-port); the old one serves until
    # the new one answers /readyz: the same surge strategy as without hostNetwork.
    assert deployment(objects)["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    spec = deployment(objects)["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    container = manager(objects)
    assert "--reuse-port" in container["args"]
    # Declared ports would become hostPorts, and the scheduler would refuse the surge pod (NodePorts): none, and
    # the probes and the metrics Service name port numbers.
    assert "ports" not in container
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["host"] == "127.0.0.1"
        assert container[probe]["httpGet"]["port"] == 9440
    metrics_service = one(objects, "Service", "azure-wi-webhook-metrics-service")
    assert metrics_service["spec"]["ports"][0]["targetPort"] == 8095
    # The hand-off waits up to --shutdown-delay for the successor, then finishes in-flight reviews: the grace
    # period covers both.
    flags = flag_values(container["args"])
    assert flags["--shutdown-delay"] == "30" and spec["terminationGracePeriodSeconds"] == 60


def test_without_host_network_nothing_of_the_hand_off_is_rendered() -> None:
    objects = render({"serviceMonitor": {"enabled": True}})
    container = manager(objects)
    assert "--reuse-port" not in container["args"]
    assert [p["name"] for p in container["ports"]] == ["webhook-server", "healthz", "metrics"]
    assert all(container[probe]["httpGet"]["port"] == "healthz"
               for probe in ("startupProbe", "livenessProbe", "readinessProbe"))
    assert flag_values(container["args"])["--shutdown-delay"] == "5"
    assert deployment(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35


@pytest.mark.parametrize(("values", "delay", "grace"), [
    ({"shutdownDelaySeconds": 10}, "10", 40),
    ({"shutdownDelaySeconds": 12.5}, "12.5", 43),
    ({"shutdownDelaySeconds": 20, "terminationGracePeriodSeconds": 90}, "20", 90),
])
def test_host_network_grace_period_follows_the_delay(values: dict[str, Any], delay: str, grace: int) -> None:
    objects = render({"hostNetwork": True, **values})
    assert flag_values(manager(objects)["args"])["--shutdown-delay"] == delay
    assert deployment(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace


def test_host_network_refuses_a_grace_period_shorter_than_the_hand_off() -> None:
    message = helm_error({"hostNetwork": True, "terminationGracePeriodSeconds": 40})
    assert "terminationGracePeriodSeconds 40" in message and "at least 57" in message


def test_host_network_refuses_several_workers() -> None:
    message = helm_error({"hostNetwork": True, "workers": 2})
    assert "hostNetwork" in message and "workers: 1" in message and "--reuse-port" in message
