"""Policy checks: pure functions of (pod, ServiceAccount, config, policy, namespace) -> findings, and the
admission decision that combines them with the mutation.

Modes follow Pod Security Admission / Gatekeeper: `enforce` denies (the message names the rule, the object and
the fix), `warn` allows with an AdmissionResponse warning, `audit` allows with an audit annotation, a metric and a
log line, `off` does nothing. Defaults keep drop-in compatibility: what the reference allows is at most `warn`;
what it denies (WI007 outside 3600-86400, WI009) stays denied whatever the policy says.

Namespace overrides: labels (or annotations) `wi-webhook/enforce`, `wi-webhook/warn`, `wi-webhook/audit`,
`wi-webhook/off` list rule IDs. Label values cannot contain commas, so IDs are separated by `.`, `_` or `,`
(e.g. `wi-webhook/enforce: WI001.WI002`; `all` means every rule).

The rule table is in policy/rules.py and the policy file's schema in policy/schema.py (re-exported here);
this module holds what runs per request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.cli.config import MutationConfig
from webhook.core.constants import (
    CLIENT_ID_ANNOTATION,
    PROXY_CONTAINER_NAME,
    PROXY_INIT_CONTAINER_NAME,
    SKIP_CONTAINERS_ANNOTATION,
    TENANT_ID_ANNOTATION,
    TOKEN_EXPIRATION_ANNOTATION,
)
from webhook.core.injected import env_candidates
from webhook.core.mutation import (
    Denial,
    MutationResult,
    PodRef,
    ServiceAccountInfo,
    go_parse_int,
    mutate_pod,
    skip_containers,
)
from webhook.policy.rules import (
    ALWAYS_ENFORCED,
    NO_WEAKENING,
    OVERRIDE_PREFIX,
    RULES,
    RULES_BY_NAME,
    Mode,
    Rule,
    rule_id,
)
from webhook.policy.schema import (
    DEFAULT_POLICY,
    ExpirationBounds,
    IdentityGrant,
    NamespaceRules,
    Policy,
    PolicyError,
    parse_policy,
)

__all__ = [
    "ALWAYS_ENFORCED", "NO_WEAKENING", "OVERRIDE_PREFIX", "RULES", "RULES_BY_NAME", "ExpirationBounds", "IdentityGrant",
    "Mode", "NamespaceRules", "Policy", "PolicyError", "Rule", "parse_policy", "rule_id",
]

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value))


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def namespace_overrides(namespace: NamespaceInfo | None) -> dict[str, Mode]:
    """Per-namespace modes from `wi-webhook/<mode>` labels or annotations (labels win)."""
    if namespace is None:
        return {}
    overrides: dict[str, Mode] = {}
    for source in (namespace.annotations, namespace.labels):
        for mode in Mode:
            value = source.get(f"{OVERRIDE_PREFIX}{mode.value}")
            if not value:
                continue
            for item in re.split(r"[.,_\s]+", value.strip()):
                if item.lower() == "all":
                    overrides.update(dict.fromkeys(RULES, mode))
                elif item.upper() in RULES:
                    overrides[item.upper()] = mode
    return overrides


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    mode: Mode
    message: str
    container: str = ""

    @property
    def name(self) -> str:
        return RULES[self.rule].name

    def text(self) -> str:
        return f"{self.rule} {self.name}: {self.message}"


# Containers the webhook itself may add, so the skip annotation may name them even when the pod does not have them.
_WEBHOOK_CONTAINERS = frozenset({PROXY_CONTAINER_NAME, PROXY_INIT_CONTAINER_NAME})


def _raw_findings(pod: Mapping[str, Any], namespace: str, sa: ServiceAccountInfo, config: MutationConfig,
                  policy: Policy, result: MutationResult) -> list[tuple[str, str, str]]:
    """(rule, message, container) for every rule that fires; modes are applied by the caller."""
    found = _identity_findings(sa, config, policy, namespace)
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if result.kept_env:  # the env entries the mutation kept, in pod order
        wanted = env_candidates(sa, config, custom_active=False)  # the names WI005 compares, with their values
        for name, env_name, value in result.kept_env:
            expected = wanted.get(env_name)
            if expected and isinstance(value, str) and value != expected:
                found.append(("WI005", f"container {name} sets {env_name}={value!r}; the webhook would inject "
                                       f"{expected!r} and keeps yours", name))
    skip = skip_containers(metadata.get("annotations") or {})
    if skip:
        containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        names = {c.get("name", "") for c in containers} | _WEBHOOK_CONTAINERS
        # An empty entry ("sidecar;") is the reference's way to skip unnamed containers, not a misspelt name.
        for missing in sorted(skip - names - {""}):
            found.append(("WI006", f"{SKIP_CONTAINERS_ANNOTATION} names {missing!r}, which is not a container of "
                                   "this pod", missing))
    bounds = policy.token_expiration
    if result.expiration_seconds and not bounds.min <= result.expiration_seconds <= bounds.max:
        found.append(("WI007", f"token expiration {result.expiration_seconds}s is outside the policy's "
                               f"{bounds.min}-{bounds.max}s", ""))
    if policy.namespaces is not None and policy.namespaces.forbids(namespace):
        found.append(("WI008", f"namespace {namespace} may not use workload identity", ""))
    if not result.injected_containers and (spec.get("initContainers") or spec.get("containers")):
        found.append(("WI010", "every container is skipped: nothing gets the identity", ""))
    return found


def _identity_findings(sa: ServiceAccountInfo, config: MutationConfig, policy: Policy,
                       namespace: str) -> list[tuple[str, str, str]]:
    """WI001-WI004: what is wrong with the identity the ServiceAccount names (its client id and tenant)."""
    found: list[tuple[str, str, str]] = []
    client_id = sa.annotations.get(CLIENT_ID_ANNOTATION, "")
    tenant = sa.annotations.get(TENANT_ID_ANNOTATION, config.tenant_id)
    if not client_id.strip():
        found.append(("WI001", f"{_who(sa, namespace)} has no {CLIENT_ID_ANNOTATION}; AZURE_CLIENT_ID is not "
                               "injected", ""))
    elif not is_guid(client_id):
        found.append(("WI002", f"{_who(sa, namespace)}: client-id {client_id!r} is not a GUID", ""))
    if not is_guid(tenant):
        origin = f"{_who(sa, namespace)} annotation {TENANT_ID_ANNOTATION}" if TENANT_ID_ANNOTATION in \
            sa.annotations else "the webhook's AZURE_TENANT_ID"
        found.append(("WI003", f"tenant id {tenant!r} from {origin} is not a GUID", ""))
    if policy.identities is not None and client_id.strip() and not any(
            grant.allows(client_id, namespace, sa.name) for grant in policy.identities):
        found.append(("WI004", f"{_who(sa, namespace)} may not use identity {client_id}", ""))
    return found


def _who(sa: ServiceAccountInfo, namespace: str) -> str:
    return f"ServiceAccount {namespace}/{sa.name}"


_DENIAL_RULES = {"ServiceAccountNotFound": "WI009", "InvalidTokenExpiration": "WI007"}


@dataclass(slots=True)
class Decision:
    """What the webhook answers: the mutation, or a denial, plus findings turned into warnings/audit entries."""

    result: MutationResult
    findings: list[Finding] = field(default_factory=list)

    @property
    def denial(self) -> Denial | None:
        return self.result.denial

    @property
    def warnings(self) -> list[str]:
        if not self.findings:  # the usual review
            return []
        return admission_warnings([f for f in self.findings if f.mode is Mode.WARN])

    @property
    def audit_annotations(self) -> dict[str, str]:
        audit: dict[str, str] = {}
        for finding in self.findings:
            if finding.mode is Mode.AUDIT:
                key = f"{finding.rule}-{finding.name}"
                audit[key] = f"{audit[key]}; {finding.message}" if key in audit else finding.message
        return audit


MAX_WARNING = 120
MAX_WARNINGS_TOTAL = 4096


def admission_warnings(findings: list[Finding]) -> list[str]:
    """Warnings as the API server wants them: each at most 120 characters, all together at most 4096."""
    out: list[str] = []
    total = 0
    for index, finding in enumerate(findings):
        text = finding.text()
        if len(text) > MAX_WARNING:
            text = text[: MAX_WARNING - 1] + "…"
        if total + len(text) > MAX_WARNINGS_TOTAL - 40:
            out.append(f"…and {len(findings) - index} more wi-webhook findings")
            break
        out.append(text)
        total += len(text)
    return out


def admit(pod: Any, namespace: str, sa: ServiceAccountInfo | None, config: MutationConfig,
          policy: Policy | None = None, namespace_info: NamespaceInfo | None = None,
          ref: PodRef | None = None) -> Decision:
    """The admission decision for one pod: mutation (reference behaviour) plus policy findings."""
    policy = policy or DEFAULT_POLICY
    result = mutate_pod(pod, namespace, sa, config, ref)
    if result.denial is not None:
        rid = _DENIAL_RULES.get(result.denial.reason)
        findings = [Finding(rid, Mode.ENFORCE, result.denial.message)] if rid else []
        return Decision(result, findings)
    assert sa is not None  # mutate_pod denies when the ServiceAccount is missing
    overrides = namespace_overrides(namespace_info) if policy.namespace_overrides else {}
    findings = []
    for rid, message, container in _raw_findings(pod, namespace, sa, config, policy, result):
        mode = policy.mode_for(rid, overrides)
        if mode is not Mode.OFF:
            findings.append(Finding(rid, mode, message, container))
    denial = enforce_denial(findings)
    if denial is not None:
        result = MutationResult(denial=denial, volume_name=result.volume_name,
                                expiration_seconds=result.expiration_seconds)
    return Decision(result, findings)


def enforce_denial(findings: list[Finding]) -> Denial | None:
    """The 403 denial for the enforce-mode findings (each with its rule, message and fix), or None."""
    if not findings:  # the usual review
        return None
    enforced = [f for f in findings if f.mode is Mode.ENFORCE]
    if not enforced:
        return None
    return Denial("; ".join(f"{f.text()} (fix: {RULES[f.rule].fix})" for f in enforced),
                  reason="PolicyViolation", code=403)


def check_service_account(sa: ServiceAccountInfo, config: MutationConfig, policy: Policy | None = None,
                          namespace_info: NamespaceInfo | None = None) -> list[Finding]:
    """WI002/WI003/WI007 on a ServiceAccount itself (the optional validating webhook and `check`)."""
    policy = policy or Policy()
    overrides = namespace_overrides(namespace_info) if policy.namespace_overrides else {}
    raw: list[tuple[str, str]] = []
    who = f"ServiceAccount {sa.namespace}/{sa.name}"
    client_id = sa.annotations.get(CLIENT_ID_ANNOTATION)
    if client_id is not None and client_id.strip() and not is_guid(client_id):
        raw.append(("WI002", f"{who}: client-id {client_id!r} is not a GUID"))
    tenant = sa.annotations.get(TENANT_ID_ANNOTATION)
    if tenant is not None and not is_guid(tenant):
        raw.append(("WI003", f"{who}: tenant-id {tenant!r} is not a GUID"))
    expiration = sa.annotations.get(TOKEN_EXPIRATION_ANNOTATION, "")
    if expiration:
        bounds = policy.token_expiration
        try:
            seconds = go_parse_int(expiration, 64)
        except ValueError:
            raw.append(("WI007", f"{who}: token expiration {expiration!r} is not a whole number of seconds"))
        else:
            if not bounds.min <= seconds <= bounds.max:
                raw.append(("WI007", f"{who}: token expiration {seconds} is outside {bounds.min}-{bounds.max}"))
    findings = []
    for rid, message in raw:
        mode = policy.mode_for(rid, overrides)
        if mode is not Mode.OFF:
            findings.append(Finding(rid, mode, message))
    return findings
