"""The chart installed on the real node the way Helm does it, without a helm binary: objects rendered by the Helm
SDK (tests/test_chart.py's `render`) and applied through the API server with server-side apply (one field manager,
like a Helm release); an upgrade re-applies and prunes what is no longer rendered; uninstall deletes them all."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from tests.node.kube import describe, logs, wait_for
from tests.test_chart import render

# The chart's names (the reference's) and the identity the tests use.
CHART_NS = "azure-workload-identity-system"
SA = "azure-wi-webhook-admin"
SECRET = "azure-wi-webhook-server-cert"
MWC = "azure-wi-webhook-mutating-webhook-configuration"
WEBHOOK_NAME = "mutation.azure-workload-identity.io"
CLIENT_ID = "00000000-1111-2222-3333-444444444444"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
FIELD_MANAGER = "wi-webhook-tests"
CRD_KINDS = {"ServiceMonitor", "Issuer", "Certificate"}  # not installed on this cluster


@dataclass
class Release:
    """One installed release of the chart: its namespace, the values it was last applied with, its objects."""

    api: Any
    namespace: str
    values: dict[str, Any]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def _dynamic(self) -> DynamicClient:
        return DynamicClient(self.api)

    def _resource(self, obj: dict[str, Any]) -> Any:
        return self._dynamic().resources.get(api_version=obj["apiVersion"], kind=obj["kind"])

    def apply(self, values: dict[str, Any]) -> None:
        """Install or upgrade: server-side apply every rendered object, then delete those no longer rendered."""
        objects = [o for o in render(values, namespace=self.namespace) if o["kind"] not in CRD_KINDS]
        for obj in objects:
            namespaced = self._resource(obj).namespaced
            self._resource(obj).server_side_apply(
                body=obj, name=obj["metadata"]["name"],
                namespace=obj["metadata"].get("namespace", self.namespace) if namespaced else None,
                field_manager=FIELD_MANAGER, force_conflicts=True)
        keep = {(o["kind"], o["metadata"]["name"]) for o in objects}
        for old in self.objects:
            if (old["kind"], old["metadata"]["name"]) not in keep:
                self._delete(old)
        self.values, self.objects = values, objects

    def uninstall(self) -> None:
        for obj in reversed(self.objects):
            self._delete(obj)
        self.objects = []

    def _delete(self, obj: dict[str, Any]) -> None:
        resource = self._resource(obj)
        with contextlib.suppress(NotFoundError, ApiException):
            resource.delete(name=obj["metadata"]["name"],
                            namespace=obj["metadata"].get("namespace", self.namespace) if resource.namespaced
                            else None)

    def deployment(self) -> Any:
        [obj] = [o for o in self.objects if o["kind"] == "Deployment"]
        return client.AppsV1Api(self.api).read_namespaced_deployment(obj["metadata"]["name"], self.namespace)

    def wait_rolled_out(self, timeout: float = 180.0) -> Any:
        """Every replica of the current template updated and available (kubectl rollout status)."""

        def done() -> Any:
            dep = self.deployment()
            s = dep.status
            want = dep.spec.replicas
            if (s.observed_generation or 0) >= dep.metadata.generation and (s.updated_replicas or 0) == want \
                    and (s.available_replicas or 0) == want and (s.replicas or 0) == want:
                return dep
            return None

        try:
            return wait_for(done, timeout, f"rollout of the webhook Deployment in {self.namespace}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe_pods()}") from None

    def describe_pods(self) -> str:
        """Each webhook pod's container states, events and log tail, for assertion messages."""
        parts = []
        for pod in self.pods():
            name = pod.metadata.name
            try:
                tail = "\n".join(logs(self.api, self.namespace, name).splitlines()[-15:])
            except ApiException as exc:
                tail = f"(logs: HTTP {exc.status})"
            parts.append(f"--- pod {name}\n{describe(self.api, self.namespace, name)}\n{tail}")
        return "\n".join(parts) or "(no webhook pod)"

    def pods(self) -> list[Any]:
        labels = self.deployment().spec.selector.match_labels
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return list(client.CoreV1Api(self.api).list_namespaced_pod(self.namespace, label_selector=selector).items)
