"""What the webhook adds to a pod, as plain JSON values: the env vars, the token volume and its mount, the proxy
containers and the status annotation, with the reference's values and order.

To inject one more env var from a ServiceAccount annotation, add it to `env_to_inject` (the status annotation and
policy rule WI005 follow from there) and its annotation name to core/constants.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from webhook.core.annotations import tenant_id
from webhook.core.constants import (
    CA_FILE_PATH,
    CA_RELATIVE_PATH,
    CLIENT_ID_ANNOTATION,
    ENV_AUTHORITY_HOST,
    ENV_CLIENT_ID,
    ENV_FEDERATED_TOKEN_FILE,
    ENV_KUBERNETES_CA_DATA,
    ENV_KUBERNETES_CA_FILE,
    ENV_KUBERNETES_SNI_NAME,
    ENV_KUBERNETES_TOKEN_PROXY,
    ENV_TENANT_ID,
    MOUNT_PATH,
    PROXY_CONTAINER_NAME,
    PROXY_INIT_CONTAINER_NAME,
    TENANT_ID_ANNOTATION,
    TOKEN_FILE_PATH,
    TOKEN_RELATIVE_PATH,
    VOLUME_NAME_PREFIX,
)
from webhook.core.model import MutationConfig, ServiceAccountInfo


def token_volume_name(metadata: Mapping[str, Any]) -> str:
    """The token volume's name, derived from the pod's name as the reference derives it (so both webhooks give a pod
    the same volume): from `metadata.name`, or `<generateName> (prefix)` for a pod named after admission."""
    return volume_name_for(metadata.get("name") or f"{metadata.get('generateName') or ''} (prefix)")


def volume_name_for(hash_input: str) -> str:
    """`azure-workload-identity-reserved-` + 30 hex chars of its sha256: 63 chars, a valid DNS label."""
    return VOLUME_NAME_PREFIX + hashlib.sha256(hash_input.encode("utf-8")).hexdigest()[:30]


def env_to_inject(sa: ServiceAccountInfo, config: MutationConfig, custom_active: bool) -> dict[str, str]:
    """The env vars each injected container gets (name: value), in the reference's order; a name whose value is
    empty is left out (an empty client-id or tenant-id annotation injects nothing)."""
    env = {
        ENV_CLIENT_ID: sa.annotations.get(CLIENT_ID_ANNOTATION, ""),
        ENV_TENANT_ID: tenant_id(sa, config.tenant_id),
        ENV_FEDERATED_TOKEN_FILE: TOKEN_FILE_PATH,
        ENV_AUTHORITY_HOST: config.authority_host,
    }
    if custom_active and config.custom_endpoint is not None:
        custom = config.custom_endpoint
        env.update({
            ENV_KUBERNETES_TOKEN_PROXY: custom.token_proxy,
            ENV_KUBERNETES_SNI_NAME: custom.sni_name,
            ENV_KUBERNETES_CA_FILE: CA_FILE_PATH,
            ENV_KUBERNETES_CA_DATA: custom.ca_data,
        })
    return {name: value for name, value in env.items() if value}


def volume_mount(volume_name: str) -> dict[str, Any]:
    return {"name": volume_name, "mountPath": MOUNT_PATH, "readOnly": True}


def projected_volume(name: str, expiration: int, config: MutationConfig, custom_active: bool) -> dict[str, Any]:
    """The token volume: a projected ServiceAccount token for the audience, plus the custom endpoint's CA source."""
    custom = config.custom_endpoint if custom_active else None
    sources: list[dict[str, Any]] = [{"serviceAccountToken": {
        "path": TOKEN_RELATIVE_PATH,
        "expirationSeconds": expiration,
        "audience": custom.audience if custom else config.audience,
    }}]
    if custom and custom.ca_configmap_name:
        sources.append({"configMap": {"name": custom.ca_configmap_name,
                                      "items": [{"key": "ca.crt", "path": CA_RELATIVE_PATH}], "optional": False}})
    if custom and custom.ctb_signer_name:
        bundle: dict[str, Any] = {"signerName": custom.ctb_signer_name}
        if custom.ctb_label_selector is not None:
            bundle["labelSelector"] = custom.ctb_label_selector
        bundle.update({"path": CA_RELATIVE_PATH, "optional": False})
        sources.append({"clusterTrustBundle": bundle})
    return {"name": name, "projected": {"sources": sources}}


