"""`verify --pod`'s pure parts: naming the pod as kubectl users do, and label selectors as the API server reads them.
The diagnosis itself runs against a real API server in tests/e2e/test_verify_pod_e2e.py."""

from __future__ import annotations

import pytest

from webhook.cli.errors import UsageError
from webhook.cli.verify_pod import Target, parse_target, selects


@pytest.mark.parametrize(("value", "namespace", "target"), [
    ("web-1", "", Target("default", "Pod", "web-1")),
    ("web-1", "team", Target("team", "Pod", "web-1")),
    ("team/web-1", "", Target("team", "Pod", "web-1")),
    ("team/web-1", "team", Target("team", "Pod", "web-1")),
    ("pod/web-1", "team", Target("team", "Pod", "web-1")),
    ("deploy/web", "team", Target("team", "Deployment", "web")),
    ("deployment/web", "", Target("default", "Deployment", "web")),
    ("sts/db", "team", Target("team", "StatefulSet", "db")),
    ("ds/agent", "team", Target("team", "DaemonSet", "agent")),
    ("job/migrate", "team", Target("team", "Job", "migrate")),
])
def test_pods_are_named_as_kubectl_users_name_them(value: str, namespace: str, target: Target) -> None:
    assert parse_target(value, namespace) == target


@pytest.mark.parametrize(("value", "namespace"), [("a/b/c", ""), ("team/", ""), ("team/web", "other")])
def test_ambiguous_names_are_usage_errors(value: str, namespace: str) -> None:
    with pytest.raises(UsageError, match="--pod"):
        parse_target(value, namespace)


def test_label_selectors() -> None:
    labels = {"azure.workload.identity/use": "true", "tier": "web"}
    assert selects(None, labels) and selects({}, labels)
    assert selects({"matchLabels": {"azure.workload.identity/use": "true"}}, labels)
    assert not selects({"matchLabels": {"azure.workload.identity/use": "false"}}, labels)
    assert selects({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}, labels)
    assert selects({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, labels)
    # The chart's namespaceSelector: every namespace but those labelled to opt out.
    opt_out = {"matchExpressions": [{"key": "azure-workload-identity.io/system", "operator": "DoesNotExist"}]}
    assert selects(opt_out, {"kubernetes.io/metadata.name": "team"})
    assert not selects(opt_out, {"azure-workload-identity.io/system": "true"})
