"""`check`'s report formats: text (one line per finding), json, sarif (code scanning) and junit (test reports)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import orjson

from webhook.cli.check_workloads import CLUSTER, Item, Report
from webhook.policy.rules import RULES, Mode


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