def _proxy_log_level(config: MutationConfig) -> str:
    return config.log_level if config.log_level in ("", "info", "debug", "trace", "all") else ""


def proxy_init_container(port: int, config: MutationConfig) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": PROXY_INIT_CONTAINER_NAME,
        "image": config.proxy_init_image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
            "privileged": True,
            "runAsNonRoot": False,
            "runAsUser": 0,
        },
        "env": [{"name": "PROXY_PORT", "value": str(port)}],
    }
    if config.proxy_init_resources:
        container["resources"] = config.proxy_init_resources
    return container


def proxy_sidecar_container(port: int, config: MutationConfig) -> dict[str, Any]:
    level = _proxy_log_level(config)
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER_NAME,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "args": [f"--proxy-port={port}", f"--log-level={level}"],
        "ports": [{"containerPort": port}],
        "lifecycle": {"postStart": {"exec": {
            "command": ["/proxy", f"--proxy-port={port}", "--probe", f"--log-level={level}"]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    if config.proxy_resources:
        container["resources"] = config.proxy_resources
    if config.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


# The reference before v1.6 named the token volume `azure-identity-token` and mounted it at
# /var/run/secrets/azure/tokens; pods it injected then may still run.
LEGACY_VOLUME_NAME = "azure-identity-token"


def injected_env(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The env a webhook (this one or the reference, any release) gave a running pod, or None when none did.

    Read from the pod itself, not from our status annotation, so that pods the reference injected (or ours with
    `--status-annotation=false`) count: a token volume (`token_volumes`) mounted in a container that has
    AZURE_FEDERATED_TOKEN_FILE; that container's env (name: literal value)."""
    spec = pod.get("spec") or {}
    names = {volume.get("name") for volume in token_volumes(pod)}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        mounted = {mount.get("name") for mount in container.get("volumeMounts") or []}
        env = {entry.get("name"): entry.get("value") for entry in container.get("env") or []}
        if mounted & names and ENV_FEDERATED_TOKEN_FILE in env:
            return env
    return None


def token_volumes(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The pod's volumes that either webhook added: a projected ServiceAccount token named as this webhook and the
    reference v1.6 name it, or as releases before v1.6 did."""
    return [volume for volume in (pod.get("spec") or {}).get("volumes") or [] if _is_token_volume(volume)]


def identity_changes(env: Mapping[str, Any], sa: ServiceAccountInfo) -> list[str]:
    """How the identity a running pod got (`injected_env`) differs from what its ServiceAccount says now, one
    `NAME='had' (now 'is')` per env var. The tenant is compared only when the ServiceAccount names one: without the
    annotation the pod got the webhook's AZURE_TENANT_ID, which a reader of the cluster does not know."""
    wanted = {ENV_CLIENT_ID: sa.annotations.get(CLIENT_ID_ANNOTATION, "")}
    if TENANT_ID_ANNOTATION in sa.annotations:
        wanted[ENV_TENANT_ID] = sa.annotations[TENANT_ID_ANNOTATION]
    return [f"{name}={env.get(name) or ''!r} (now {value!r})" for name, value in wanted.items()
            if (env.get(name) or "") != value]


def _is_token_volume(volume: Mapping[str, Any]) -> bool:
    name = volume.get("name") or ""
    sources = (volume.get("projected") or {}).get("sources") or []
    return ((name.startswith(VOLUME_NAME_PREFIX) or name == LEGACY_VOLUME_NAME)
            and any("serviceAccountToken" in source for source in sources))


def annotations_hash(sa: ServiceAccountInfo) -> str:
    """12 hex chars of sha256 over the ServiceAccount's annotations (sorted JSON)."""
    return hashlib.sha256(orjson.dumps(dict(sa.annotations), option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def status_annotation(sa: ServiceAccountInfo, env_names: list[str], volume_name: str, config: MutationConfig) -> str:
    """`wi-webhook/status`: what was injected and from which ServiceAccount annotations (short hash).

    Deterministic for the same inputs, so reinvocation stays a no-op. Extra information for people: `check
    --cluster` decides from the pod itself (`injected_env`), which works for pods either webhook injected.
    """
    return orjson.dumps({"version": config.webhook_version, "env": env_names, "volume": volume_name,
                         "mountPath": MOUNT_PATH, "serviceAccount": sa.name,
                         "annotationsHash": annotations_hash(sa)}).decode()
