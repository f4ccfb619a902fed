"""The Helm chart `charts/workload-identity-webhook`, rendered offline with the Helm v4 SDK (no helm binary).

Every rendered object is validated against the Kubernetes OpenAPI schemas (strict) for 1.29 and the newest version
kubernetes-validate ships; CRD kinds (ServiceMonitor, cert-manager Issuer/Certificate) are checked by hand.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from webhook.cli.config import ENV_NAMES, WebhookOptions, build_mutation_config
from webhook.policy.schema import parse_policy

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "workload-identity-webhook"
NS = "azure-workload-identity-system"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
RELEASE = "wi"
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

MWC_NAME = "azure-wi-webhook-mutating-webhook-configuration"
SERVICE_NAME = "azure-wi-webhook-webhook-service"
SECRET_NAME = "azure-wi-webhook-server-cert"
CERT_NAME = "azure-wi-webhook-serving-cert"
POLICY_PATH = "/etc/wi-webhook/policy/policy.yaml"

# Kinds from CRDs, absent from the Kubernetes schemas: checked by hand in check_crd_objects().
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
}

CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTEST\n-----END CERTIFICATE-----\n"
PROXY_RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
PROXY_INIT_RESOURCES = {"requests": {"cpu": "5m", "memory": "16Mi"}}
CTB_SELECTOR = {"matchLabels": {"azure.workload.identity/ca": "true"}}
POLICY = {
    "apiVersion": "wi-webhook.io/v1",
    "kind": "Policy",
    "modes": {"missing-client-id": "enforce", "WI005": "audit"},
    "tokenExpiration": {"min": 3600, "max": 43200},
    "namespaces": {"deny": ["default"]},
    "identities": [{"clientId": "00000000-0000-0000-0000-000000000001", "namespaces": ["prod-*"]}],
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"certificates": {"mode": "certManager"}},
    "cert-manager-own-issuer": {
        "certificates": {
            "mode": "certManager",
            "certManager": {
                "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
                "duration": "8760h",
                "renewBefore": "1440h",
            },
        },
    },
    "existing-secret": {
        "certificates": {
            "mode": "existingSecret",
            "existingSecret": {"name": "my-webhook-tls", "caBundle": base64.b64encode(CA_PEM).decode()},
        },
    },
    "network-policy-and-service-monitor": {
        "networkPolicy": {
            "enabled": True,
            "apiServerCIDRs": ["10.0.0.1/32", "20.50.0.0/16"],
            "metrics": {"enabled": True, "from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
            "health": {"enabled": True},
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}, "interval": "15s"},
    },
    "custom-token-endpoint": {
        "customTokenEndpoint": {
            "annotationSuffix": "identity-binding",
            "audience": "api://AKSIdentityBinding",
            "azureKubernetesSniName": "ib.example.internal",
            "azureKubernetesTokenProxy": "https://ib.example.internal:443",
            "azureKubernetesCACTBSignerName": "example.com/identity-binding",
            "azureKubernetesCACTBLabelSelector": json.dumps(CTB_SELECTOR),
        },
    },
    "policy": {"policy": POLICY},
    "host-network": {"hostNetwork": True, "webhookURL": "https://127.0.0.1:9443", "serviceMonitor": {"enabled": True}},
    "serviceaccount-validator": {"serviceAccountValidator": {"enabled": True}, "policy": POLICY},
    "serviceaccount-validator-cert-manager": {"serviceAccountValidator": {"enabled": True, "failurePolicy": "Fail"},
                                              "certificates": {"mode": "certManager"}},
    "fail-open": {
        "failurePolicy": "Ignore",
        "timeoutSeconds": 10,
        "matchConditions": [
            {"name": "not-node-users", "expression": "!request.userInfo.username.startsWith('system:node:')"},
        ],
    },
    "extras": {
        "replicaCount": 3,
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"}],
        "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
        "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
        "extraArgs": ["--serviceaccount-lookup-timeout=3"],
        "podLabels": {"team": "platform"},
        "podAnnotations": {"example.com/owner": "platform"},
        "imagePullSecrets": [{"name": "regcred"}],
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.azure.com/mode", "operator": "In", "values": ["system"]}]},
        ]}}},
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "workload-identity-webhook"}},
        }],
        "podDisruptionBudget": {"maxUnavailable": 1},
        "service": {"port": 8443, "targetPort": 10250},
        "metricsAddr": "0.0.0.0:9090",
        "logLevel": "debug",
        "tlsMinVersion": "1.2",
    },
    "proxy-resources": {"proxy": {"resources": PROXY_RESOURCES, "initResources": PROXY_INIT_RESOURCES}},
    # A values file written for the reference chart (Azure/azure-workload-identity 1.6.0) keeps working.
    "reference-values": {
        "image": {"release": "v0.1.0"},
        "metricsBackend": "prometheus",
        "azureEnvironment": "AzureChinaCloud",
        "mutatingWebhookNamespaceSelector": {"matchLabels": {"workload-identity": "enabled"}},
        "mutatingWebhookAnnotations": {"example.com/owner": "platform"},
        "podDisruptionBudget": {"minAvailable": 1},
        "revisionHistoryLimit": 5,
        "nameOverride": "",
        "priorityClassName": "system-cluster-critical",
    },
}


# --- helpers -------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render_raw(values: dict[str, Any] | None = None, *, namespace: str = NS, tenant: bool = True) -> dict[str, str]:
    supplied = merge({"azureTenantID": TENANT} if tenant else {}, values or {})
    return chart().render(supplied, name=RELEASE, namespace=namespace, is_install=True)


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (the API server's strict decoding rejects them)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
        assert not duplicates, f"duplicate keys {duplicates} at {node.start_mark}"
        return super().construct_mapping(node, deep=deep)


def render(values: dict[str, Any] | None = None, *, namespace: str = NS, tests: bool = False) -> list[dict[str, Any]]:
    """The objects `helm install` creates; with `tests`, also the `helm test` hook's (created only by `helm test`)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_raw(values, namespace=namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.load_all(text, Loader=UniqueKeyLoader)
                       if doc and (tests or (doc["metadata"].get("annotations") or {}).get("helm.sh/hook") != "test"))
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment", "azure-wi-webhook-controller-manager")


