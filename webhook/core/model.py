"""The data types every layer shares: what the core reads (a ServiceAccount, a Namespace, the configuration), what it
answers (a patch or a denial), and the pod's coordinates. Everyone imports them from here.

The pod itself is never modelled: it stays the raw request JSON, so fields this code does not know survive (the
reference's typed round trip dropped them, its bug #1312).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from webhook.core.constants import DEFAULT_AUDIENCE, DEFAULT_PROXY_IMAGE, DEFAULT_PROXY_INIT_IMAGE, PUBLIC_CLOUD_HOST

PatchOp = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServiceAccountInfo:
    """The part of a ServiceAccount the webhook uses. Under `serve` only `azure.workload.identity/*` annotations and
    labels are kept (sources/manifests.py: `service_account_info`), so a new annotation must use that prefix."""

    namespace: str
    name: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """A Namespace's name and its `wi-webhook/*` labels and annotations (policy mode overrides)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Denial:
    """A reason to reject the pod; `code` becomes the AdmissionResponse status code."""

    message: str
    reason: str
    code: int = 400


@dataclass(frozen=True, slots=True)
class PodRef:
    """A pod whose shape was checked (core/shape.py: `read_pod`): where it lives, what to call it in messages, and
    which ServiceAccount it runs as."""

    namespace: str
    name: str  # metadata.name, or "<generateName>*" for a pod the API server names after admission
    service_account: str


@dataclass(slots=True)
class MutationResult:
    """The JSON Patch (empty when nothing changes) or a denial, plus facts for logs and policy."""

    patch: list[PatchOp] = field(default_factory=list)
    denial: Denial | None = None
    injected_containers: list[str] = field(default_factory=list)
    skipped_containers: list[str] = field(default_factory=list)
    expiration_seconds: int = 0
    # (container, env name, value) for each env entry of an injected container that already sets a name the webhook
    # injects: the webhook keeps the user's value, as the reference does, and policy rule WI005 compares them.
    kept_env: list[tuple[str, str, Any]] = field(default_factory=list)


class CustomTokenEndpoint(BaseModel):
    """The v1.6.0 "identity binding" mode: a second audience and CA projection, switched on per pod."""

    model_config = ConfigDict(frozen=True)

    annotation_key: str
    audience: str
    token_proxy: str = ""
    sni_name: str = ""
    ca_data: str = ""
    ca_configmap_name: str = ""
    ctb_signer_name: str = ""
    ctb_label_selector: dict[str, Any] | None = None


class MutationConfig(BaseModel):
    """Everything the core needs from flags and env vars; built once at start-up (cli/config.py) and shared
    read-only."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    authority_host: str = PUBLIC_CLOUD_HOST
    audience: str = DEFAULT_AUDIENCE
    proxy_image: str = DEFAULT_PROXY_IMAGE
    proxy_init_image: str = DEFAULT_PROXY_INIT_IMAGE
    log_level: str = ""
    native_sidecar: bool = False
    custom_endpoint: CustomTokenEndpoint | None = None
    proxy_resources: dict[str, Any] | None = None
    proxy_init_resources: dict[str, Any] | None = None
    status_annotation: bool = True
    webhook_version: str = ""
