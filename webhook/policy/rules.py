"""The policy rules (WI001-WI013), their default modes and fixes, and the mode ordering shared by the policy file's
schema (webhook/policy/schema.py) and the checks (webhook/policy/evaluate.py, webhook/cli/check_workloads.py).

Every rule is configurable in the policy file's `modes` (and by namespace labels), including the three that only
`check` can see (`Rule.scope`): WI011 on manifests, WI012/WI013 on a cluster's running pods. The only fixed mode is
WI009's (ALWAYS_ENFORCED): a pod whose ServiceAccount does not exist is denied by the reference, and this webhook
never answers more leniently than the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from webhook.core.constants import (
    CLIENT_ID_ANNOTATION,
    SKIP_CONTAINERS_ANNOTATION,
    TENANT_ID_ANNOTATION,
    TOKEN_EXPIRATION_ANNOTATION,
    USE_LABEL,
)


class Mode(StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"
    AUDIT = "audit"
    OFF = "off"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    default: Mode
    fix: str
    scope: str = "webhook"  # who evaluates it: "webhook" (serve, mutate and check), "check" or "check --cluster"


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("WI001", "missing-client-id", Mode.WARN,
         f"annotate the ServiceAccount with {CLIENT_ID_ANNOTATION}: <managed identity client id>"),
    Rule("WI002", "invalid-client-id", Mode.WARN,
         f"set {CLIENT_ID_ANNOTATION} to the identity's client id, a GUID (az identity show --query clientId)"),
    Rule("WI003", "invalid-tenant-id", Mode.WARN,
         f"set {TENANT_ID_ANNOTATION} (or the webhook's AZURE_TENANT_ID) to a tenant GUID"),
    Rule("WI004", "identity-not-allowed", Mode.ENFORCE,
         "use an identity the policy allows for this namespace/ServiceAccount, or extend the policy's identities"),
    Rule("WI005", "env-conflict", Mode.WARN,
         "remove the container's own value so the webhook can inject it, or make it match"),
    Rule("WI006", "unknown-skip-container", Mode.WARN,
         f"fix the container name in {SKIP_CONTAINERS_ANNOTATION} (';'-separated)"),
    Rule("WI007", "token-expiration", Mode.ENFORCE,
         f"set {TOKEN_EXPIRATION_ANNOTATION} to seconds within the allowed range"),
    Rule("WI008", "namespace-not-allowed", Mode.ENFORCE,
         "run workload identity pods only in namespaces the policy allows"),
    Rule("WI009", "service-account-not-found", Mode.ENFORCE,
         "create the ServiceAccount (with its client-id annotation) before the pod, or fix serviceAccountName"),
    Rule("WI010", "nothing-injected", Mode.WARN,
         f"remove at least one container from {SKIP_CONTAINERS_ANNOTATION}, or drop the azure.workload.identity/use "
         "label"),
    Rule("WI011", "label-not-on-pod-template", Mode.WARN,
         f"move the {USE_LABEL}: \"true\" label to the pod template's metadata.labels", scope="check"),
    Rule("WI012", "stale-identity", Mode.WARN,
         "restart the workload (kubectl rollout restart) so its pods get the ServiceAccount's current identity",
         scope="check --cluster"),
    Rule("WI013", "not-injected", Mode.WARN,
         "recreate the pod: it opted in but was admitted without the webhook (created before the install or while "
         "the webhook was unavailable with failurePolicy Ignore)", scope="check --cluster"),
)}
RULES_BY_NAME = {r.name: r for r in RULES.values()}
ALWAYS_ENFORCED = {"WI009"}  # reference denials are never weakened (WI007's reference range is in the mutation)
# The policy file's access rules: a namespace label may make them stricter but never weaker, or anyone who can
# label a namespace could claim another team's identity.
NO_WEAKENING = {"WI004", "WI008"}
STRICTNESS = {Mode.OFF: 0, Mode.AUDIT: 1, Mode.WARN: 2, Mode.ENFORCE: 3}
OVERRIDE_PREFIX = "wi-webhook/"


def rule_id(key: str) -> str:
    """Accept a rule ID (WI001, case-insensitive) or name (missing-client-id)."""
    upper = key.strip().upper()
    if upper in RULES:
        return upper
    if key.strip().lower() in RULES_BY_NAME:
        return RULES_BY_NAME[key.strip().lower()].id
    known = ", ".join(f"{r.id} ({r.name})" for r in RULES.values())
    raise ValueError(f"unknown rule {key!r}; known rules: {known}")
