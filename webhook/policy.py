"""Policy checks: pure functions of (pod, ServiceAccount, config, policy, namespace) -> findings, and the
admission decision that combines them with the mutation.

Modes follow Pod Security Admission / Gatekeeper: `enforce` denies (the message names the rule, the object and
the fix), `warn` allows with an AdmissionResponse warning, `audit` allows with an audit annotation, a metric and a
log line, `off` does nothing. Defaults keep drop-in compatibility: what the reference allows is at most `warn`;
what it denies (WI007 outside 3600-86400, WI009) stays denied whatever the policy says.

Namespace overrides: labels (or annotations) `wi-webhook/enforce`, `wi-webhook/warn`, `wi-webhook/audit`,
`wi-webhook/off` list rule IDs. Label values cannot contain commas, so IDs are separated by `.`, `_` or `,`
(e.g. `wi-webhook/enforce: WI001.WI002`; `all` means every rule).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from webhook.config import MutationConfig
from webhook.constants import (
    CLIENT_ID_ANNOTATION,
    ENV_AUTHORITY_HOST,
    ENV_CLIENT_ID,
    ENV_FEDERATED_TOKEN_FILE,
    ENV_TENANT_ID,
    MAX_TOKEN_EXPIRATION,
    MIN_TOKEN_EXPIRATION,
    MOUNT_PATH,
    PROXY_CONTAINER_NAME,
    PROXY_INIT_CONTAINER_NAME,
    SKIP_CONTAINERS_ANNOTATION,
    TENANT_ID_ANNOTATION,
    TOKEN_EXPIRATION_ANNOTATION,
)
from webhook.memo import IdentityMemo
from webhook.mutation import (
    NO_SKIP,
    Denial,
    MutationResult,
    PodRef,
    ServiceAccountInfo,
    go_parse_int,
    mutate_pod,
    skip_containers,
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
)}
RULES_BY_NAME = {r.name: r for r in RULES.values()}
ALWAYS_ENFORCED = {"WI009"}  # reference denials are never weakened (WI007's reference range is in the mutation)
# The policy file's access rules: a namespace label may make them stricter but never weaker, or anyone who can
# label a namespace could claim another team's identity.
NO_WEAKENING = {"WI004", "WI008"}
_STRICTNESS = {Mode.OFF: 0, Mode.AUDIT: 1, Mode.WARN: 2, Mode.ENFORCE: 3}
OVERRIDE_PREFIX = "wi-webhook/"

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value))


def rule_id(key: str) -> str:
    """Accept a rule ID (WI001, case-insensitive) or name (missing-client-id)."""
    upper = key.strip().upper()
    if upper in RULES:
        return upper
    if key.strip().lower() in RULES_BY_NAME:
        return RULES_BY_NAME[key.strip().lower()].id
    known = ", ".join(f"{r.id} ({r.name})" for r in RULES.values())
    raise ValueError(f"unknown rule {key!r}; known rules: {known}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class IdentityGrant(_Strict):
    """One allowed identity: its client id, and the namespaces and ServiceAccounts (globs) that may use it."""

    client_id: str = Field(alias="clientId")
    namespaces: list[str] = Field(default_factory=lambda: ["*"])
    service_accounts: list[str] = Field(default_factory=lambda: ["*"], alias="serviceAccounts")

    def allows(self, client_id: str, namespace: str, service_account: str) -> bool:
        return (self.client_id.lower() == client_id.lower()
                and any(fnmatch.fnmatchcase(namespace, g) for g in self.namespaces)
                and any(fnmatch.fnmatchcase(service_account, g) for g in self.service_accounts))


class ExpirationBounds(_Strict):
    min: int = Field(default=MIN_TOKEN_EXPIRATION, ge=MIN_TOKEN_EXPIRATION, le=MAX_TOKEN_EXPIRATION)
    max: int = Field(default=MAX_TOKEN_EXPIRATION, ge=MIN_TOKEN_EXPIRATION, le=MAX_TOKEN_EXPIRATION)

    @model_validator(mode="after")
    def _ordered(self) -> ExpirationBounds:
        if self.min > self.max:
            raise ValueError(f"tokenExpiration.min ({self.min}) must not exceed tokenExpiration.max ({self.max})")
        return self


class NamespaceRules(_Strict):
    allow: list[str] | None = None
    deny: list[str] = Field(default_factory=list)

    def forbids(self, namespace: str) -> bool:
        if any(fnmatch.fnmatchcase(namespace, g) for g in self.deny):
            return True
        return self.allow is not None and not any(fnmatch.fnmatchcase(namespace, g) for g in self.allow)


class Policy(_Strict):
    """The policy file (`--policy`). Unknown keys are errors that name the key."""

    api_version: str = Field(default="wi-webhook.io/v1", alias="apiVersion")
    kind: str = "Policy"
    modes: dict[str, Mode] = Field(default_factory=dict)
    token_expiration: ExpirationBounds = Field(default_factory=ExpirationBounds, alias="tokenExpiration")
    namespaces: NamespaceRules | None = None
    identities: list[IdentityGrant] | None = None
    namespace_overrides: bool = Field(default=True, alias="namespaceOverrides")

    @field_validator("modes", mode="before")
    @classmethod
    def _rule_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {rule_id(str(k)): (v.lower() if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != "Policy":
            raise ValueError("kind must be Policy")
        return value

    def mode_for(self, rid: str, overrides: Mapping[str, Mode] | None = None) -> Mode:
        if rid in ALWAYS_ENFORCED:
            return Mode.ENFORCE
        configured = self.modes.get(rid, RULES[rid].default)
        if overrides and rid in overrides and self.namespace_overrides:
            override = overrides[rid]
            if rid in NO_WEAKENING and _STRICTNESS[override] < _STRICTNESS[configured]:
                return configured
            return override
        return configured


_DEFAULT_POLICY = Policy()


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file and each bad key."""


