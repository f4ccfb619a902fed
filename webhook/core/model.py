"""The values the mutation core passes around: what it reads of a ServiceAccount, and what it answers.

Plain dataclasses. The pod itself is never modelled: it stays the raw request JSON (see webhook/core/mutation.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PatchOp = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServiceAccountInfo:
    """The part of a ServiceAccount the webhook uses; what the cache keeps per ServiceAccount (slots: it may hold
    100k of them)."""

    namespace: str
    name: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""


@dataclass(frozen=True, slots=True)
class Denial:
    """A reason to reject the pod; `code` becomes the AdmissionResponse status code."""

    message: str
    reason: str
    code: int = 400


@dataclass(frozen=True, slots=True)
class PodRef:
    """What the shell needs before the ServiceAccount lookup: where the pod lives, the name its token volume is
    derived from, and which ServiceAccount it runs as."""

    namespace: str
    name: str
    service_account: str


@dataclass(slots=True)
class MutationResult:
    """The JSON Patch (empty when nothing changes) or a denial, plus facts for logs, metrics, policy and the status
    annotation."""

    patch: list[PatchOp] = field(default_factory=list)
    denial: Denial | None = None
    volume_name: str = ""
    env_names: list[str] = field(default_factory=list)
    injected_containers: list[str] = field(default_factory=list)
    skipped_containers: list[str] = field(default_factory=list)
    proxy_injected: bool = False
    expiration_seconds: int = 0
    # (container, env name, value) for each env entry of an injected container that already sets one of the names
    # the webhook injects (the webhook keeps the user's value, as the reference does): what policy rule WI005 compares.
    kept_env: list[tuple[str, str, Any]] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.denial is None