def manager(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment(objects)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["manager"]
    return containers[0]


def webhook(objects: list[dict[str, Any]]) -> dict[str, Any]:
    hooks: list[dict[str, Any]] = one(objects, "MutatingWebhookConfiguration", MWC_NAME)["webhooks"]
    assert len(hooks) == 1
    return hooks[0]


def flag_values(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        assert name not in out, f"{name} passed twice"
        out[name] = value if sep else None
    return out


def helm_error(values: dict[str, Any], *, tenant: bool = True) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render_raw(values, tenant=tenant)
    return str(caught.value)


def check_crd_objects(objects: list[dict[str, Any]]) -> None:
    """Shape checks for the CRD kinds kubernetes-validate has no schema for."""
    services = {o["metadata"]["name"]: o for o in find(objects, "Service")}
    for monitor in find(objects, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == NS
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        assert spec["namespaceSelector"] == {"matchNames": [NS]}
        selected = [s for s in services.values()
                    if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert [s["metadata"]["name"] for s in selected] == ["azure-wi-webhook-metrics-service"]
        port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings",
                                     "metricRelabelings"}
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    issuers = {o["metadata"]["name"]: o for o in find(objects, "Issuer")}
    certificates = {o["metadata"]["name"]: o for o in find(objects, "Certificate")}
    for issuer in issuers.values():
        assert issuer["apiVersion"] == "cert-manager.io/v1"
        assert issuer["metadata"]["namespace"] == NS
        spec = issuer["spec"]
        assert len(spec) == 1 and next(iter(spec)) in {"selfSigned", "ca"}
        if "ca" in spec:
            ca_certs = [c for c in certificates.values() if c["spec"]["secretName"] == spec["ca"]["secretName"]]
            assert len(ca_certs) == 1 and ca_certs[0]["spec"]["isCA"] is True
    for certificate in certificates.values():
        assert certificate["apiVersion"] == "cert-manager.io/v1"
        assert certificate["metadata"]["namespace"] == NS
        spec = certificate["spec"]
        assert set(spec) <= {"secretName", "commonName", "dnsNames", "usages", "duration", "renewBefore",
                             "privateKey", "issuerRef", "isCA"}
        assert isinstance(spec["secretName"], str) and spec["secretName"]
        assert set(spec["issuerRef"]) <= {"name", "kind", "group"} and spec["issuerRef"]["name"]
        if spec["issuerRef"].get("kind", "Issuer") == "Issuer" and spec["issuerRef"]["name"] not in issuers:
            raise AssertionError(f"Certificate {certificate['metadata']['name']} refers to a missing Issuer")
        for key in ("duration", "renewBefore"):
            if key in spec:
                assert re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", spec[key]), spec[key]


# --- rendering and schema validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_rendered_object_validates(scenario: str, version: str) -> None:
    objects = render(SCENARIOS[scenario])
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{scenario}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: "
                                 f"{exc.message}") from None
    check_crd_objects(objects)


def test_every_object_is_labelled_like_the_reference() -> None:
    for scenario, values in SCENARIOS.items():
        for obj in render(values):
            labels = obj["metadata"]["labels"]
            assert labels["app"] == "workload-identity-webhook", scenario
            assert labels["chart"] == "workload-identity-webhook"
            assert labels["release"] == values.get("serviceMonitor", {}).get("labels", {}).get("release", RELEASE) \
                if obj["kind"] == "ServiceMonitor" else labels["release"] == RELEASE
            assert labels["azure-workload-identity.io/system"] == "true"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                                   "ValidatingWebhookConfiguration"}:
                assert obj["metadata"]["namespace"] == NS


def test_default_objects_have_the_reference_names() -> None:
    objects = render()
    names = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert names == sorted([
        ("ServiceAccount", "azure-wi-webhook-admin"),
        ("ConfigMap", "azure-wi-webhook-config"),
        ("Secret", SECRET_NAME),
        ("Service", SERVICE_NAME),
        ("Deployment", "azure-wi-webhook-controller-manager"),
        ("PodDisruptionBudget", "azure-wi-webhook-controller-manager"),
        ("MutatingWebhookConfiguration", MWC_NAME),
        ("ClusterRole", "azure-wi-webhook-manager-role"),
        ("ClusterRoleBinding", "azure-wi-webhook-manager-rolebinding"),
        ("Role", "azure-wi-webhook-manager-role"),
        ("RoleBinding", "azure-wi-webhook-manager-rolebinding"),
    ])
    secret = one(objects, "Secret", SECRET_NAME)
    assert "data" not in secret and "stringData" not in secret  # empty placeholder, filled by the webhook
    assert deployment(objects)["spec"]["selector"]["matchLabels"] == {
        "app": "workload-identity-webhook", "azure-workload-identity.io/system": "true",
        "chart": "workload-identity-webhook", "release": RELEASE,
    }


def test_helm_lint_is_clean() -> None:
    for scenario, values in SCENARIOS.items():
        for version in ("v1.29.0", f"v{kubernetes_validate.latest_version()}"):
            report = helm.lint(CHART, merge({"azureTenantID": TENANT}, values), strict=True, namespace=NS,
                               kube_version=version)
            problems = [m for m in report["messages"] if m["severity"] >= 2]
            assert not problems and not report["errors"], f"{scenario} ({version}): {report}"
            assert report["total_charts_linted"] == 1


def test_chart_metadata() -> None:
    meta = chart().metadata
    assert meta["name"] == "workload-identity-webhook"
    assert meta["version"] == "0.1.0" and meta["appVersion"] == "0.1.0"
    assert meta["apiVersion"] == "v2"
    assert chart().schema is not None


# --- values validation -----------------------------------------------------------------------------------------------


def test_missing_tenant_id_fails_naming_the_value() -> None:
    message = helm_error({}, tenant=False)
    assert "azureTenantID" in message and "required" in message
    assert "azureTenantID" in helm_error({"azureTenantID": ""}, tenant=False)


def test_wrong_type_fails_with_a_readable_schema_error() -> None:
    message = helm_error({"replicaCount": "two"})
    assert "/replicaCount" in message and "want integer" in message
    message = helm_error({"networkPolicy": {"enabled": "yes"}})
    assert "/networkPolicy/enabled" in message and "want boolean" in message


def test_unknown_top_level_key_fails() -> None:
    message = helm_error({"replicas": 2})
    assert "additional properties 'replicas' not allowed" in message
    # A key of an older reference chart that no longer exists (renamed to failurePolicy).
    assert "mutatingWebhookFailurePolicy" in helm_error({"mutatingWebhookFailurePolicy": "Ignore"})


@pytest.mark.parametrize(("values", "where"), [
    ({"failurePolicy": "Sometimes"}, "/failurePolicy"),
    ({"certificates": {"mode": "vault"}}, "/certificates/mode"),
    ({"tlsMinVersion": "1.4"}, "/tlsMinVersion"),
    ({"logLevel": "verbose"}, "/logLevel"),
    ({"timeoutSeconds": 31}, "/timeoutSeconds"),
    ({"timeoutSeconds": 0}, "/timeoutSeconds"),
    ({"image": {"tags": "v1"}}, "/image"),
    ({"azureEnvironment": "AzureMoonCloud"}, "/azureEnvironment"),
])
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    message = helm_error(values)
    assert "schema" in message and where in message, message


def test_existing_secret_mode_requires_the_secret_name() -> None:
    message = helm_error({"certificates": {"mode": "existingSecret"}})
    assert "certificates.existingSecret.name" in message


def test_schema_and_values_cover_each_other() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(schema["properties"]) - {"global"} == set(defaults)
    for key in ("failurePolicy", "logLevel", "tlsMinVersion"):
        assert "enum" in schema["properties"][key]
    assert schema["properties"]["certificates"]["properties"]["mode"]["enum"] == [
        "selfManaged", "certManager", "existingSecret"]
    chart().validate_schema(merge(defaults, {"azureTenantID": TENANT}))


def test_reference_values_are_accepted() -> None:
    reference_keys = {
        "replicaCount", "image", "imagePullSecrets", "nodeSelector", "resources", "tolerations", "affinity",
        "topologySpreadConstraints", "service", "azureEnvironment", "azureTenantID", "logLevel", "metricsAddr",
        "metricsBackend", "priorityClassName", "mutatingWebhookAnnotations", "podLabels", "podAnnotations",
        "mutatingWebhookNamespaceSelector", "podDisruptionBudget", "customTokenEndpoint", "extraEnv",
        "extraVolumes", "extraVolumeMounts", "revisionHistoryLimit", "nameOverride",
    }
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert reference_keys <= set(defaults)
    assert {"repository", "release", "pullPolicy"} <= set(defaults["image"])
    assert set(defaults["customTokenEndpoint"]) == {
        "annotationSuffix", "audience", "azureKubernetesCaData", "azureKubernetesSniName", "azureKubernetesTokenProxy",
        "azureKubernetesCAConfigMapName", "azureKubernetesCACTBSignerName", "azureKubernetesCACTBLabelSelector"}


# --- MutatingWebhookConfiguration ------------------------------------------------------------------------------------


def test_webhook_configuration_matches_the_reference_with_our_defaults() -> None:
    objects = render()
    mwc = one(objects, "MutatingWebhookConfiguration", MWC_NAME)
    assert "annotations" not in mwc["metadata"]
    assert webhook(objects) == {
        "name": "mutation.azure-workload-identity.io",
        "admissionReviewVersions": ["v1", "v1beta1"],
        "clientConfig": {"service": {"name": SERVICE_NAME, "namespace": NS, "path": "/mutate-v1-pod", "port": 443}},
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "namespaceSelector": {"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": [NS, "kube-system", "kube-node-lease"],
        }]},
        "objectSelector": {"matchLabels": {"azure.workload.identity/use": "true"}},
        "reinvocationPolicy": "IfNeeded",
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                   "scope": "*"}],
        "sideEffects": "None",
        "timeoutSeconds": 5,
    }


