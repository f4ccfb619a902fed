"""`wi-webhook check`: the server's own mutation and policy code run offline over manifests, for CI.

Workloads (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob) are turned
into the pod the API server would admit from their template (named by `generateName`, as controllers do) and
passed to `policy.admit` exactly as `serve` does. ServiceAccounts in the input are checked too (WI002/WI003/WI007,
what the optional ServiceAccount validator enforces). One extra rule only `check` can see: WI011, the opt-in
label on the workload object but not on its pod template (the webhook never sees it there; reference #691/#1185).
Like every rule, its mode comes from the policy file and namespace labels.

Exit codes (gator-style): 0 no enforce finding, 1 an enforce finding or a denial (or a warning with
--warnings-as-errors), 2 usage or input error, including input that holds nothing to check (webhook/cli/check.py).

Locations are printed as `file:LINE`, the line where the object's YAML document starts (what editors and CI
annotations understand), never the 0-based document index.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import jsonpatch
import orjson

from webhook.cli.config import MutationConfig
from webhook.core.constants import STATUS_ANNOTATION, USE_LABEL
from webhook.core.mutation import ServiceAccountInfo, annotations_hash
from webhook.policy.evaluate import (
    RULES,
    Mode,
    NamespaceInfo,
    Policy,
    admit,
    check_service_account,
    namespace_overrides,
)
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
    def rule_name(self) -> str:
        return RULES[self.rule].name if self.rule in RULES else "denied"

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


def _label_on(obj: Any) -> bool:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
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

        def item(rule: str, mode: str, message: str, container: str = "", where: Manifest = manifest,
                 ns: str = namespace, kind: str = kind, name: str = _name(obj)) -> Item:
            return Item(rule, mode, where.source, where.index, where.line, kind, ns, name, container, message)

        if kind == "ServiceAccount" or kind in WORKLOAD_KINDS:
            report.checked.append((manifest.source, manifest.line, kind, namespace, _name(obj)))
        if kind == "ServiceAccount":
            sa = service_account_info(obj, namespace)
            for finding in check_service_account(sa, config, policy, find_namespace(namespace)):
                report.findings.append(item(finding.rule, finding.mode.value, finding.message))
            continue
        if kind not in WORKLOAD_KINDS:
            continue
        report.workloads += 1
        pod = pod_from_workload(manifest, namespace)
        if not _label_on(pod):
            template = pod  # the label on the workload object (or a Job's) is never seen by the webhook
            label_mode = _mode(policy, "WI011", find_namespace(namespace))
            if kind != "Pod" and _label_on(obj) and label_mode is not Mode.OFF:
                report.findings.append(item("WI011", label_mode.value, f"{kind} {_name(obj)} has the {USE_LABEL} "
                                            "label but its pod template does not: pods will not get a workload "
                                            f"identity ({RULES['WI011'].fix})"))
            if show_mutated:
                report.mutated.append(template)
            continue
        spec = pod.get("spec") or {}
        sa_name = str(spec.get("serviceAccountName") or "default") if isinstance(spec, dict) else "default"
        decision = admit(pod, namespace, find_sa(namespace, sa_name), config, policy, find_namespace(namespace))
        for finding in decision.findings:
            message = finding.message
            if finding.rule == "WI009":
                message = (f"ServiceAccount {namespace}/{sa_name} not found (looked in {searched}); fix: "
                           f"{RULES['WI009'].fix}")
            report.findings.append(item(finding.rule, finding.mode.value, message, finding.container))
        if decision.denial is not None:
            report.denied += 1
            if not decision.findings:  # a denial without a rule (e.g. bad proxy port): still report it
                report.findings.append(item("WI000", Mode.ENFORCE.value, decision.denial.message))
            continue
        report.injected += 1
        if show_mutated:
            report.mutated.append(_apply_to_workload(obj, pod, decision.result.patch))
    return report


def _mode(policy: Policy, rule: str, namespace: NamespaceInfo | None) -> Mode:
    overrides = namespace_overrides(namespace) if policy.namespace_overrides else {}
    return policy.mode_for(rule, overrides)


def check_running_pods(pods: list[dict[str, Any]],
                       find_sa: Callable[[str, str], ServiceAccountInfo | None], policy: Policy | None = None,
                       find_namespace: Callable[[str], NamespaceInfo | None] = lambda _: None) -> Report:
    """`check --cluster`: running pods that opted in but were not injected (WI013), or whose ServiceAccount's
    identity annotations changed since injection (WI012, from the `wi-webhook/status` hash)."""
    policy = policy or Policy()
    report = Report()
    for pod in pods:
        metadata = pod.get("metadata") or {}
        labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
        if labels.get(USE_LABEL) != "true":
            continue
        namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
        sa_name = str((pod.get("spec") or {}).get("serviceAccountName") or "default")
        report.workloads += 1
        report.checked.append((CLUSTER, 1, "Pod", namespace, name))
        namespace_info = find_namespace(namespace)

        def add(rule: str, message: str, ns: str = namespace, pod_name: str = name,
                ns_info: NamespaceInfo | None = namespace_info) -> None:
            mode = _mode(policy, rule, ns_info)
            if mode is not Mode.OFF:
                report.findings.append(Item(rule, mode.value, CLUSTER, 0, 1, "Pod", ns, pod_name, "",
                                            f"{message} ({RULES[rule].fix})"))

        raw = annotations.get(STATUS_ANNOTATION)
        if raw is None:
            add("WI013", f"pod {namespace}/{name} has the {USE_LABEL} label but no workload identity was injected")
            continue
        report.injected += 1
        try:
            recorded = orjson.loads(raw).get("annotationsHash")
        except (orjson.JSONDecodeError, AttributeError):
            recorded = None
        sa = find_sa(namespace, sa_name)
        if sa is None:
            add("WI012", f"ServiceAccount {namespace}/{sa_name} of pod {name} no longer exists")
        elif recorded != annotations_hash(sa):
            add("WI012", f"ServiceAccount {namespace}/{sa_name} changed its identity annotations after pod {name} "
                         "was injected")
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


# -- output formats ------------------------------------------------------------------------------------------
def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def render_text(report: Report) -> str:
    lines = [f"{f.location} {f.kind}/{f.namespace}/{f.name} {f.container or '-'} {f.rule} {f.mode} "
             f"{f.message}" for f in report.findings]
    s = report.summary()
    lines.append(f"{plural(s['workloads'], 'workload')} checked: {s['injected']} injected, {s['denied']} denied, "
                 f"{plural(s['warnings'], 'warning')}, {plural(len(report.findings), 'finding')}")
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    findings = [asdict(f) for f in report.findings]
    body: dict[str, Any] = {"findings": findings, "summary": report.summary()}
    if report.mutated:
        body["mutated"] = report.mutated
    return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n"


_SARIF_LEVEL = {"enforce": "error", "warn": "warning", "audit": "note"}


def _rule_catalogue() -> Iterable[tuple[str, str, str, str, str]]:
    for rule in RULES.values():
        yield rule.id, rule.name, rule.fix, rule.default.value, rule.scope
    yield "WI000", "denied", "fix the input named in the message", Mode.ENFORCE.value, "webhook"


def render_sarif(report: Report, version: str) -> str:
    rules = [{"id": rid, "name": name, "shortDescription": {"text": name.replace("-", " ")},
              "help": {"text": fix}, "defaultConfiguration": {"level": _SARIF_LEVEL.get(mode, "warning")},
              "properties": {"scope": scope}}
             for rid, name, fix, mode, scope in _rule_catalogue()]
    results = [{
        "ruleId": f.rule,
        "level": _SARIF_LEVEL.get(f.mode, "none"),
        "message": {"text": f.message},
        "locations": [{
            "physicalLocation": {"artifactLocation": {"uri": f.file}, "region": {"startLine": max(f.line, 1)}},
            "logicalLocations": [{"fullyQualifiedName": f"{f.kind}/{f.namespace}/{f.name}", "kind": "resource"}],
        }],
        "properties": {"mode": f.mode, "container": f.container, "document": f.document},
    } for f in report.findings]
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "wi-webhook", "version": version or "0.0.0",
                                      "informationUri": "https://azure.github.io/azure-workload-identity/",
                                      "rules": rules}},
                  "results": results}],
    }
    return orjson.dumps(sarif, option=orjson.OPT_INDENT_2).decode() + "\n"


def render_junit(report: Report, warnings_as_errors: bool = False) -> str:
    by_object: dict[tuple[str, int, str, str, str], list[Item]] = {key: [] for key in report.checked}
    for f in report.findings:
        by_object.setdefault((f.file, f.line, f.kind, f.namespace, f.name), []).append(f)
    failing_modes = {"enforce", "warn"} if warnings_as_errors else {"enforce"}
    suite = ET.Element("testsuite", name="wi-webhook check", tests=str(len(by_object)))
    failures = 0
    for (file, line, kind, namespace, name), items in by_object.items():
        where = file if file == CLUSTER else f"{file}:{line}"
        case = ET.SubElement(suite, "testcase", classname=f"{kind}.{namespace}", name=f"{where} {name}")
        failing = [f for f in items if f.mode in failing_modes]
        if failing:
            failures += 1
            failure = ET.SubElement(case, "failure", message="; ".join(f"{f.rule} {f.message}" for f in failing),
                                    type=failing[0].rule)
            failure.text = "\n".join(f"{f.rule} {f.mode} {f.container or '-'} {f.message}" for f in failing)
        others = [f for f in items if f.mode not in failing_modes]
        if others:
            ET.SubElement(case, "system-out").text = "\n".join(f"{f.rule} {f.mode} {f.message}" for f in others)
    suite.set("failures", str(failures))
    root = ET.Element("testsuites", name="wi-webhook", tests=str(len(by_object)), failures=str(failures))
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
