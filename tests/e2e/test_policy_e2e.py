"""Policy modes through the real API server: warnings on the create response, enforce denials, audit
annotations in the API server's audit log, the ServiceAccount validator, namespace overrides and policy reload."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.helpers import E2E_LABEL, FOUR, TENANT, WI, Env, env_names, eventually, mutating_webhook
from tests.processes import WebhookProcess

POLICY = "apiVersion: wi-webhook.io/v1\nkind: Policy\nmodes:\n  unknown-skip-container: audit\n"


class Setup:
    def __init__(self, webhook: WebhookProcess, policy: Path, lenient: Env, strict: Env, label: str) -> None:
        self.webhook, self.policy, self.lenient, self.strict, self.label = webhook, policy, lenient, strict, label


def warnings_of(env: Env, body: dict[str, Any], **kwargs: Any) -> list[str]:
    response = env.core.create_namespaced_pod(env.namespace, body, _preload_content=False, **kwargs)
    return list(response.headers.getlist("Warning"))


@pytest.fixture(scope="module")
def setup(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("policy-webhook")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    webhook = WebhookProcess(workdir, ["--kubeconfig", str(cluster.kubeconfig), "--disable-cert-rotation",
                                       "--policy", str(policy)], env={"AZURE_TENANT_ID": TENANT})
    api = cluster.api_client()
    label = uuid.uuid4().hex[:8]
    core = client.CoreV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    names = {"lenient": f"wi-lenient-{label}", "strict": f"wi-strict-{label}"}
    try:
        webhook.wait_ready(60)
        core.create_namespace({"metadata": {"name": names["lenient"], "labels": {E2E_LABEL: label}}})
        core.create_namespace({"metadata": {"name": names["strict"], "labels": {
            E2E_LABEL: label, "wi-webhook/enforce": "WI001.WI002"}}})
        hook = mutating_webhook("mutation.azure-workload-identity.io", webhook.url, webhook.ca_file, label)
        admission.create_mutating_webhook_configuration({"metadata": {"name": f"policy-{label}"}, "webhooks": [hook]})
        validator = {k: v for k, v in hook.items() if k not in ("reinvocationPolicy", "objectSelector")}
        validator.update(name="serviceaccounts.azure-workload-identity.io",
                         clientConfig={**hook["clientConfig"],
                                       "url": webhook.url.replace("/mutate-v1-pod", "/validate-v1-serviceaccount")},
                         rules=[{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["serviceaccounts"]}])
        admission.create_validating_webhook_configuration({"metadata": {"name": f"policy-sa-{label}"},
                                                           "webhooks": [validator]})
        lenient, strict = Env(api, names["lenient"]), Env(api, names["strict"])
        for env in (lenient, strict):
            env.service_account("workload", **{f"{WI}/client-id": "00000000-1111-2222-3333-444444444444"})
            env.service_account("noid")
        eventually(lambda: "AZURE_CLIENT_ID" in env_names(
            lenient.create(lenient.pod_body("probe"), dry_run="All")["spec"]["containers"][0]))
        eventually(lambda: _validator_active(strict), timeout=30)
        yield Setup(webhook, policy, lenient, strict, label)
    finally:
        with contextlib.suppress(ApiException):
            admission.delete_mutating_webhook_configuration(f"policy-{label}")
        with contextlib.suppress(ApiException):
            admission.delete_validating_webhook_configuration(f"policy-sa-{label}")
        webhook.stop()


def _validator_active(env: Env) -> bool:
    try:
        env.core.create_namespaced_service_account(env.namespace, {"metadata": {
            "name": f"probe-{uuid.uuid4().hex[:6]}", "annotations": {f"{WI}/client-id": "typo"}}}, dry_run="All")
    except ApiException as exc:
        return exc.status == 403 and "WI002" in exc.body
    return False


def test_warn_findings_arrive_as_warnings_and_the_pod_is_still_mutated(setup: Setup) -> None:
    env = setup.lenient
    warnings = warnings_of(env, env.pod_body("warned", sa="noid"))
    assert any("WI001 missing-client-id" in w for w in warnings), warnings
    stored = env.stored("warned")
    assert env_names(stored["spec"]["containers"][0]) == FOUR[1:]
    assert "wi-webhook/status" in stored["metadata"]["annotations"]


def test_enforce_denies_with_the_rule_id(setup: Setup) -> None:
    env = setup.strict
    with pytest.raises(ApiException) as denied:
        env.create(env.pod_body("blocked", sa="noid"))
    message = orjson.loads(denied.value.body)["message"]
    assert "WI001 missing-client-id" in message and "fix:" in message
    with pytest.raises(ApiException):
        env.stored("blocked")
    env.create(env.pod_body("fine"))  # the same namespace with a proper ServiceAccount is admitted
    assert env_names(env.stored("fine")["spec"]["containers"][0]) == FOUR


def test_audit_mode_leaves_an_audit_annotation(setup: Setup, cluster: Any) -> None:
    env = setup.lenient
    warnings = warnings_of(env, env.pod_body("audited", annotations={f"{WI}/skip-containers": "ghost"}))
    assert not any("WI006" in w for w in warnings)

    def audit_annotation() -> str | None:
        for line in cluster.audit_log.read_text().splitlines():
            event = orjson.loads(line)
            ref = event.get("objectRef") or {}
            if ref.get("name") == "audited" and event.get("verb") == "create" and event.get("stage") == \
                    "ResponseComplete":
                annotations = event.get("annotations") or {}
                return annotations.get("mutation.azure-workload-identity.io/WI006-unknown-skip-container")
        return None

    assert "ghost" in eventually(audit_annotation, timeout=15)


def test_service_account_validator(setup: Setup) -> None:
    with pytest.raises(ApiException) as denied:
        setup.strict.service_account("typo", **{f"{WI}/client-id": "my-app-client-id"})
    assert "WI002 invalid-client-id" in orjson.loads(denied.value.body)["message"]
    response = setup.lenient.core.create_namespaced_service_account(setup.lenient.namespace, {
        "metadata": {"name": "typo", "annotations": {f"{WI}/client-id": "my-app-client-id"}}},
        _preload_content=False)
    assert any("WI002" in w for w in response.headers.getlist("Warning"))


def test_policy_file_reload(setup: Setup) -> None:
    env = setup.lenient
    body = env.pod_body("all-skipped", annotations={f"{WI}/skip-containers": "app"})
    assert any("WI010" in w for w in warnings_of(env, body, dry_run="All"))
    setup.policy.write_text(POLICY + "  nothing-injected: enforce\n")

    def denied() -> bool:
        try:
            env.create(body, dry_run="All")
        except ApiException as exc:
            return "WI010 nothing-injected" in exc.body
        return False

    eventually(denied, timeout=30)
    setup.policy.write_text("modes: {bogus: 1}\n")  # an invalid edit keeps the previous policy
    eventually(lambda: "policy file changed but is invalid" in setup.webhook.logs(), timeout=30)
    assert denied()
