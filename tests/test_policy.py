"""Policy rules WI001-WI013, modes, namespace overrides, the policy file, and the combined admission decision."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import CLIENT, annotated_sa, config, decide, pod, sa
from webhook.core.model import NamespaceInfo
from webhook.policy.evaluate import admission_warnings, check_service_account, namespace_overrides
from webhook.policy.rules import RULES, Mode, Rule, rule_id
from webhook.policy.schema import Policy, PolicyError, parse_policy

WI = "azure.workload.identity"


def rules_of(decision: Any) -> dict[str, Mode]:
    return {f.rule_id: f.mode for f in decision.findings}


def test_clean_pod_has_no_findings() -> None:
    decision = decide(pod(), "ns", annotated_sa(), config())
    assert decision.findings == [] and decision.denial is None and decision.result.patch


def test_wi001_missing_client_id_warns_by_default() -> None:
    decision = decide(pod(), "ns", sa(), config())
    assert rules_of(decision) == {"WI001": Mode.WARN}
    assert decision.denial is None and decision.result.patch  # still mutated, like the reference
    assert decision.warnings == [f"WI001 missing-client-id: ServiceAccount ns/sa has no {WI}/client-id; "
                                 "AZURE_CLIENT_ID is not injected"]


def test_wi002_invalid_client_id() -> None:
    decision = decide(pod(), "ns", annotated_sa(client_id="my-app"), config())
    assert rules_of(decision) == {"WI002": Mode.WARN}


def test_wi003_invalid_tenant_from_annotation_or_config() -> None:
    assert rules_of(decide(pod(), "ns", annotated_sa(**{f"{WI}/tenant-id": "contoso"}), config())) == \
        {"WI003": Mode.WARN}
    assert rules_of(decide(pod(), "ns", annotated_sa(), config(tenant_id="contoso.onmicrosoft.com"))) == \
        {"WI003": Mode.WARN}


IDENTITIES = {"identities": [{"clientId": CLIENT, "namespaces": ["team-a", "team-a-*"], "serviceAccounts": ["api"]}]}


def test_wi004_identity_allow_list_enforced() -> None:
    policy = parse_policy(IDENTITIES)
    allowed = decide(pod(sa_name="api"), "team-a-dev", annotated_sa(name="api", namespace="team-a-dev"), config(),
                    policy)
    assert allowed.findings == [] and allowed.denial is None
    denied = decide(pod(sa_name="api"), "team-b", annotated_sa(name="api", namespace="team-b"), config(), policy)
    assert denied.denial is not None and denied.denial.code == 403
    assert denied.denial.message.startswith(f"WI004 identity-not-allowed: ServiceAccount team-b/api may not use "
                                            f"identity {CLIENT}")
    assert "fix:" in denied.denial.message and denied.result.patch == []
    other_sa = decide(pod(sa_name="worker"), "team-a", annotated_sa(name="worker", namespace="team-a"), config(),
                     policy)
    assert rules_of(other_sa) == {"WI004": Mode.ENFORCE}


def test_wi005_env_conflict_only_for_different_literal_values() -> None:
    containers = [{"name": "app", "image": "x", "env": [{"name": "AZURE_CLIENT_ID", "value": "other"}]},
                  {"name": "same", "image": "x", "env": [{"name": "AZURE_CLIENT_ID", "value": CLIENT}]},
                  {"name": "ref", "image": "x", "env": [{"name": "AZURE_TENANT_ID", "valueFrom": {
                      "configMapKeyRef": {"name": "c", "key": "k"}}}]}]
    decision = decide(pod(containers=containers), "ns", annotated_sa(), config())
    assert [(f.rule_id, f.container) for f in decision.findings] == [("WI005", "app")]


@pytest.mark.parametrize("proxy", [False, True])
def test_wi005_in_pod_order_for_every_kept_entry_and_never_for_skipped_containers(proxy: bool) -> None:
    """WI005 reads the entries the mutation kept (one env pass for both): init containers first, each entry once,
    skipped containers not at all, whether or not the proxy containers shift the indices."""
    def env(*values: str) -> list[dict[str, str]]:
        return [{"name": "AZURE_CLIENT_ID", "value": value} for value in values]

    annotations = {f"{WI}/skip-containers": "skipped"}
    if proxy:
        annotations[f"{WI}/inject-proxy-sidecar"] = "true"
    containers = [{"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}, *env("one", "two")]},
                  {"name": "skipped", "image": "x", "env": env("three")}]
    init = [{"name": "init", "image": "x", "env": env("zero")}]
    decision = decide(pod(containers=containers, init=init, annotations=annotations), "ns", annotated_sa(), config())
    assert [(f.rule_id, f.container, f.message.split("=")[1].split(";")[0]) for f in decision.findings] == [
        ("WI005", "init", "'zero'"), ("WI005", "app", "'one'"), ("WI005", "app", "'two'")]
    assert decision.result.kept_env == [("init", "AZURE_CLIENT_ID", "zero"), ("app", "AZURE_CLIENT_ID", "one"),
                                        ("app", "AZURE_CLIENT_ID", "two")]


def test_wi006_unknown_skip_container() -> None:
    decision = decide(pod(annotations={f"{WI}/skip-containers": "sidecar;app2"}), "ns", annotated_sa(), config())
    assert sorted(f.container for f in decision.findings if f.rule_id == "WI006") == ["app2", "sidecar"]
    decision = decide(pod(annotations={f"{WI}/skip-containers": "azwi-proxy"}), "ns", annotated_sa(), config())
    assert decision.findings == []


def test_wi007_reference_range_always_denied_even_when_off() -> None:
    policy = parse_policy({"modes": {"WI007": "off"}})
    decision = decide(pod(annotations={f"{WI}/service-account-token-expiration": "60"}), "ns", annotated_sa(),
                     config(), policy)
    assert decision.denial is not None and "between 3600 and 86400" in decision.denial.message
    assert rules_of(decision) == {"WI007": Mode.ENFORCE}


def test_wi007_stricter_policy_bounds() -> None:
    policy = parse_policy({"tokenExpiration": {"max": 7200}})
    decision = decide(pod(annotations={f"{WI}/service-account-token-expiration": "86400"}), "ns", annotated_sa(),
                     config(), policy)
    assert decision.denial is not None and "WI007 token-expiration" in decision.denial.message
    warn = parse_policy({"tokenExpiration": {"max": 7200}, "modes": {"token-expiration": "warn"}})
    decision = decide(pod(annotations={f"{WI}/service-account-token-expiration": "86400"}), "ns", annotated_sa(),
                     config(), warn)
    assert decision.denial is None and rules_of(decision) == {"WI007": Mode.WARN}


def test_wi008_namespace_rules() -> None:
    deny = parse_policy({"namespaces": {"deny": ["kube-*"]}})
    assert decide(pod(), "kube-public", annotated_sa(namespace="kube-public"), config(), deny).denial is not None
    assert decide(pod(), "apps", annotated_sa(namespace="apps"), config(), deny).denial is None
    allow = parse_policy({"namespaces": {"allow": ["prod-*"]}})
    assert rules_of(decide(pod(), "dev", annotated_sa(namespace="dev"), config(), allow)) == {"WI008": Mode.ENFORCE}
    assert decide(pod(), "prod-1", annotated_sa(namespace="prod-1"), config(), allow).findings == []


def test_wi009_missing_service_account_always_enforced() -> None:
    with pytest.raises(PolicyError, match=r"modes\.WI009: WI009's mode is fixed at enforce"):
        parse_policy({"modes": {"WI009": "off"}})
    namespace = NamespaceInfo("ns", labels={"wi-webhook/off": "all"})
    decision = decide(pod(sa_name="ghost"), "ns", None, config(), parse_policy({"modes": {"WI009": "enforce"}}),
                     namespace)
    assert decision.denial is not None and decision.denial.message == 'serviceaccounts "ghost" not found'
    assert rules_of(decision) == {"WI009": Mode.ENFORCE}


def test_wi010_nothing_injected() -> None:
    decision = decide(pod(annotations={f"{WI}/skip-containers": "app"}), "ns", annotated_sa(), config())
    assert rules_of(decision) == {"WI010": Mode.WARN}


@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode(mode: Mode) -> None:
    decision = decide(pod(), "ns", sa(), config(), parse_policy({"modes": {"missing-client-id": mode.value}}))
    if mode is Mode.OFF:
        assert decision.findings == [] and decision.denial is None
    elif mode is Mode.ENFORCE:
        assert decision.denial is not None and decision.denial.reason == "PolicyViolation"
        assert "WI001 missing-client-id" in decision.denial.message and decision.warnings == []
    elif mode is Mode.WARN:
        assert decision.denial is None and decision.warnings and decision.audit_annotations == {}
    else:
        assert decision.denial is None and decision.warnings == []
        assert list(decision.audit_annotations) == ["WI001-missing-client-id"]


def test_namespace_label_overrides_policy_and_defaults() -> None:
    namespace = NamespaceInfo("ns", labels={"wi-webhook/enforce": "WI001.WI002", "wi-webhook/audit": "WI010"})
    assert namespace_overrides(namespace) == {"WI001": Mode.ENFORCE, "WI002": Mode.ENFORCE, "WI010": Mode.AUDIT}
    decision = decide(pod(), "ns", sa(), config(), Policy(), namespace)
    assert decision.denial is not None and "WI001" in decision.denial.message
    off = NamespaceInfo("ns", annotations={"wi-webhook/off": "all"})
    assert decide(pod(), "ns", sa(), config(), Policy(), off).findings == []
    ignored = parse_policy({"namespaceOverrides": False})
    assert decide(pod(), "ns", sa(), config(), ignored, namespace).denial is None


def test_namespace_override_cannot_weaken_reference_denials() -> None:
    namespace = NamespaceInfo("ns", labels={"wi-webhook/off": "all"})
    assert decide(pod(sa_name="ghost"), "ns", None, config(), Policy(), namespace).denial is not None


def test_warnings_are_bounded() -> None:
    from webhook.policy.rules import Finding

    findings = [Finding("WI006", Mode.WARN, "x" * 300) for _ in range(100)]
    warnings = admission_warnings(findings)
    assert all(len(w) <= 120 for w in warnings)
    assert sum(len(w) for w in warnings) <= 4096
    assert warnings[-1].startswith("…and ")


def test_policy_file_errors_name_the_key() -> None:
    with pytest.raises(PolicyError, match=r"identities\.0\.clientID: unknown key"):
        parse_policy({"identities": [{"clientID": "x"}]}, "policy.yaml")
    with pytest.raises(PolicyError, match="unknown rule 'WI999'"):
        parse_policy({"modes": {"WI999": "warn"}})
    with pytest.raises(PolicyError, match=r"modes\.WI001"):
        parse_policy({"modes": {"WI001": "block"}})
    with pytest.raises(PolicyError, match=r"tokenexpiration: unknown key; allowed keys here: apiVersion, kind, modes"):
        parse_policy({"tokenExpiration": 5, "tokenexpiration": 1})
    with pytest.raises(PolicyError, match=r"identities\.0\.clientID: unknown key; allowed keys here: clientId, "
                                          "namespaces, serviceAccounts"):
        parse_policy({"identities": [{"clientId": "x", "clientID": "x"}]})
    with pytest.raises(PolicyError, match=r"tokenExpiration\.maxx: unknown key; allowed keys here: min, max"):
        parse_policy({"tokenExpiration": {"maxx": 1}})
    with pytest.raises(PolicyError, match="must not exceed"):
        parse_policy({"tokenExpiration": {"min": 8000, "max": 4000}})
    with pytest.raises(PolicyError, match="must be a mapping"):
        parse_policy(["x"])


def _readme_rule_rows() -> list[list[str]]:
    section = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").split("\n## Policy", 1)[1]
    section = section.split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()
            if re.match(r"\| WI\d{3} ", line)]


def _what_it_checks(rule: Rule) -> str:
    places = []
    if rule.checks("on_pod") or rule.denial_reason:
        places.append("pods")
    if rule.checks("on_service_account"):
        places.append("ServiceAccounts")
    if rule.checks("on_workload"):
        places.append("workload manifests (`check`)")
    if rule.checks("on_running_pod"):
        places.append("running pods (`check --cluster`)")
    return ", ".join(places)


def test_readme_rule_table_is_the_rules() -> None:
    """The README's table lists every rule, in order, with its name, default mode and what it checks; a new rule
    fails here until its row is written."""
    rows = _readme_rule_rows()
    assert [(row[0], row[1]) for row in rows] == [(rule.id, rule.name) for rule in RULES.values()]
    for row, rule in zip(rows, RULES.values(), strict=True):
        assert row[2].split()[0] == rule.default.value, row
        assert row[3] == _what_it_checks(rule), row
        assert rule.fix, rule.id


def test_service_account_validation() -> None:
    bad = annotated_sa(client_id="oops", **{f"{WI}/tenant-id": "t", f"{WI}/service-account-token-expiration": "1h"})
    findings = check_service_account(bad)
    assert {(f.rule_id, f.mode) for f in findings} == {("WI002", Mode.WARN), ("WI003", Mode.WARN),
                                                    ("WI007", Mode.ENFORCE)}
    assert check_service_account(annotated_sa()) == []
    assert check_service_account(sa()) == []  # no client-id is not a ServiceAccount error


def test_namespace_labels_cannot_weaken_access_rules() -> None:
    policy = parse_policy({**IDENTITIES, "namespaces": {"deny": ["locked"]}})
    sneaky = NamespaceInfo("locked", labels={"wi-webhook/off": "all"})
    denied = decide(pod(sa_name="api"), "locked", annotated_sa(name="api", namespace="locked"), config(), policy,
                   sneaky)
    assert denied.denial is not None and {f.rule_id for f in denied.findings} >= {"WI004", "WI008"}
    warn = parse_policy({**IDENTITIES, "modes": {"WI004": "warn"}})
    stricter = NamespaceInfo("team-b", labels={"wi-webhook/enforce": "WI004"})
    decision = decide(pod(sa_name="api"), "team-b", annotated_sa(name="api", namespace="team-b"), config(), warn,
                     stricter)
    assert decision.denial is not None  # making a rule stricter is always allowed


def test_policy_file_reports_every_problem_in_its_own_words() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({"kind": "Polcy", "modes": {"bogus": "warn", "WI001": "loud", "WI002": "enforce"},
                      "tokenExpiration": {"min": 1}, "namespaceOverrides": "maybe", "extra": 1}, "p.yaml")
    lines = str(caught.value).splitlines()
    assert lines[0] == "p.yaml: invalid policy (6 problems):"
    assert lines[1:] == [
        "  modes.bogus: unknown rule 'bogus'; known rules: " + ", ".join(f"{r.id} ({r.name})" for r in RULES.values()),
        "  modes.WI001: 'loud' is not a mode; use one of enforce, warn, audit, off",
        "  kind: must be Policy; got 'Polcy'",
        "  tokenExpiration.min: must be at least 3600; got 1",
        "  namespaceOverrides: must be true or false; got 'maybe'",
        "  extra: unknown key; allowed keys here: apiVersion, kind, modes, tokenExpiration, namespaces, identities, "
        "namespaceOverrides",
    ]
    assert "Value error" not in str(caught.value) and "Input should" not in str(caught.value)


@pytest.mark.parametrize("rule", ["WI011", "WI012", "WI013", "label-not-on-pod-template", "not-injected"])
def test_every_documented_rule_is_configurable(rule: str) -> None:
    policy = parse_policy({"modes": {rule: "enforce"}})
    assert policy.mode_for(rule_id(rule)) is Mode.ENFORCE
    assert parse_policy({"modes": {rule: "off"}}).mode_for(rule_id(rule)) is Mode.OFF


def test_unquoted_yaml_off_means_off() -> None:
    import yaml

    assert parse_policy(yaml.safe_load("modes: {WI001: off, WI010: Off}")).mode_for("WI001") is Mode.OFF
    with pytest.raises(PolicyError, match=r"modes\.WI001: True is not a mode"):
        parse_policy(yaml.safe_load("modes: {WI001: on}"))


def test_readme_layout_names_every_module() -> None:
    """README "Layout" names each module of the package, so a newcomer finds what each file is for."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    layout = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    package = Path(__file__).parents[1] / "webhook"
    missing = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
               if path.name != "__init__.py" and f"`{path.name}`" not in layout]
    assert not missing, f"README Layout does not name {missing}"