def parse_policy(data: Any, source: str = "policy") -> Policy:
    if data is None:
        return Policy()
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping (apiVersion, kind, modes, ...)")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid policy:"]
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            message = f"unknown key; allowed keys here: {', '.join(_allowed_keys(error['loc'][:-1]))}" \
                if error["type"] == "extra_forbidden" else error["msg"]
            lines.append(f"  {where}: {message}")
        raise PolicyError("\n".join(lines)) from None


def _allowed_keys(parent: tuple[int | str, ...]) -> list[str]:
    """The keys the policy accepts at a location (for 'unknown key' errors)."""
    model: type[BaseModel] = Policy
    for part in parent:
        if isinstance(part, int):
            continue
        for name, info in model.model_fields.items():
            if part in (name, info.alias):
                annotation = info.annotation
                candidates = [annotation, *getattr(annotation, "__args__", ())]
                for candidate in candidates:
                    inner = getattr(candidate, "__args__", (candidate,))
                    found = [c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)]
                    if found:
                        model = found[0]
                        break
    return [info.alias or name for name, info in model.model_fields.items()]


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


@dataclass(frozen=True)
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
    facts = _account_facts(sa, config, policy, namespace)
    found = list(facts.findings)
    wanted = facts.wanted
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    skip = skip_containers(annotations) if SKIP_CONTAINERS_ANNOTATION in annotations else NO_SKIP
    for container in containers:
        name = container.get("name", "")
        if name in skip:
            continue
        for entry in container.get("env") or []:
            env_name = entry.get("name")
            if env_name in wanted:
                value = entry.get("value")
                expected = wanted[env_name]
                if isinstance(value, str) and value != expected:
                    found.append(("WI005", f"container {name} sets {env_name}={value!r}; the webhook would inject "
                                           f"{expected!r} and keeps yours", name))
    if skip:
        names = {c.get("name", "") for c in containers} | _WEBHOOK_CONTAINERS
        for missing in sorted(skip - names):
            found.append(("WI006", f"{SKIP_CONTAINERS_ANNOTATION} names {missing!r}, which is not a container of "
                                   "this pod", missing))
    bounds = policy.token_expiration
    if result.expiration_seconds and not bounds.min <= result.expiration_seconds <= bounds.max:
        found.append(("WI007", f"token expiration {result.expiration_seconds}s is outside the policy's "
                               f"{bounds.min}-{bounds.max}s", ""))
    if policy.namespaces is not None and policy.namespaces.forbids(namespace):
        found.append(("WI008", f"namespace {namespace} may not use workload identity", ""))
    if containers and not result.injected_containers:
        found.append(("WI010", "every container is skipped: nothing gets the identity", ""))
    return found