def test_default_namespace_selector_excludes_release_and_system_namespaces() -> None:
    for namespace in ("wi-system", "kube-system"):
        selector = webhook(render(namespace=namespace))["namespaceSelector"]
        (expression,) = selector["matchExpressions"]
        assert expression["key"] == "kubernetes.io/metadata.name" and expression["operator"] == "NotIn"
        assert sorted(expression["values"]) == sorted({namespace, "kube-system", "kube-node-lease"})
    custom = {"matchLabels": {"workload-identity": "enabled"}}
    assert webhook(render({"mutatingWebhookNamespaceSelector": custom}))["namespaceSelector"] == custom


def test_webhook_knobs() -> None:
    values = SCENARIOS["fail-open"]
    hook = webhook(render(values))
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 10
    assert hook["matchConditions"] == values["matchConditions"]
    # Helm merges maps: extra criteria narrow the default; `matchLabels: null` drops the default label.
    expressions = [{"key": "team", "operator": "In", "values": ["a", "b"]}]
    assert webhook(render({"objectSelector": {"matchExpressions": expressions}}))["objectSelector"] == {
        "matchLabels": {"azure.workload.identity/use": "true"}, "matchExpressions": expressions}
    replaced = {"matchLabels": None, "matchExpressions": expressions}
    assert webhook(render({"objectSelector": replaced}))["objectSelector"] == {"matchExpressions": expressions}
    mwc = one(render(SCENARIOS["reference-values"]), "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"] == {"example.com/owner": "platform"}


