"""GitHub annotations for the action (action.yml): `wi-webhook check -o json`'s report on stdin, one workflow
command per finding on stdout.

    ::error file=k8s/app.yaml,line=12::WI009 ...     enforce findings and denials
    ::warning file=...,line=...::RULE message          warn
    ::notice file=...,line=...::RULE message           audit

LINE is where the object's YAML document starts, as in check's text output. Messages and properties are escaped as
GitHub's toolkit escapes them (@actions/core: `%`, CR and LF in both; `:` and `,` in properties too), so a message
cannot end the command early or start another. Findings on running pods (`check --cluster`) and on standard input
have no file: their annotation has none. Paths under $GITHUB_WORKSPACE are made relative to it, as GitHub wants.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

LEVELS = {"enforce": "error", "warn": "warning", "audit": "notice"}
NO_FILE = ("cluster", "<stdin>", "")


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def repository_path(file: str, workspace: str) -> str:
    if workspace and os.path.isabs(file):
        relative = os.path.relpath(file, workspace)
        if not relative.startswith(".."):
            return relative
    return file


def annotation(finding: dict[str, Any], workspace: str = "") -> str | None:
    """The workflow command for one finding of the JSON report, or None for a mode GitHub has no level for."""
    level = LEVELS.get(str(finding.get("mode")))
    if level is None:
        return None
    file = str(finding.get("file") or "")
    properties = ""
    if file not in NO_FILE:
        line = max(int(finding.get("line") or 1), 1)
        properties = f" file={escape_property(repository_path(file, workspace))},line={line}"
    message = f"{finding.get('rule')} {finding.get('message')}"
    return f"::{level}{properties}::{escape_data(message)}"


def main() -> int:
    text = sys.stdin.read()
    try:
        findings = json.loads(text)["findings"]
    except (ValueError, KeyError, TypeError):
        print(f"annotations.py: no wi-webhook check JSON report on stdin ({text[:200]!r})", file=sys.stderr)
        return 1
    workspace = os.environ.get("GITHUB_WORKSPACE", "")
    for finding in findings:
        line = annotation(finding, workspace)
        if line is not None:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
