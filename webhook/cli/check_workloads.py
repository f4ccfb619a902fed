"""`wi-webhook check`: the server's own mutation and policy code run offline over manifests, for CI.

Workloads (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob) are turned
into the pod the API server would admit from their template (named by `generateName`, as controllers do) and
passed to `admit` exactly as `serve` does. ServiceAccounts in the input get the rules the optional ServiceAccount
validator runs (`on_service_account`), and workloads the rules only `check` can see (`on_workload`: the opt-in label
on the workload object but not on its pod template, reference #691/#1185). Like every rule, their modes come from
the policy file and namespace labels. The report formats are in cli/check_output.py.

Exit codes (gator-style): 0 no enforce finding, 1 an enforce finding or a denial (or a warning with
--warnings-as-errors), 2 usage or input error, including input that holds nothing to check (webhook/cli/check.py).

Locations are printed as `file:LINE`, the line where the object's YAML document starts (what editors and CI
annotations understand), never the 0-based document index.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from webhook.core.constants import USE_LABEL
from webhook.core.injected import injected_env
from webhook.core.model import Denial, MutationConfig, NamespaceInfo, ServiceAccountInfo
from webhook.core.shape import read_pod
from webhook.policy.evaluate import admit, check_running_pod, check_service_account, check_workload
from webhook.policy.rules import RULES, Finding, Mode, RunningPod, WorkloadUnderCheck
from webhook.policy.schema import DEFAULT_POLICY, Policy
from webhook.sources.manifests import Manifest, service_account_info

TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
WORKLOAD_KINDS = ("Pod", *TEMPLATE_PATHS)
CLUSTER = "cluster"  # the `file` of findings on running pods (`check --cluster`)


class CheckInputError(ValueError):
    """A document cannot be checked; names the file and document."""


@dataclass(frozen=True)
class Item:
    rule: str
    mode: str
    file: str
    document: int
    line: int
    kind: str
    namespace: str
    name: str
    container: str
    message: str

    @property
    def location(self) -> str:
        """`file:LINE` (1-based, where the document starts), or `cluster` for a running pod."""
        return self.file if self.file == CLUSTER else f"{self.file}:{max(self.line, 1)}"


@dataclass
class Report:
    findings: list[Item] = field(default_factory=list)
    workloads: int = 0  # workloads checked (ServiceAccounts are checked too but not counted here)
    injected: int = 0
    denied: int = 0
    mutated: list[dict[str, Any]] = field(default_factory=list)
    checked: list[tuple[str, int, str, str, str]] = field(default_factory=list)  # file, line, kind, ns, name

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.mode == Mode.WARN.value)

    def exit_code(self, warnings_as_errors: bool = False) -> int:
        if self.denied or any(f.mode == Mode.ENFORCE.value for f in self.findings):
            return 1
        return 1 if warnings_as_errors and self.warnings else 0

    def summary(self) -> dict[str, int]:
        return {"workloads": self.workloads, "injected": self.injected, "denied": self.denied,
                "warnings": self.warnings}


def require_object_metadata(manifests: Iterable[Manifest]) -> None:
    """ServiceAccounts and Namespaces are read into look-up tables before anything is checked: one whose metadata
    is not a mapping is an input error naming the file and line, not a crash."""
    for manifest in manifests:
        kind = manifest.obj.get("kind")
        if kind in ("ServiceAccount", "Namespace") and not isinstance(manifest.obj.get("metadata") or {}, dict):
            raise CheckInputError(f"{manifest.source}: document {manifest.index + 1} (line {manifest.line}, {kind}): "
                                  "metadata must be a mapping")


def _name(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return ""
    return str(metadata.get("name") or metadata.get("generateName") or "")


def pod_from_workload(manifest: Manifest, namespace: str) -> dict[str, Any]:
    """The pod the API server would see for this workload (a copy; the input is not modified)."""
    obj = manifest.obj
    kind = obj.get("kind")
    where = f"{manifest.source}: document {manifest.index + 1} (line {manifest.line}, {kind} {_name(obj)})"
    if kind == "Pod":
        pod = copy.deepcopy(obj)
        pod.setdefault("metadata", {})
        if not isinstance(pod["metadata"], dict):
            raise CheckInputError(f"{where}: metadata must be a mapping")
        pod["metadata"]["namespace"] = namespace
        return pod
    template: Any = obj
    for key in TEMPLATE_PATHS[str(kind)]:
        template = template.get(key) if isinstance(template, dict) else None
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        path = ".".join(TEMPLATE_PATHS[str(kind)])
        raise CheckInputError(f"{where}: {path}.spec is missing or not a mapping")
    metadata = copy.deepcopy(template.get("metadata") or {})
    if not isinstance(metadata, dict):
        raise CheckInputError(f"{where}: {'.'.join(TEMPLATE_PATHS[str(kind)])}.metadata must be a mapping")
    metadata.pop("name", None)
    metadata["generateName"] = f"{_name(obj)}-"
    metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": copy.deepcopy(template["spec"])}


def _labelled(obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels")
    return isinstance(labels, dict) and labels.get(USE_LABEL) == "true"


def run_check(manifests: list[Manifest], config: MutationConfig, policy: Policy,
              find_sa: Callable[[str, str], ServiceAccountInfo | None],
              find_namespace: Callable[[str], NamespaceInfo | None], default_namespace: str = "default",
              show_mutated: bool = False, searched: str = "the input") -> Report:
    """Check every object; `searched` says where `find_sa` looks (for WI009: "the input, --objects x, ...")."""
    report = Report()
    for manifest in manifests:
        obj = manifest.obj
        kind = obj.get("kind")
        if not isinstance(kind, str) or not kind:
            raise CheckInputError(f"{manifest.source}: document {manifest.index + 1} (line {manifest.line}) has no "
                                  "kind; every Kubernetes object needs apiVersion and kind")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise CheckInputError(f"{manifest.source}: document {manifest.index + 1} (line {manifest.line}, {kind}): "
                                  "metadata must be a mapping")
        namespace = str(metadata.get("namespace") or default_namespace)
        if kind != "ServiceAccount" and kind not in WORKLOAD_KINDS:
            continue
        report.checked.append((manifest.source, manifest.line, kind, namespace, _name(obj)))

        def add(finding: Finding, message: str = "", where: Manifest = manifest, ns: str = namespace,
                kind: str = kind, name: str = _name(obj)) -> None:
            report.findings.append(Item(finding.rule_id, finding.mode.value, where.source, where.index, where.line,
                                        kind, ns, name, finding.container, message or finding.message))

        namespace_info = find_namespace(namespace)
        if kind == "ServiceAccount":
            for finding in check_service_account(service_account_info(obj, namespace), policy, namespace_info):
                add(finding)
            continue
        report.workloads += 1
        pod = pod_from_workload(manifest, namespace)
        for finding in check_workload(WorkloadUnderCheck(obj, kind, _name(obj), pod), policy, namespace_info):
            add(finding)
        if not _labelled(pod):  # the webhook's objectSelector never sends it
            if show_mutated:
                report.mutated.append(pod)
            continue
        ref = read_pod(pod, namespace)
        if isinstance(ref, Denial):
            report.denied += 1
            add(Finding("WI000", Mode.ENFORCE, ref.message))
            continue
        decision = admit(pod, ref, find_sa(namespace, ref.service_account), config, policy, namespace_info)
        for finding in decision.findings:
            if finding.rule_id == "WI009":
                add(finding, f"ServiceAccount {namespace}/{ref.service_account} not found (looked in {searched}); "
                             f"fix: {RULES['WI009'].fix}")
            else:
                add(finding)
        if decision.result.denial is not None:
            report.denied += 1
            if not decision.findings:  # a denial without a rule (e.g. bad proxy port): still report it
                add(Finding("WI000", Mode.ENFORCE, decision.result.denial.message))
            continue
        report.injected += 1
        if show_mutated:
            report.mutated.append(_apply_to_workload(obj, pod, decision.result.patch))
    return report


def check_running_pods(pods: list[dict[str, Any]],
                       find_sa: Callable[[str, str], ServiceAccountInfo | None], policy: Policy = DEFAULT_POLICY,
                       find_namespace: Callable[[str], NamespaceInfo | None] = lambda _: None) -> Report:
    """`check --cluster`: the rules that look at running pods (not injected, stale identity) on every pod that
    opted in."""
    report = Report()
    for pod in pods:
        if not _labelled(pod):
            continue
        metadata = pod.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
        sa_name = str((pod.get("spec") or {}).get("serviceAccountName") or "default")
        report.workloads += 1
        report.checked.append((CLUSTER, 1, "Pod", namespace, name))
        if injected_env(pod) is not None:
            report.injected += 1
        running = RunningPod(pod, namespace, name, sa_name, find_sa(namespace, sa_name))
        for finding in check_running_pod(running, policy, find_namespace(namespace)):
            report.findings.append(Item(finding.rule_id, finding.mode.value, CLUSTER, 0, 1, "Pod", namespace, name,
                                        "", finding.message))
    return report


def _apply_to_workload(obj: dict[str, Any], pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    mutated_pod = jsonpatch.apply_patch(pod, patch)
    kind = obj.get("kind")
    if kind == "Pod":
        return dict(mutated_pod)
    out = copy.deepcopy(obj)
    template = out
    for key in TEMPLATE_PATHS[str(kind)]:
        template = template[key]
    template["spec"] = mutated_pod["spec"]
    metadata = {k: v for k, v in mutated_pod["metadata"].items() if k not in ("generateName", "namespace")}
    template["metadata"] = metadata
    return out