def test_cert_modes_wire_the_ca_bundle() -> None:
    cm = render(SCENARIOS["cert-manager"])
    annotations = one(cm, "MutatingWebhookConfiguration")["metadata"]["annotations"]
    assert annotations == {"cert-manager.io/inject-ca-from": f"{NS}/{CERT_NAME}"}
    assert "caBundle" not in webhook(cm)["clientConfig"]
    existing = render(SCENARIOS["existing-secret"])
    assert base64.b64decode(webhook(existing)["clientConfig"]["caBundle"]) == CA_PEM
    assert "annotations" not in one(existing, "MutatingWebhookConfiguration")["metadata"]
    assert "caBundle" not in webhook(render())["clientConfig"]  # self-managed: written by the webhook


# --- certificates ----------------------------------------------------------------------------------------------------


def cert_volume(objects: list[dict[str, Any]]) -> dict[str, Any]:
    volumes = {v["name"]: v for v in deployment(objects)["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in manager(objects)["volumeMounts"]}
    assert mounts["cert"] == {"name": "cert", "mountPath": "/certs", "readOnly": True}
    secret: dict[str, Any] = volumes["cert"]["secret"]
    assert secret["defaultMode"] == 420
    return secret


def test_self_managed_mode() -> None:
    objects = render()
    assert cert_volume(objects)["secretName"] == SECRET_NAME
    assert not find(objects, "Certificate") and not find(objects, "Issuer")
    flags = flag_values(manager(objects)["args"])
    assert "--disable-cert-rotation" not in flags
    assert flags["--cert-secret-name"] == SECRET_NAME
    assert flags["--webhook-config-name"] == MWC_NAME
    assert flags["--service-name"] == SERVICE_NAME
    assert flags["--cert-check-rotation-interval"] == "12h"
    assert flags["--cert-renew-before"] == "2160h"
    assert flags["--cert-ca-settle-delay"] == "10s"
    custom = {"certificates": {"selfManaged": {"rotationCheckInterval": "1h", "renewBefore": "720h",
                                               "caSettleDelay": "30s"}}}
    flags = flag_values(manager(render(custom))["args"])
    assert flags["--cert-check-rotation-interval"] == "1h" and flags["--cert-renew-before"] == "720h"
    assert flags["--cert-ca-settle-delay"] == "30s"


ROTATION_FLAGS = {"--cert-secret-name", "--webhook-config-name", "--service-name", "--cert-check-rotation-interval",
                  "--cert-renew-before", "--cert-ca-settle-delay"}


def test_cert_manager_mode_bootstraps_a_ca() -> None:
    objects = render(SCENARIOS["cert-manager"])
    assert not find(objects, "Secret")
    issuers = {o["metadata"]["name"]: o["spec"] for o in find(objects, "Issuer")}
    assert issuers == {"azure-wi-webhook-selfsigned-issuer": {"selfSigned": {}},
                       "azure-wi-webhook-ca-issuer": {"ca": {"secretName": "azure-wi-webhook-ca"}}}
    ca = one(objects, "Certificate", "azure-wi-webhook-ca")["spec"]
    assert ca["isCA"] is True and ca["secretName"] == "azure-wi-webhook-ca"
    assert ca["issuerRef"]["name"] == "azure-wi-webhook-selfsigned-issuer"
    serving = one(objects, "Certificate", CERT_NAME)["spec"]
    assert serving["dnsNames"] == [f"{SERVICE_NAME}.{NS}.svc", f"{SERVICE_NAME}.{NS}.svc.cluster.local"]
    assert serving["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": "azure-wi-webhook-ca-issuer"}
    assert serving["duration"] == "2160h" and serving["renewBefore"] == "720h"
    assert cert_volume(objects)["secretName"] == serving["secretName"]
    flags = flag_values(manager(objects)["args"])
    assert "--disable-cert-rotation" in flags and not ROTATION_FLAGS & set(flags)
    # Least privilege: without self-managed certificates the webhook needs no Secret or webhook-config access.
    assert not find(objects, "Role") and not find(objects, "RoleBinding")
    rules = one(objects, "ClusterRole")["rules"]
    assert [r["resources"] for r in rules] == [["serviceaccounts"], ["namespaces"]]
    assert all(r["verbs"] == ["get", "list", "watch"] for r in rules)


def test_cert_manager_mode_with_own_issuer() -> None:
    values = SCENARIOS["cert-manager-own-issuer"]
    objects = render(values)
    assert not find(objects, "Issuer")
    serving = one(objects, "Certificate", CERT_NAME)["spec"]
    assert serving["issuerRef"] == values["certificates"]["certManager"]["issuerRef"]
    assert serving["duration"] == "8760h" and serving["renewBefore"] == "1440h"


def test_existing_secret_mode() -> None:
    objects = render(SCENARIOS["existing-secret"])
    assert not find(objects, "Secret") and not find(objects, "Certificate")
    assert cert_volume(objects)["secretName"] == "my-webhook-tls"
    flags = flag_values(manager(objects)["args"])
    assert "--disable-cert-rotation" in flags and not ROTATION_FLAGS & set(flags)
    assert not find(objects, "Role")


# --- RBAC ------------------------------------------------------------------------------------------------------------


def test_rbac_is_least_privilege() -> None:
    for scenario, values in SCENARIOS.items():
        objects = render(values)
        for role in find(objects, "ClusterRole") + find(objects, "Role"):
            for rule in role["rules"]:
                for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                    assert "*" not in rule.get(field, []), f"{scenario}: wildcard in {role['metadata']['name']}"
                assert not {"create", "delete", "deletecollection", "escalate", "bind", "impersonate",
                            "patch"} & set(rule["verbs"]), rule  # the rotator only reads and replaces
                assert "nonResourceURLs" not in rule
        for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "azure-wi-webhook-admin",
                                            "namespace": NS}]
    objects = render()
    read_only = [
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    ]
    assert one(objects, "ClusterRole")["rules"] == [
        *read_only,
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
         "resourceNames": [MWC_NAME], "verbs": ["get", "update"]},
    ]
    role = one(objects, "Role")
    assert role["metadata"]["namespace"] == NS
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET_NAME],
                              "verbs": ["get", "update"]}]
    assert one(objects, "RoleBinding")["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                      "name": "azure-wi-webhook-manager-role"}
    assert one(objects, "ClusterRoleBinding")["roleRef"]["name"] == "azure-wi-webhook-manager-role"


# --- Deployment ------------------------------------------------------------------------------------------------------


def test_deployment_is_hardened() -> None:
    for scenario, values in SCENARIOS.items():
        objects = render(values)
        pod = deployment(objects)["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, scenario
        assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == 65532
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        container = manager(objects)["securityContext"]
        assert container["allowPrivilegeEscalation"] is False
        assert container["readOnlyRootFilesystem"] is True
        assert container["capabilities"] == {"drop": ["ALL"]}
        assert container.get("privileged", False) is False
        assert pod.get("hostNetwork", False) is values.get("hostNetwork", False)  # only when asked for
        assert not pod.get("hostPID") and not pod.get("hostIPC")
        assert pod["serviceAccountName"] == "azure-wi-webhook-admin"


def test_deployment_defaults() -> None:
    objects = render()
    spec = deployment(objects)["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["revisionHistoryLimit"] == 10
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["terminationGracePeriodSeconds"] == 35  # 5 s shutdown delay + 25 s in-flight grace + slack
    assert pod["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": spec["selector"]["matchLabels"]}, "matchLabelKeys": ["pod-template-hash"],
    }]
    container = manager(objects)
    assert container["image"] == "ghcr.io/workload-identity-webhook/webhook:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in container  # the image's ENTRYPOINT is `wi-webhook`; args name the command
    assert container["args"] == [
        "serve",
        "--log-level=info", "--metrics-addr=:8095", "--health-addr=:9440", "--port=9443", "--webhook-cert-dir=/certs",
        "--tls-min-version=1.3", "--native-sidecar=auto", "--workers=1", "--shutdown-delay=5",
        f"--cert-secret-name={SECRET_NAME}",
        f"--webhook-config-name={MWC_NAME}", f"--service-name={SERVICE_NAME}", "--cert-check-rotation-interval=12h",
        "--cert-renew-before=2160h", "--cert-ca-settle-delay=10s",
    ]
    assert container["env"] == [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {
        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}}]
    assert container["envFrom"] == [{"configMapRef": {"name": "azure-wi-webhook-config"}}]
    assert container["ports"] == [
        {"name": "webhook-server", "containerPort": 9443, "protocol": "TCP"},
        {"name": "healthz", "containerPort": 9440, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8095, "protocol": "TCP"},
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "healthz"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    service = one(objects, "Service", SERVICE_NAME)["spec"]
    assert service["ports"] == [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 9443}]
    assert service["selector"] == spec["selector"]["matchLabels"]
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_deployment_extras_and_service_ports() -> None:
    values = SCENARIOS["extras"]
    objects = render(values)
    spec = deployment(objects)["spec"]
    pod = spec["template"]["spec"]
    container = manager(objects)
    assert spec["replicas"] == 3
    assert container["env"][1:] == values["extraEnv"]
    assert values["extraVolumes"][0] in pod["volumes"]
    assert values["extraVolumeMounts"][0] in container["volumeMounts"]
    assert {v["name"] for v in pod["volumes"]} >= {"cert", "corp-ca"}
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["topologySpreadConstraints"] == values["topologySpreadConstraints"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert one(objects, "ServiceAccount")["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["template"]["metadata"]["labels"]["team"] == "platform"
    assert spec["template"]["metadata"]["annotations"]["example.com/owner"] == "platform"
    flags = flag_values(container["args"])
    assert flags["--port"] == "10250" and flags["--metrics-addr"] == "0.0.0.0:9090"
    assert flags["--log-level"] == "debug" and flags["--tls-min-version"] == "1.2"
    assert container["args"][-1] == "--serviceaccount-lookup-timeout=3"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"webhook-server": 10250, "healthz": 9440, "metrics": 9090}
    service = one(objects, "Service", SERVICE_NAME)["spec"]
    assert service["ports"][0]["port"] == 8443 and service["ports"][0]["targetPort"] == 10250
    assert webhook(objects)["clientConfig"]["service"]["port"] == 8443
    assert one(objects, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": spec["selector"]["matchLabels"]}}


def test_image_selection() -> None:
    def image(values: dict[str, Any]) -> str:
        return str(manager(render({"image": values}))["image"])

    assert image({"tag": "1.2.3"}) == "ghcr.io/workload-identity-webhook/webhook:1.2.3"
    assert image({"release": "v0.1.0"}) == "ghcr.io/workload-identity-webhook/webhook:v0.1.0"  # reference key
    assert image({"release": "v0.1.0", "tag": "0.2.0"}).endswith(":0.2.0")
    digest = "sha256:" + "a" * 64
    assert image({"repository": "registry.example/wi", "digest": digest}) == f"registry.example/wi@{digest}"


def test_custom_token_endpoint_flags_only_when_set() -> None:
    flags = flag_values(manager(render(SCENARIOS["custom-token-endpoint"]))["args"])
    assert flags["--custom-token-endpoint-annotation-suffix"] == "identity-binding"
    assert flags["--custom-token-endpoint-audience"] == "api://AKSIdentityBinding"
    default = flag_values(manager(render())["args"])
    assert not {f for f in default if f.startswith("--custom-token-endpoint")}


def test_policy_config_map_is_mounted_only_when_set() -> None:
    objects = render(SCENARIOS["policy"])
    config = one(objects, "ConfigMap", "azure-wi-webhook-policy")
    assert yaml.safe_load(config["data"]["policy.yaml"]) == POLICY
    # The file is one the webhook's own policy loader accepts.
    assert parse_policy(yaml.safe_load(config["data"]["policy.yaml"]), "policy.yaml").modes
    container = manager(objects)
    assert flag_values(container["args"])["--policy"] == POLICY_PATH
    mount = next(m for m in container["volumeMounts"] if m["name"] == "policy")
    assert mount["mountPath"] + "/policy.yaml" == POLICY_PATH and mount["readOnly"] is True
    volume = next(v for v in deployment(objects)["spec"]["template"]["spec"]["volumes"] if v["name"] == "policy")
    assert volume["configMap"]["name"] == "azure-wi-webhook-policy"
    default = render()
    assert not find(default, "ConfigMap", "azure-wi-webhook-policy")
    assert "--policy" not in flag_values(manager(default)["args"])


def test_config_changes_roll_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return str(deployment(render(values))["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"azureEnvironment": "AzureUSGovernmentCloud"})


@functools.lru_cache(maxsize=1)
def serve_help_flags() -> frozenset[str]:
    candidates = [Path(sys.executable).parent / "wi-webhook", ROOT / ".venv" / "bin" / "wi-webhook"]
    exe = next((str(p) for p in candidates if p.exists()), None) or shutil.which("wi-webhook")
    assert exe, "wi-webhook is not installed (pip install -e .)"
    result = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True, timeout=60, check=True)
    return frozenset(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", result.stdout))


def test_args_are_flags_that_serve_knows() -> None:
    known = serve_help_flags()
    assert "--log-level" in known and "--webhook-cert-dir" in known
    used: set[str] = set()
    for values in SCENARIOS.values():
        command, *args = manager(render(values))["args"]
        assert command == "serve" and all(arg.startswith("--") for arg in args), args  # ENTRYPOINT is `wi-webhook`
        used |= set(flag_values(args))
    missing = sorted(used - known)
    assert not missing, f"the chart passes flags `wi-webhook serve --help` does not list: {missing}"


# --- ConfigMap -------------------------------------------------------------------------------------------------------


def config_data(values: dict[str, Any]) -> dict[str, str]:
    return dict(one(render(values), "ConfigMap", "azure-wi-webhook-config")["data"])


def test_config_map_keys_are_env_vars_the_webhook_reads() -> None:
    everything = {
        "proxy": {"resources": PROXY_RESOURCES, "initResources": PROXY_INIT_RESOURCES},
        "customTokenEndpoint": {
            "azureKubernetesCaData": "LS0tLS1CRUdJTi==", "azureKubernetesSniName": "sni.example",
            "azureKubernetesTokenProxy": "https://proxy.example", "azureKubernetesCAConfigMapName": "ca-cm",
            "azureKubernetesCACTBSignerName": "example.com/signer",
            "azureKubernetesCACTBLabelSelector": json.dumps(CTB_SELECTOR),
        },
    }
    data = config_data(everything)
    assert set(data) <= set(ENV_NAMES)
    assert data == {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_ENVIRONMENT": "AzurePublicCloud",
        "PROXY_IMAGE": "mcr.microsoft.com/oss/azure/workload-identity/proxy:v1.6.0",
        "PROXY_INIT_IMAGE": "mcr.microsoft.com/oss/azure/workload-identity/proxy-init:v1.6.0",
        "PROXY_RESOURCES": json.dumps(PROXY_RESOURCES, separators=(",", ":"), sort_keys=True),
        "PROXY_INIT_RESOURCES": json.dumps(PROXY_INIT_RESOURCES, separators=(",", ":"), sort_keys=True),
        "AZURE_KUBERNETES_CA_DATA": "LS0tLS1CRUdJTi==",
        "AZURE_KUBERNETES_SNI_NAME": "sni.example",
        "AZURE_KUBERNETES_TOKEN_PROXY": "https://proxy.example",
        "AZURE_KUBERNETES_CA_CONFIGMAP_NAME": "ca-cm",
        "AZURE_KUBERNETES_CA_CTB_SIGNER_NAME": "example.com/signer",
        "AZURE_KUBERNETES_CA_CTB_LABEL_SELECTOR": json.dumps(CTB_SELECTOR),
    }
    # Defaults: only the tenant, the cloud and the proxy images; custom-endpoint keys only when non-empty.
    assert set(config_data({})) == {"AZURE_TENANT_ID", "AZURE_ENVIRONMENT", "PROXY_IMAGE", "PROXY_INIT_IMAGE"}
    # The label selector may also be given as an object.
    selector = config_data({"customTokenEndpoint": {"azureKubernetesCACTBSignerName": "s",
                                                    "azureKubernetesCACTBLabelSelector": CTB_SELECTOR}})
    assert json.loads(selector["AZURE_KUBERNETES_CA_CTB_LABEL_SELECTOR"]) == CTB_SELECTOR


@pytest.mark.parametrize("scenario", ["default", "custom-token-endpoint", "proxy-resources", "reference-values"])
def test_config_map_is_accepted_by_the_webhook(scenario: str) -> None:
    """The rendered environment goes through the webhook's own configuration code without an error."""
    env = {**config_data(SCENARIOS[scenario]), "POD_NAMESPACE": NS}
    config = build_mutation_config(WebhookOptions(), env, native_sidecar=False)
    assert config is not None


# --- NetworkPolicy and ServiceMonitor --------------------------------------------------------------------------------


def test_network_policy() -> None:
    assert not find(render(), "NetworkPolicy")
    values = SCENARIOS["network-policy-and-service-monitor"]
    objects = render(values)
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == deployment(objects)["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    webhook_rule, metrics_rule, health_rule = policy["ingress"]
    assert webhook_rule == {"ports": [{"port": 9443, "protocol": "TCP"}]}  # from anywhere: the API server
    assert metrics_rule == {"ports": [{"port": 8095, "protocol": "TCP"}], "from": values["networkPolicy"]["metrics"][
        "from"]}
    assert health_rule == {"ports": [{"port": 9440, "protocol": "TCP"}]}
    dns, api = policy["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert api == {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
                   "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "20.50.0.0/16"}}]}
    minimal = one(render({"networkPolicy": {"enabled": True, "metrics": {"enabled": False}}}), "NetworkPolicy")
    assert minimal["spec"]["ingress"] == [{"ports": [{"port": 9443, "protocol": "TCP"}]}]
    assert "to" not in minimal["spec"]["egress"][1]



def test_network_policy_can_restrict_the_webhook_and_metrics_ports() -> None:
    """Issue 18: 9443 limited to the API server's addresses and/or peers; metrics to the monitoring namespace."""
    peer = {"podSelector": {"matchLabels": {"app": "konnectivity-agent"}}}
    values = {"networkPolicy": {"enabled": True, "webhook": {"cidrs": ["10.0.0.1/32"], "from": [peer]},
                                "metrics": {"namespaces": ["monitoring"]}}}
    webhook_rule, metrics_rule = one(render(values), "NetworkPolicy")["spec"]["ingress"]
    assert webhook_rule == {"ports": [{"port": 9443, "protocol": "TCP"}],
                            "from": [{"ipBlock": {"cidr": "10.0.0.1/32"}}, peer]}
    assert metrics_rule == {"ports": [{"port": 8095, "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}
    assert "networkPolicy" in helm_error({"networkPolicy": {"webhook": {"cidrs": ["not a cidr"]}}})
    assert "networkPolicy" in helm_error({"networkPolicy": {"metrics": {"namespaces": ["Bad_Name"]}}})


def test_service_monitor() -> None:
    assert not find(render(), "ServiceMonitor")
    objects = render(SCENARIOS["network-policy-and-service-monitor"])
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # serviceMonitor.labels win
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "scheme": "http",
                                             "interval": "15s", "scrapeTimeout": "10s"}]
    service = one(objects, "Service", "azure-wi-webhook-metrics-service")["spec"]
    assert service["ports"] == [{"name": "metrics", "port": 8095, "protocol": "TCP", "targetPort": "metrics"}]
    assert service["selector"] == deployment(objects)["spec"]["selector"]["matchLabels"]


# --- documentation ---------------------------------------------------------------------------------------------------


def test_notes_explain_how_to_use_the_webhook() -> None:
    notes = render_raw()["workload-identity-webhook/templates/NOTES.txt"]
    for text in ('azure.workload.identity/use: "true"', "azure.workload.identity/client-id",
                 "kubectl -n <namespace> get pod <pod> -o yaml", "wi-webhook verify --pod", NS):
        assert text in notes
    assert "WARNING" not in notes
    assert "WARNING: replicaCount is 1" in render_raw({"replicaCount": 1})[
        "workload-identity-webhook/templates/NOTES.txt"]
    # The default image registry: said, with what to do when the cluster cannot pull from it; not for one's own.
    assert "NOTE: image.repository is the chart's default" in notes and 'chart README, "Install"' in notes
    mine = render_raw({"image": {"repository": "registry.example.com/platform/workload-identity-webhook"}})
    assert "NOTE: image.repository" not in mine["workload-identity-webhook/templates/NOTES.txt"]


def test_memory_limit_below_the_idle_figure_is_refused_and_a_low_one_warned() -> None:
    """Issue 18: the default holds the measured worst case; a reference values file's 30Mi fails to render with
    the reason; a limit between the idle figure and the default renders with a warning in NOTES."""
    assert deployment(render())["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "memory": "256Mi"}
    for low in ("30Mi", "100M", "64Mi", 50_000_000, "0.1Gi"):
        error = helm_error({"resources": {"limits": {"memory": low}}})
        assert "below the webhook's measured idle memory" in error and "at least 112Mi" in error, (low, error)
    assert "not a Kubernetes memory quantity" in helm_error({"resources": {"limits": {"memory": "lots"}}})
    notes = render_raw({"resources": {"limits": {"memory": "160Mi"}}})["workload-identity-webhook/templates/NOTES.txt"]
    assert "WARNING: resources.limits.memory is 160Mi" in notes
    for fine in ("256Mi", "1Gi", "300M", 512 * 1024 * 1024):
        notes = render_raw({"resources": {"limits": {"memory": fine}}})[
            "workload-identity-webhook/templates/NOTES.txt"]
        assert "WARNING" not in notes, fine
    assert "WARNING" not in render_raw({"resources": {"limits": None}})["workload-identity-webhook/templates/NOTES.txt"]


def test_readme_has_the_memory_table() -> None:
    readme = (CHART / "README.md").read_text()
    section = readme.split("## Memory", 1)[1].split("\n## ", 1)[0]
    for row in ("idle", "10k ServiceAccounts", "100k ServiceAccounts", "8 concurrent 3 MiB pods",
                "2,000 idle connections", "--objects"):
        assert row in section, row


OPAQUE_VALUES = {"resources", "nodeSelector", "podSecurityContext", "securityContext", "objectSelector"}


def value_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = prefix + key
        if isinstance(value, dict) and value and key not in OPAQUE_VALUES:
            paths.extend(value_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", readme, flags=re.M)}
    missing = [p for p in value_paths(defaults) if p not in rows]
    assert not missing, f"values missing from the README table: {missing}"
    for text in ("selfManaged", "certManager", "existingSecret", "Upgrading from the reference chart"):
        assert text in readme


@pytest.mark.parametrize("mode", ["selfManaged", "certManager", "existingSecret"])
def test_serviceaccount_validator(mode: str) -> None:
    certificates: dict[str, Any] = {"mode": mode}
    if mode == "existingSecret":
        certificates["existingSecret"] = {"name": "mine", "caBundle": "Y2E="}
    assert find(render({"certificates": certificates}), "ValidatingWebhookConfiguration") == []
    objects = render({"certificates": certificates, "serviceAccountValidator": {"enabled": True}})
    config = one(objects, "ValidatingWebhookConfiguration", "azure-wi-webhook-validating-webhook-configuration")
    [hook] = config["webhooks"]
    assert hook["name"] == "serviceaccounts.azure-workload-identity.io"
    assert hook["clientConfig"]["service"]["path"] == "/validate-v1-serviceaccount"
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["rules"][0]["resources"] == ["serviceaccounts"]
    assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert "objectSelector" not in hook and "reinvocationPolicy" not in hook
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [NS, "kube-system", "kube-node-lease"]
    args = manager(objects)["args"]
    role = one(objects, "ClusterRole")
    vwc_rules = [r for r in role["rules"] if "validatingwebhookconfigurations" in r["resources"]]
    if mode == "selfManaged":
        assert "--validating-webhook-config-name=azure-wi-webhook-validating-webhook-configuration" in args
        assert vwc_rules and vwc_rules[0]["resourceNames"] == ["azure-wi-webhook-validating-webhook-configuration"]
    else:
        assert not any(a.startswith("--validating-webhook-config-name") for a in args) and not vwc_rules
    if mode == "certManager":
        assert "cert-manager.io/inject-ca-from" in config["metadata"]["annotations"]
    if mode == "existingSecret":
        assert hook["clientConfig"]["caBundle"] == "Y2E="
    assert "serviceAccountValidator" in helm_error({"serviceAccountValidator": {"enabled": "yes"}})


def test_helm_test_hook_dry_runs_a_labelled_pod() -> None:
    """`helm test`: the hook pod runs the webhook's image as the webhook runs, may only create pods in the test
    namespace, and fails unless the dry-run pod comes back injected; it can be turned off."""
    objects = render({}, tests=True)
    hooks = [o for o in objects if (o["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    assert sorted(o["kind"] for o in hooks) == ["Pod", "Role", "RoleBinding", "ServiceAccount"]
    for obj in hooks:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    pod = one(hooks, "Pod", "azure-wi-webhook-test")
    container = pod["spec"]["containers"][0]
    assert container["image"] == manager(objects)["image"] and pod["spec"]["restartPolicy"] == "Never"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    script = container["args"][0]
    assert 'dry_run="All"' in script and "AZURE_FEDERATED_TOKEN_FILE" in script and "sys.exit(" in script
    role = one(hooks, "Role", "azure-wi-webhook-test")
    assert role["metadata"]["namespace"] == "default" and role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    assert not [o for o in render({"tests": {"enabled": False}}, tests=True)
                if (o["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
