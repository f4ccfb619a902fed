"""Shared test helpers: build configs and ServiceAccounts, apply patches with a real RFC 6902 library, and
validate the result with kubernetes-validate (strict) against an older and the newest Kubernetes schema."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import kubernetes_validate

from webhook.core.model import (
    CustomTokenEndpoint,
    Denial,
    MutationConfig,
    MutationResult,
    NamespaceInfo,
    ServiceAccountInfo,
)
from webhook.core.mutation import mutate_pod
from webhook.core.shape import read_pod
from webhook.policy.evaluate import Decision, admit
from webhook.policy.schema import DEFAULT_POLICY, Policy
from webhook.sources.manifests import service_account_info

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "00000000-1111-2222-3333-444444444444"
SCHEMA_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def config(**overrides: Any) -> MutationConfig:
    return MutationConfig(**{"tenant_id": TENANT, **overrides})


def custom_config(**endpoint: Any) -> MutationConfig:
    values = {"annotation_key": "azure.workload.identity/use-identity-binding", "audience": "api://custom",
              **endpoint}
    return config(custom_endpoint=CustomTokenEndpoint(**values))


def sa(name: str = "sa", namespace: str = "ns", **annotations: str) -> ServiceAccountInfo:
    """A ServiceAccount as `serve` holds it: made from the object by the cache's own function, which keeps only the
    `azure.workload.identity/*` annotations, so that a feature keyed on another annotation fails its unit test."""
    return service_account_info({"apiVersion": "v1", "kind": "ServiceAccount",
                                 "metadata": {"name": name, "namespace": namespace, "annotations": annotations}})


def annotated_sa(name: str = "sa", namespace: str = "ns", client_id: str = CLIENT, **extra: str) -> ServiceAccountInfo:
    return sa(name, namespace, **{"azure.workload.identity/client-id": client_id, **extra})


def mutate(original: dict[str, Any], namespace: str, sa_info: ServiceAccountInfo | None,
           cfg: MutationConfig) -> MutationResult:
    """What serve does with a pod, without policy: the shape check, then the mutation."""
    ref = read_pod(original, namespace)
    if isinstance(ref, Denial):
        return MutationResult(denial=ref)
    return mutate_pod(original, ref, sa_info, cfg)


def decide(original: dict[str, Any], namespace: str, sa_info: ServiceAccountInfo | None, cfg: MutationConfig,
           policy: Policy = DEFAULT_POLICY, namespace_info: NamespaceInfo | None = None) -> Decision:
    """What serve does with a pod: the shape check, then the mutation and the policy."""
    ref = read_pod(original, namespace)
    if isinstance(ref, Denial):
        return Decision(MutationResult(denial=ref))
    return admit(original, ref, sa_info, cfg, policy, namespace_info)


def pod(name: str | None = "pod", *, namespace: str | None = "ns", sa_name: str | None = "sa",
        containers: list[dict[str, Any]] | None = None, init: list[dict[str, Any]] | None = None,
        annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"labels": {"azure.workload.identity/use": "true"}}
    if name is not None:
        metadata["name"] = name
    if namespace is not None:
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = annotations
    body: dict[str, Any] = {"containers": containers if containers is not None else
                            [{"name": "app", "image": "nginx"}], **spec}
    if sa_name is not None:
        body["serviceAccountName"] = sa_name
    if init is not None:
        body["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body}


def apply(original: dict[str, Any], result: MutationResult) -> dict[str, Any]:
    """Apply the result's patch with the `jsonpatch` library (never mutating the input)."""
    assert result.denial is None, result.denial
    return jsonpatch.apply_patch(copy.deepcopy(original), result.patch)


def validate(obj: dict[str, Any]) -> None:
    """Strict schema validation (unknown fields are errors) for every schema version we promise."""
    for version in SCHEMA_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def mutated(original: dict[str, Any], sa_info: ServiceAccountInfo | None = None, cfg: MutationConfig | None = None,
            namespace: str = "ns", check_schema: bool = True) -> tuple[dict[str, Any], MutationResult]:
    """Mutate, apply, validate and check idempotency (a second run yields an empty patch)."""
    cfg = cfg or config()
    sa_info = sa_info or annotated_sa()
    result = mutate(original, namespace, sa_info, cfg)
    out = apply(original, result)
    if check_schema:
        validate(out)
    again = mutate(out, namespace, sa_info, cfg)
    assert again.denial is None and again.patch == [], f"not idempotent: {again.patch}"
    return out, result


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env", [])]
