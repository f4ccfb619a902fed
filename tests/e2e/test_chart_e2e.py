"""The rendered chart applied to the real API server (every object accepted), and its RBAC proven with
SubjectAccessReviews: exactly what each certificate mode needs, nothing more."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from tests.test_chart import render

SA = "azure-wi-webhook-admin"
MWC = "azure-wi-webhook-mutating-webhook-configuration"
VWC = "azure-wi-webhook-validating-webhook-configuration"
SECRET = "azure-wi-webhook-server-cert"


def apply_all(api: Any, objects: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    applied = []
    for obj in objects:
        if obj["kind"] in ("ServiceMonitor", "Issuer", "Certificate"):  # CRDs this bare API server does not have
            continue
        utils.create_from_dict(api, obj, namespace=obj["metadata"].get("namespace", namespace))
        applied.append(obj)
    return applied


def delete_all(api: Any, objects: list[dict[str, Any]]) -> None:
    dynamic_paths = {
        "MutatingWebhookConfiguration": lambda o: client.AdmissionregistrationV1Api(api)
        .delete_mutating_webhook_configuration(o["metadata"]["name"]),
        "ValidatingWebhookConfiguration": lambda o: client.AdmissionregistrationV1Api(api)
        .delete_validating_webhook_configuration(o["metadata"]["name"]),
        "ClusterRole": lambda o: client.RbacAuthorizationV1Api(api).delete_cluster_role(o["metadata"]["name"]),
        "ClusterRoleBinding": lambda o: client.RbacAuthorizationV1Api(api)
        .delete_cluster_role_binding(o["metadata"]["name"]),
    }
    for obj in objects:
        with contextlib.suppress(ApiException):
            if obj["kind"] in dynamic_paths:
                dynamic_paths[obj["kind"]](obj)


def can(api: Any, namespace: str, verb: str, resource: str, *, group: str = "", name: str = "",
        in_namespace: str | None = None) -> bool:
    attributes = {"verb": verb, "resource": resource, "group": group, "name": name}
    if in_namespace is not None:
        attributes["namespace"] = in_namespace
    review = client.AuthorizationV1Api(api).create_subject_access_review({
        "spec": {"user": f"system:serviceaccount:{namespace}:{SA}", "resourceAttributes": attributes}})
    return bool(review.status.allowed)


@pytest.mark.parametrize("mode", ["selfManaged", "certManager", "existingSecret"])
def test_chart_objects_are_accepted_and_rbac_is_least_privilege(cluster: Any, mode: str) -> None:
    api = cluster.api_client()
    namespace = f"wi-chart-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {"certificates": {"mode": mode}, "networkPolicy": {"enabled": True},
                              "podDisruptionBudget": {"minAvailable": 1},
                              "serviceAccountValidator": {"enabled": True}}
    if mode == "existingSecret":
        values["certificates"]["existingSecret"] = {"name": "my-cert", "caBundle": "Y2E="}
    objects = render(values, namespace=namespace)
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    applied: list[dict[str, Any]] = []
    try:
        applied = apply_all(api, objects, namespace)
        kinds = {o["kind"] for o in applied}
        assert {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding",
                "NetworkPolicy"} <= kinds
        # What every mode needs: the ServiceAccount (and Namespace) caches.
        for verb in ("get", "list", "watch"):
            assert can(api, namespace, verb, "serviceaccounts")
            assert can(api, namespace, verb, "namespaces")
        self_managed = mode == "selfManaged"
        assert can(api, namespace, "get", "secrets", name=SECRET, in_namespace=namespace) is self_managed
        assert can(api, namespace, "update", "secrets", name=SECRET, in_namespace=namespace) is self_managed
        assert can(api, namespace, "update", "mutatingwebhookconfigurations", group="admissionregistration.k8s.io",
                   name=MWC) is self_managed
        assert can(api, namespace, "update", "validatingwebhookconfigurations", group="admissionregistration.k8s.io",
                   name=VWC) is self_managed
        assert not can(api, namespace, "update", "validatingwebhookconfigurations",
                       group="admissionregistration.k8s.io", name="someone-elses-validator")
        # Never: other Secrets, Secrets elsewhere, listing Secrets, other webhook configurations, pods.
        assert not can(api, namespace, "get", "secrets", name="other", in_namespace=namespace)
        assert not can(api, namespace, "list", "secrets", in_namespace=namespace)
        assert not can(api, namespace, "get", "secrets", name=SECRET, in_namespace="kube-system")
        assert not can(api, namespace, "update", "mutatingwebhookconfigurations",
                       group="admissionregistration.k8s.io", name="someone-elses-webhook")
        assert not can(api, namespace, "delete", "mutatingwebhookconfigurations",
                       group="admissionregistration.k8s.io", name=MWC)
        assert not can(api, namespace, "create", "pods", in_namespace=namespace)
        assert not can(api, namespace, "update", "serviceaccounts", in_namespace=namespace)
    finally:
        delete_all(api, applied)  # the cluster-scoped ones; the namespace takes the rest
        core.delete_namespace(namespace)