@dataclass(frozen=True, slots=True)
class _AccountFacts:
    """What the checks derive from the ServiceAccount alone: its findings (WI001-WI004) and the env values the
    webhook injects (only the non-empty ones, which are the ones WI005 compares)."""

    findings: tuple[tuple[str, str, str], ...]
    wanted: Mapping[str, str]


def _compute_account_facts(sa: ServiceAccountInfo, config: MutationConfig, policy: Policy,
                           namespace: str) -> _AccountFacts:
    found: list[tuple[str, str, str]] = []
    who = f"ServiceAccount {namespace}/{sa.name}"
    client_id = sa.annotations.get(CLIENT_ID_ANNOTATION, "")
    if not client_id.strip():
        found.append(("WI001", f"{who} has no {CLIENT_ID_ANNOTATION}; AZURE_CLIENT_ID is not injected", ""))
    elif not is_guid(client_id):
        found.append(("WI002", f"{who}: client-id {client_id!r} is not a GUID", ""))
    tenant = sa.annotations.get(TENANT_ID_ANNOTATION, config.tenant_id)
    if not is_guid(tenant):
        origin = f"{who} annotation {TENANT_ID_ANNOTATION}" if TENANT_ID_ANNOTATION in sa.annotations \
            else "the webhook's AZURE_TENANT_ID"
        found.append(("WI003", f"tenant id {tenant!r} from {origin} is not a GUID", ""))
    if policy.identities is not None and client_id.strip() and not any(
            grant.allows(client_id, namespace, sa.name) for grant in policy.identities):
        found.append(("WI004", f"{who} may not use identity {client_id}", ""))
    wanted = {ENV_CLIENT_ID: client_id, ENV_TENANT_ID: tenant, ENV_AUTHORITY_HOST: config.authority_host,
              ENV_FEDERATED_TOKEN_FILE: f"{MOUNT_PATH}/token/azure-identity-token"}
    return _AccountFacts(tuple(found), {k: v for k, v in wanted.items() if v})


_facts: IdentityMemo[_AccountFacts] = IdentityMemo()


def _account_facts(sa: ServiceAccountInfo, config: MutationConfig, policy: Policy, namespace: str) -> _AccountFacts:
    """Memoised per (ServiceAccount, config, policy) object and namespace: see webhook/memo.py."""
    known = _facts.get((sa, config, policy), namespace)
    if known is not None:
        return known
    return _facts.put((sa, config, policy), namespace, _compute_account_facts(sa, config, policy, namespace))


_DENIAL_RULES = {"ServiceAccountNotFound": "WI009", "InvalidTokenExpiration": "WI007"}


@dataclass
class Decision:
    """What the webhook answers: the mutation, or a denial, plus findings turned into warnings/audit entries."""

    result: MutationResult
    findings: list[Finding] = field(default_factory=list)

    @property
    def denial(self) -> Denial | None:
        return self.result.denial

    @property
    def warnings(self) -> list[str]:
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
    policy = policy or _DEFAULT_POLICY
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
