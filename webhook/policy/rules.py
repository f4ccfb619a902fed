"""The policy rules, each defined next to its check: its ID, name, default mode and fix, and what it looks at.

A rule is a subclass of `Rule`; defining it registers it in RULES, in order. It checks what it overrides:
- `on_pod`: a pod under admission, after the mutation (serve, mutate and check);
- `on_service_account`: a ServiceAccount object (the optional ServiceAccount validator, and check);
- `on_workload`: a workload manifest as `check` reads it (the webhook never sees the workload object);
- `on_running_pod`: a running pod (`check --cluster`).
Each yields a `Hit` (message, container) per problem; the mode (enforce, warn, audit, off) comes from the policy file
and namespace labels (policy/evaluate.py). To add a rule: a class here, a row in the README's rule table (a test
holds the two together), and tests.

WI009's mode is fixed at enforce (`fixed_mode`): a pod whose ServiceAccount does not exist is denied by the
reference, and this webhook never answers more leniently than the reference. Rules that are reference denials name
the denial's reason (`denial_reason`) so a denial is reported as that rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from webhook.core.annotations import skipped_container_names, tenant_id, token_expiration
from webhook.core.constants import (
    CLIENT_ID_ANNOTATION,
    PROXY_CONTAINER_NAME,
    PROXY_INIT_CONTAINER_NAME,
    SKIP_CONTAINERS_ANNOTATION,
    TENANT_ID_ANNOTATION,
    TOKEN_EXPIRATION_ANNOTATION,
    USE_LABEL,
)
from webhook.core.injected import env_to_inject, identity_changes, injected_env
from webhook.core.model import Denial, MutationConfig, MutationResult, ServiceAccountInfo

if TYPE_CHECKING:
    from webhook.policy.schema import Policy


class Mode(StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"
    AUDIT = "audit"
    OFF = "off"


STRICTNESS = {Mode.OFF: 0, Mode.AUDIT: 1, Mode.WARN: 2, Mode.ENFORCE: 3}
OVERRIDE_PREFIX = "wi-webhook/"  # namespace labels/annotations wi-webhook/<mode>: rule IDs


class Hit(NamedTuple):
    """One problem a rule found: the message (naming the object), and the container it concerns, if one."""

    message: str
    container: str = ""


@dataclass(frozen=True, slots=True)
class Finding:
    """A hit with the mode it is reported in."""

    rule_id: str
    mode: Mode
    message: str
    container: str = ""

    @property
    def rule_name(self) -> str:
        return RULES[self.rule_id].name

    def text(self) -> str:
        return f"{self.rule_id} {self.rule_name}: {self.message}"


@dataclass(frozen=True, slots=True)
class PodUnderReview:
    """A pod the mutation admitted, with what it was given."""

    pod: Mapping[str, Any]
    namespace: str
    sa: ServiceAccountInfo
    config: MutationConfig
    policy: Policy
    result: MutationResult

    @property
    def annotations(self) -> Mapping[str, str]:
        return (self.pod.get("metadata") or {}).get("annotations") or {}

    @property
    def containers(self) -> list[Mapping[str, Any]]:
        spec = self.pod.get("spec") or {}
        return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


@dataclass(frozen=True, slots=True)
class AccountUnderReview:
    """A ServiceAccount object, checked on its own."""

    sa: ServiceAccountInfo
    policy: Policy


@dataclass(frozen=True, slots=True)
class WorkloadUnderCheck:
    """A workload manifest (Deployment, Job, ...) and the pod its template makes."""

    obj: Mapping[str, Any]
    kind: str
    name: str
    pod: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RunningPod:
    """A running pod that opted in, and its ServiceAccount now (None when it no longer exists)."""

    pod: Mapping[str, Any]
    namespace: str
    name: str
    service_account: str
    sa: ServiceAccountInfo | None


class Rule:
    """A policy rule. Subclasses set the class attributes and override the checks that apply to them."""

    id: ClassVar[str]
    name: ClassVar[str]
    default: ClassVar[Mode]
    fix: ClassVar[str]
    fixed_mode: ClassVar[bool] = False  # the mode cannot be configured (WI009)
    no_weakening: ClassVar[bool] = False  # a namespace label may make it stricter than the policy file, not weaker
    denial_reason: ClassVar[str] = ""  # the mutation denial that is this rule

    def __init_subclass__(cls) -> None:
        if cls.id in RULES:
            raise ValueError(f"rule {cls.id} is defined twice ({type(RULES[cls.id]).__name__} and {cls.__name__})")
        RULES[cls.id] = cls()

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        return iter(())

    def on_service_account(self, review: AccountUnderReview) -> Iterator[Hit]:
        return iter(())

    def on_workload(self, workload: WorkloadUnderCheck) -> Iterator[Hit]:
        return iter(())

    def on_running_pod(self, pod: RunningPod) -> Iterator[Hit]:
        return iter(())

    def checks(self, method: str) -> bool:
        """Whether this rule overrides the check `method` (e.g. "on_service_account")."""
        return getattr(type(self), method) is not getattr(Rule, method)

    @property
    def scope(self) -> str:
        """Who sees it, for docs and SARIF: "webhook" (serve, mutate and check), "check" or "check --cluster"."""
        if self.checks("on_running_pod"):
            return "check --cluster"
        if self.checks("on_workload"):
            return "check"
        return "webhook"


RULES: dict[str, Rule] = {}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value))


def who(sa: ServiceAccountInfo) -> str:
    """How messages name a ServiceAccount."""
    return f"ServiceAccount {sa.namespace}/{sa.name}"


class MissingClientId(Rule):
    id, name, default = "WI001", "missing-client-id", Mode.WARN
    fix = f"annotate the ServiceAccount with {CLIENT_ID_ANNOTATION}: <managed identity client id>"

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        if not review.sa.annotations.get(CLIENT_ID_ANNOTATION, "").strip():
            yield Hit(f"{who(review.sa)} has no {CLIENT_ID_ANNOTATION}; AZURE_CLIENT_ID is not injected")


class InvalidClientId(Rule):
    id, name, default = "WI002", "invalid-client-id", Mode.WARN
    fix = f"set {CLIENT_ID_ANNOTATION} to the identity's client id, a GUID (az identity show --query clientId)"

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        yield from self.on_service_account(AccountUnderReview(review.sa, review.policy))

    def on_service_account(self, review: AccountUnderReview) -> Iterator[Hit]:
        client_id = review.sa.annotations.get(CLIENT_ID_ANNOTATION, "")
        if client_id.strip() and not is_guid(client_id):
            yield Hit(f"{who(review.sa)}: client-id {client_id!r} is not a GUID")


class InvalidTenantId(Rule):
    id, name, default = "WI003", "invalid-tenant-id", Mode.WARN
    fix = f"set {TENANT_ID_ANNOTATION} (or the webhook's AZURE_TENANT_ID) to a tenant GUID"

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        tenant = tenant_id(review.sa, review.config.tenant_id)
        if TENANT_ID_ANNOTATION not in review.sa.annotations and not review.config.tenant_id:
            return  # `check` without AZURE_TENANT_ID: the webhook's tenant is not known here
        if not is_guid(tenant):
            origin = (f"{who(review.sa)} annotation {TENANT_ID_ANNOTATION}"
                      if TENANT_ID_ANNOTATION in review.sa.annotations else "the webhook's AZURE_TENANT_ID")
            yield Hit(f"tenant id {tenant!r} from {origin} is not a GUID")

    def on_service_account(self, review: AccountUnderReview) -> Iterator[Hit]:
        tenant = review.sa.annotations.get(TENANT_ID_ANNOTATION)
        if tenant is not None and not is_guid(tenant):
            yield Hit(f"{who(review.sa)}: tenant-id {tenant!r} is not a GUID")


class IdentityNotAllowed(Rule):
    id, name, default = "WI004", "identity-not-allowed", Mode.ENFORCE
    fix = "use an identity the policy allows for this namespace/ServiceAccount, or extend the policy's identities"
    no_weakening = True

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        client_id = review.sa.annotations.get(CLIENT_ID_ANNOTATION, "")
        grants = review.policy.identities
        if grants is not None and client_id.strip() and not any(
                grant.allows(client_id, review.namespace, review.sa.name) for grant in grants):
            yield Hit(f"{who(review.sa)} may not use identity {client_id}")


class EnvConflict(Rule):
    id, name, default = "WI005", "env-conflict", Mode.WARN
    fix = "remove the container's own value so the webhook can inject it, or make it match"

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        if not review.result.kept_env:
            return
        wanted = env_to_inject(review.sa, review.config, custom_active=False)
        for container, env_name, value in review.result.kept_env:
            expected = wanted.get(env_name)
            if expected and isinstance(value, str) and value != expected:
                yield Hit(f"container {container} sets {env_name}={value!r}; the webhook would inject {expected!r} "
                          "and keeps yours", container)


class UnknownSkipContainer(Rule):
    id, name, default = "WI006", "unknown-skip-container", Mode.WARN
    fix = f"fix the container name in {SKIP_CONTAINERS_ANNOTATION} (';'-separated)"
    # Containers the webhook itself may add, which the annotation may name even when the pod does not have them.
    WEBHOOK_CONTAINERS = frozenset({PROXY_CONTAINER_NAME, PROXY_INIT_CONTAINER_NAME})

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        names = {c.get("name", "") for c in review.containers} | self.WEBHOOK_CONTAINERS
        # An empty entry ("sidecar;") is the reference's way to skip unnamed containers, not a misspelt name.
        for missing in sorted(skipped_container_names(review.annotations) - names - {""}):
            yield Hit(f"{SKIP_CONTAINERS_ANNOTATION} names {missing!r}, which is not a container of this pod", missing)


class TokenExpiration(Rule):
    id, name, default = "WI007", "token-expiration", Mode.ENFORCE
    fix = f"set {TOKEN_EXPIRATION_ANNOTATION} to seconds within the allowed range"
    denial_reason = "InvalidTokenExpiration"  # outside 3600-86400: the reference's denial, always enforced

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        seconds, bounds = review.result.expiration_seconds, review.policy.token_expiration
        if not bounds.min <= seconds <= bounds.max:
            yield Hit(f"token expiration {seconds}s is outside the policy's {bounds.min}-{bounds.max}s")

    def on_service_account(self, review: AccountUnderReview) -> Iterator[Hit]:
        if TOKEN_EXPIRATION_ANNOTATION not in review.sa.annotations:
            return
        seconds, bounds = token_expiration({}, review.sa.annotations), review.policy.token_expiration
        if isinstance(seconds, Denial):
            yield Hit(f"{who(review.sa)}: {seconds.message}")
        elif not bounds.min <= seconds <= bounds.max:
            yield Hit(f"{who(review.sa)}: token expiration {seconds} is outside {bounds.min}-{bounds.max}")


class NamespaceNotAllowed(Rule):
    id, name, default = "WI008", "namespace-not-allowed", Mode.ENFORCE
    fix = "run workload identity pods only in namespaces the policy allows"
    no_weakening = True

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        namespaces = review.policy.namespaces
        if namespaces is not None and namespaces.forbids(review.namespace):
            yield Hit(f"namespace {review.namespace} may not use workload identity")


class ServiceAccountNotFound(Rule):
    id, name, default = "WI009", "service-account-not-found", Mode.ENFORCE
    fix = "create the ServiceAccount (with its client-id annotation) before the pod, or fix serviceAccountName"
    fixed_mode = True
    denial_reason = "ServiceAccountNotFound"  # the mutation's denial (core/mutation.py)


class NothingInjected(Rule):
    id, name, default = "WI010", "nothing-injected", Mode.WARN
    fix = f"remove at least one container from {SKIP_CONTAINERS_ANNOTATION}, or drop the {USE_LABEL} label"

    def on_pod(self, review: PodUnderReview) -> Iterator[Hit]:
        if review.containers and not review.result.injected_containers:
            yield Hit("every container is skipped: nothing gets the identity")


def _labelled(obj: Mapping[str, Any]) -> bool:
    metadata = obj.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    return isinstance(labels, dict) and labels.get(USE_LABEL) == "true"


class LabelNotOnPodTemplate(Rule):
    id, name, default = "WI011", "label-not-on-pod-template", Mode.WARN
    fix = f"move the {USE_LABEL}: \"true\" label to the pod template's metadata.labels"

    def on_workload(self, workload: WorkloadUnderCheck) -> Iterator[Hit]:
        # The label on the workload object (or a CronJob's Job) is never seen by the webhook: only the pod's counts.
        if workload.kind != "Pod" and _labelled(workload.obj) and not _labelled(workload.pod):
            yield Hit(f"{workload.kind} {workload.name} has the {USE_LABEL} label but its pod template does not: pods "
                      f"will not get a workload identity ({self.fix})")


class StaleIdentity(Rule):
    id, name, default = "WI012", "stale-identity", Mode.WARN
    fix = "restart the workload (kubectl rollout restart) so its pods get the ServiceAccount's current identity"

    def on_running_pod(self, pod: RunningPod) -> Iterator[Hit]:
        env = injected_env(pod.pod)
        if env is None:
            return
        if pod.sa is None:
            yield Hit(f"ServiceAccount {pod.namespace}/{pod.service_account} of pod {pod.name} no longer exists "
                      f"({self.fix})")
            return
        changed = identity_changes(env, pod.sa)
        if changed:
            yield Hit(f"ServiceAccount {pod.namespace}/{pod.service_account} changed its identity after pod {pod.name} "
                      f"was injected: the pod has {', '.join(changed)} ({self.fix})")


class NotInjected(Rule):
    id, name, default = "WI013", "not-injected", Mode.WARN
    fix = ("recreate the pod: it opted in but was admitted without the webhook (created before the install or while "
           "the webhook was unavailable with failurePolicy Ignore)")

    def on_running_pod(self, pod: RunningPod) -> Iterator[Hit]:
        if injected_env(pod.pod) is None:
            yield Hit(f"pod {pod.namespace}/{pod.name} has the {USE_LABEL} label but no workload identity was "
                      f"injected ({self.fix})")


RULES_BY_NAME = {rule.name: rule for rule in RULES.values()}
SERVICE_ACCOUNT_RULES = [rule.id for rule in RULES.values() if rule.checks("on_service_account")]


def rule_id(key: str) -> str:
    """Accept a rule ID (WI001, case-insensitive) or name (missing-client-id)."""
    upper = key.strip().upper()
    if upper in RULES:
        return upper
    if key.strip().lower() in RULES_BY_NAME:
        return RULES_BY_NAME[key.strip().lower()].id
    known = ", ".join(f"{r.id} ({r.name})" for r in RULES.values())
    raise ValueError(f"unknown rule {key!r}; known rules: {known}")
