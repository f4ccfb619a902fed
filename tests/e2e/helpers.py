"""Helpers shared by the end-to-end test modules: polling, webhook registration, a namespace wrapper."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client

WI = "azure.workload.identity"
CLIENT_ID = "00000000-1111-2222-3333-444444444444"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
FOUR = ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"]
E2E_LABEL = "wi-webhook-e2e"


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Retry `check` until it returns a truthy value without raising; bounded."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last error: {last!r}")


def mutating_webhook(name: str, url: str, ca_file: Path, namespace_label: str) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_file.read_bytes()).decode()},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "objectSelector": {"matchLabels": {f"{WI}/use": "true"}},
        "namespaceSelector": {"matchLabels": {E2E_LABEL: namespace_label}},
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "IfNeeded",
        "sideEffects": "None",
        "timeoutSeconds": 10,
        "admissionReviewVersions": ["v1", "v1beta1"],
    }


class Env:
    """One test namespace plus the typed clients."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    def service_account(self, name: str, **annotations: str) -> None:
        self.core.create_namespaced_service_account(
            self.namespace, {"metadata": {"name": name, "annotations": annotations}}
        )

    def pod_body(
        self,
        name: str | None,
        sa: str = "workload",
        labelled: bool = True,
        annotations: dict[str, str] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "labels": {f"{WI}/use": "true"} if labelled else {},
            "annotations": annotations or {},
        }
        if name:
            metadata["name"] = name
        else:
            metadata["generateName"] = "gen-"
        body_spec = {"serviceAccountName": sa, "containers": [{"name": "app", "image": "busybox"}], **spec}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body_spec}

    def create(self, body: dict[str, Any], dry_run: str | None = None) -> dict[str, Any]:
        kwargs = {"dry_run": dry_run} if dry_run else {}
        created = self.core.create_namespaced_pod(self.namespace, body, **kwargs)
        result: dict[str, Any] = self.api.sanitize_for_serialization(created)
        return result

    def stored(self, name: str) -> dict[str, Any]:
        response = self.core.read_namespaced_pod(name, self.namespace, _preload_content=False)
        result: dict[str, Any] = orjson.loads(response.data)
        return result


def env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env") or []]


def wi_volumes(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in pod["spec"].get("volumes") or [] if v["name"].startswith("azure-workload-identity-reserved-")]
