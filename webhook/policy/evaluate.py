"""Running the rules (policy/rules.py): the admission decision for a pod, the findings for a ServiceAccount, a workload
manifest or a running pod, each with the mode the policy and the namespace give it. Pure functions.

Modes follow Pod Security Admission / Gatekeeper: `enforce` denies (the message names the rule, the object and
the fix), `warn` allows with an AdmissionResponse warning, `audit` allows with an audit annotation, a metric and a
log line, `off` does nothing. Defaults keep drop-in compatibility: what the reference allows is at most `warn`;
what it denies (WI007 outside 3600-86400, WI009) stays denied whatever the policy says.

Namespace overrides: labels (or annotations) `wi-webhook/enforce`, `wi-webhook/warn`, `wi-webhook/audit`,
`wi-webhook/off` list rule IDs. Label values cannot contain commas, so IDs are separated by `.`, `_` or `,`
(e.g. `wi-webhook/enforce: WI001.WI002`; `all` means every rule).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from webhook.core.model import Denial, MutationConfig, MutationResult, NamespaceInfo, PodRef, ServiceAccountInfo
from webhook.core.mutation import mutate_pod
from webhook.policy.rules import (
    OVERRIDE_PREFIX,
    RULES,
    AccountUnderReview,
    Finding,
    Hit,
    Mode,
    PodUnderReview,
    RunningPod,
    WorkloadUnderCheck,
)
from webhook.policy.schema import DEFAULT_POLICY, Policy


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


def mode_of(rule_id: str, policy: Policy, namespace: NamespaceInfo | None) -> Mode:
    """The mode a rule runs in for objects of this namespace."""
    overrides = namespace_overrides(namespace) if policy.namespace_overrides else {}
    return policy.mode_for(rule_id, overrides)


def findings(hits: Iterable[tuple[str, Hit]], policy: Policy, namespace: NamespaceInfo | None) -> list[Finding]:
    """Each (rule ID, hit) as a finding in the rule's mode; rules that are off report nothing."""
    found = []
    for rule_id, hit in hits:
        mode = mode_of(rule_id, policy, namespace)
        if mode is not Mode.OFF:
            found.append(Finding(rule_id, mode, hit.message, hit.container))
    return found


@dataclass(slots=True)
class Decision:
    """What the webhook answers for a pod: the mutation, or a denial, plus the findings."""

    result: MutationResult
    findings: list[Finding] = field(default_factory=list)

    @property
    def denial(self) -> Denial | None:
        return self.result.denial

    @property
    def warnings(self) -> list[str]:
        return admission_warnings(self.findings)

    @property
    def audit_annotations(self) -> dict[str, str]:
        return audit_annotations_for(self.findings)


def admit(pod: dict[str, Any], ref: PodRef, sa: ServiceAccountInfo | None, config: MutationConfig,
          policy: Policy = DEFAULT_POLICY, namespace_info: NamespaceInfo | None = None) -> Decision:
    """The admission decision for a pod that `read_pod` accepted: the mutation (reference behaviour), then every
    rule's `on_pod` check; an enforce finding turns the mutation into a denial."""
    result = mutate_pod(pod, ref, sa, config)
    if result.denial is not None:
        rules = [rule.id for rule in RULES.values() if rule.denial_reason == result.denial.reason]
        return Decision(result, [Finding(rules[0], Mode.ENFORCE, result.denial.message)] if rules else [])
    assert sa is not None  # mutate_pod denies when the ServiceAccount is missing
    review = PodUnderReview(pod, ref.namespace, sa, config, policy, result)
    found = findings(((rule.id, hit) for rule in RULES.values() for hit in rule.on_pod(review)), policy,
                     namespace_info)
    denial = enforce_denial(found)
    if denial is not None:
        result = MutationResult(denial=denial, expiration_seconds=result.expiration_seconds)
    return Decision(result, found)


def enforce_denial(found: list[Finding]) -> Denial | None:
    """The 403 denial for the enforce-mode findings (each with its rule, message and fix), or None."""
    enforced = [f for f in found if f.mode is Mode.ENFORCE]
    if not enforced:
        return None
    return Denial("; ".join(f"{f.text()} (fix: {RULES[f.rule_id].fix})" for f in enforced),
                  reason="PolicyViolation", code=403)


def check_service_account(sa: ServiceAccountInfo, policy: Policy = DEFAULT_POLICY,
                          namespace_info: NamespaceInfo | None = None) -> list[Finding]:
    """Every rule's `on_service_account` check on a ServiceAccount object (the optional validating webhook and
    `check`)."""
    review = AccountUnderReview(sa, policy)
    return findings(((rule.id, hit) for rule in RULES.values() for hit in rule.on_service_account(review)), policy,
                    namespace_info)


def check_workload(workload: WorkloadUnderCheck, policy: Policy, namespace_info: NamespaceInfo | None
                   ) -> list[Finding]:
    """Every rule's `on_workload` check on a workload manifest (`check`)."""
    return findings(((rule.id, hit) for rule in RULES.values() for hit in rule.on_workload(workload)), policy,
                    namespace_info)


def check_running_pod(pod: RunningPod, policy: Policy, namespace_info: NamespaceInfo | None) -> list[Finding]:
    """Every rule's `on_running_pod` check on a running pod (`check --cluster`)."""
    return findings(((rule.id, hit) for rule in RULES.values() for hit in rule.on_running_pod(pod)), policy,
                    namespace_info)


MAX_WARNING = 120
MAX_WARNINGS_TOTAL = 4096


def admission_warnings(found: list[Finding]) -> list[str]:
    """The warn-mode findings as the API server wants warnings: each at most 120 characters, all together at most
    4096."""
    warned = [f for f in found if f.mode is Mode.WARN]
    out: list[str] = []
    total = 0
    for index, finding in enumerate(warned):
        text = finding.text()
        if len(text) > MAX_WARNING:
            text = text[: MAX_WARNING - 1] + "…"
        if total + len(text) > MAX_WARNINGS_TOTAL - 40:
            out.append(f"…and {len(warned) - index} more wi-webhook findings")
            break
        out.append(text)
        total += len(text)
    return out


def audit_annotations_for(found: list[Finding]) -> dict[str, str]:
    """The audit-mode findings as AdmissionResponse audit annotations (`<ID>-<name>`: messages joined by "; ")."""
    audit: dict[str, str] = {}
    for finding in found:
        if finding.mode is Mode.AUDIT:
            key = f"{finding.rule_id}-{finding.rule_name}"
            audit[key] = f"{audit[key]}; {finding.message}" if key in audit else finding.message
    return audit
