"""The ways to run `check` in CI, each run for real: the pre-commit hook (.pre-commit-hooks.yaml) with pre-commit
itself on a scratch repository, the GitHub Action (action.yml: its `run:` steps, its scripts in action/), the
workflows (.github/workflows, linted by actionlint with shellcheck), a GitLab CI job's script and plain shell.

The snippets below are what README "Use it in CI" shows; each test runs them as they are (same arguments), with
only the repository's URL and ref replaced by this work tree. actionlint and shellcheck are built by
hack/actionlint/build.sh and pre-commit's environments kept in ~/.cache/wi-webhook-test-bin (by version, and by
the content of the hook's repository), so a second run builds and installs nothing.

None of them sets AZURE_TENANT_ID: `check` does not need the webhook's tenant (every run here is without it, unless
a test sets it to show that WI003 then judges it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("WI_TEST_BIN_DIR", Path.home() / ".cache/wi-webhook-test-bin"))
UPSTREAM = "https://github.com/workload-identity-webhook/workload-identity-webhook"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"

# README "Use it in CI" -------------------------------------------------------------------------------------------
PRE_COMMIT_CONFIG = """\
repos:
  - repo: https://github.com/workload-identity-webhook/workload-identity-webhook
    rev: v0.1.0
    hooks:
      - id: wi-webhook-check
        args: [--objects, k8s/serviceaccounts.yaml, --policy, policy.yaml]
"""
WORKFLOW = """\
name: manifests
on: [push, pull_request]
permissions:
  contents: read
  security-events: write   # the SARIF upload
jobs:
  wi-webhook:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
      - uses: workload-identity-webhook/workload-identity-webhook@v0.1.0
        with:
          paths: k8s/
          objects: k8s/serviceaccounts.yaml
          policy: policy.yaml
          format: sarif
          output-file: wi-webhook.sarif
      - if: ${{ !cancelled() }}
        uses: github/codeql-action/upload-sarif@v3
        with:
          sarif_file: wi-webhook.sarif
          category: wi-webhook
"""
GITLAB_JOB = """\
wi-webhook:
  image:
    name: ghcr.io/workload-identity-webhook/workload-identity-webhook:v0.1.0
    entrypoint: [""]
  script:
    - wi-webhook check -f k8s/ --objects k8s/serviceaccounts.yaml --policy policy.yaml -o junit > report.xml
  artifacts:
    when: always
    reports:
      junit: report.xml
"""
SHELL = """\
wi-webhook check -f k8s/ --objects k8s/serviceaccounts.yaml --policy policy.yaml
"""
SNIPPETS = {"pre-commit": PRE_COMMIT_CONFIG, "GitHub Action": WORKFLOW, "GitLab CI": GITLAB_JOB, "shell": SHELL}

# A user's repository ---------------------------------------------------------------------------------------------
SERVICE_ACCOUNTS = """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: api
  namespace: team-a
  annotations:
    azure.workload.identity/client-id: 00000000-1111-2222-3333-444444444444
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: batch
  namespace: team-a
"""
POLICY = "apiVersion: wi-webhook.io/v1\nkind: Policy\nmodes: {WI001: enforce}\n"


def deployment(name: str, service_account: str) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: team-a
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}, azure.workload.identity/use: "true"}}
    spec:
      serviceAccountName: {service_account}
      containers: [{{name: app, image: nginx}}]
"""


GOOD = deployment("web", "api")
# The finding's document is the second one: its LINE is where that document starts, not 1.
BAD = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: worker-config\n  namespace: team-a\ndata:\n"
       "  mode: batch\n---\n" + deployment("worker", "batch"))
BAD_LINE = BAD.splitlines().index("apiVersion: apps/v1") + 1
GITHUB_WORKFLOW = "name: build\non: push\njobs:\n  build:\n    runs-on: ubuntu-24.04\n    steps: [{run: make}]\n"
TSCONFIG = '{\n  // not JSON, not Kubernetes\n  "compilerOptions": {}\n}\n'


def write_project(root: Path) -> Path:
    files = {"k8s/serviceaccounts.yaml": SERVICE_ACCOUNTS, "policy.yaml": POLICY, "k8s/good.yaml": GOOD,
             "k8s/bad.yaml": BAD, ".github/workflows/build.yml": GITHUB_WORKFLOW,
             "tsconfig.json": TSCONFIG}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout, input=stdin,
                          check=False)


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AZURE_TENANT_ID" and not k.startswith(("GIT_", "PRE_COMMIT"))}
    env.update({"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", **extra})
    return env


def wi_webhook(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """This .venv's wi-webhook in the project, without AZURE_TENANT_ID unless given."""
    return run([str(VENV_BIN / "wi-webhook"), *args], project, user_env(**env))


def check_json(project: Path, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    proc = wi_webhook(project, "check", *args, "-o", "json", **env)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else {}


CHECK_K8S = ("-f", "k8s/", "--objects", "k8s/serviceaccounts.yaml", "--policy", "policy.yaml")


def the_finding(project: Path) -> dict[str, Any]:
    code, report = check_json(project, *CHECK_K8S)
    assert code == 1, report
    [finding] = report["findings"]
    assert (finding["file"], finding["line"], finding["rule"], finding["mode"]) == \
           ("k8s/bad.yaml", BAD_LINE, "WI001", "enforce")
    return finding


def test_check_takes_many_files_and_exits_with_the_worst(tmp_path: Path) -> None:
    """What the hook and the action run: many files, as PATH arguments (the hook) or with `-f` each (the action);
    0 clean, 1 a finding in any file, 2 unreadable."""
    project = write_project(tmp_path)
    common = ["--objects", "k8s/serviceaccounts.yaml", "--policy", "policy.yaml"]
    assert check_json(project, "-f", "k8s/good.yaml", "-f", "k8s/good.yaml", *common)[0] == 0
    for files in (["-f", "k8s/good.yaml", "-f", "k8s/bad.yaml"], ["k8s/good.yaml", "k8s/bad.yaml"]):
        code, report = check_json(project, *common, *files)
        assert code == 1 and report["summary"]["workloads"] == 2, files
    assert check_json(project, "-f", "k8s/good.yaml", "-f", "k8s/missing.yaml", *common)[0] == 2
    assert check_json(project, *common, "k8s/good.yaml", "k8s/missing.yaml")[0] == 2


def test_check_skips_what_is_not_a_manifest_when_asked(tmp_path: Path) -> None:
    """The hook's and the action's --skip-non-manifests: a workflow and a tsconfig.json with comments, refused by a
    plain check (exit 2: a CI job's wrong path must not pass), are named on stderr and left out, and the manifests
    beside them are checked. Nothing left to check is still exit 2, unless --allow-empty (the hook)."""
    project = write_project(tmp_path)
    others = [".github/workflows/build.yml", "tsconfig.json"]
    for other, message in zip(others, ("document 1 (line 1) has no kind", "not valid YAML/JSON"), strict=True):
        plain = wi_webhook(project, "check", "--allow-empty", other)
        assert plain.returncode == 2 and f"{other}: {message}" in plain.stderr, plain.stderr
    skipped = f"wi-webhook: check: skipped what is not a Kubernetes manifest: {', '.join(others)}".replace(
        "build.yml", "build.yml:1")
    hook = wi_webhook(project, "check", "--allow-empty", "--skip-non-manifests", *CHECK_K8S[2:], *others,
                      "k8s/bad.yaml")
    assert hook.returncode == 1 and skipped in hook.stderr, hook.stderr
    assert f"k8s/bad.yaml:{BAD_LINE} Deployment/team-a/worker - WI001 enforce " in hook.stdout
    nothing = wi_webhook(project, "check", "--skip-non-manifests", *others)
    assert nothing.returncode == 2 and "nothing to check in" in nothing.stderr, nothing.stderr
    allowed = wi_webhook(project, "check", "--skip-non-manifests", "--allow-empty", *others)
    assert (allowed.returncode, allowed.stderr.strip()) == (0, skipped)


def test_check_needs_no_tenant_and_judges_one_that_is_set(tmp_path: Path) -> None:
    """Without AZURE_TENANT_ID (every snippet here), WI003 judges only the tenants the ServiceAccounts name; set
    (README: the webhook's tenant, in the shell or the job's env), it judges that too."""
    project = write_project(tmp_path)

    def rules(**env: str) -> list[tuple[str, str]]:
        code, report = check_json(project, *CHECK_K8S, **env)
        assert code == 1, report
        return sorted((f["file"], f["rule"]) for f in report["findings"])

    assert rules() == rules(AZURE_TENANT_ID=TENANT) == [("k8s/bad.yaml", "WI001")]
    assert rules(AZURE_TENANT_ID="contoso") == [("k8s/bad.yaml", "WI001"), ("k8s/bad.yaml", "WI003"),
                                                ("k8s/good.yaml", "WI003")]
    accounts = project / "k8s/serviceaccounts.yaml"
    accounts.write_text(SERVICE_ACCOUNTS.replace("    azure.workload.identity/client-id:",
                                                 "    azure.workload.identity/tenant-id: contoso\n"
                                                 "    azure.workload.identity/client-id:"))
    assert rules() == [("k8s/bad.yaml", "WI001"), ("k8s/good.yaml", "WI003"), ("k8s/serviceaccounts.yaml", "WI003")]


# actionlint, shellcheck ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lint_bin() -> Path:
    proc = run(["bash", str(ROOT / "hack/actionlint/build.sh")], ROOT, {**os.environ, "PYTHON": sys.executable},
               timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def local_action_project(root: Path) -> Path:
    """A repository holding this action.yml, for actionlint to check `uses: ./` against (it needs the .git)."""
    (root / ".github/workflows").mkdir(parents=True)
    shutil.copy(ROOT / "action.yml", root / "action.yml")
    assert run(["git", "init", "-q"], root, user_env()).returncode == 0
    return root


def actionlint(lint_bin: Path, cwd: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return run([str(lint_bin / "actionlint"), "-no-color", "-shellcheck", str(lint_bin / "shellcheck"), *files], cwd)


def test_workflows_are_actionlint_clean(lint_bin: Path) -> None:
    workflows = sorted(str(p.relative_to(ROOT)) for p in (ROOT / ".github/workflows").glob("*.yml"))
    assert workflows == [".github/workflows/ci.yml", ".github/workflows/release.yml"]
    proc = actionlint(lint_bin, ROOT, *workflows)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_actionlint_finds_what_it_is_here_for(lint_bin: Path, tmp_path: Path) -> None:
    """The linter fails on a bad expression, a shell bug in a `run:` (shellcheck) and an input the local action
    (action.yml) does not declare: a clean run above means something."""
    local_action_project(tmp_path)
    (tmp_path / ".github/workflows/bad.yml").write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ github.no_such_thing }}\n      - run: cd $DIR\n"
        "      - uses: ./\n        with: {pathz: k8s/}\n")
    proc = actionlint(lint_bin, tmp_path, ".github/workflows/bad.yml")
    assert proc.returncode == 1
    assert "no_such_thing" in proc.stdout and "SC2086" in proc.stdout and '"pathz" is not defined' in proc.stdout


def test_the_readme_workflow_is_actionlint_clean_against_action_yml(lint_bin: Path, tmp_path: Path) -> None:
    """The user's workflow (README) with this repository's action in its place (`uses: ./`), so that actionlint
    checks its `with:` against action.yml's inputs."""
    local_action_project(tmp_path)
    local = WORKFLOW.replace("workload-identity-webhook/workload-identity-webhook@v0.1.0", "./")
    assert local != WORKFLOW
    (tmp_path / ".github/workflows/manifests.yml").write_text(local)
    proc = actionlint(lint_bin, tmp_path, ".github/workflows/manifests.yml")
    assert (proc.returncode, proc.stdout) == (0, "")


# action.yml ------------------------------------------------------------------------------------------------------
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def action() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "action.yml").read_text())
    return loaded


def test_action_yml_structure() -> None:
    """actionlint does not lint action.yml itself: a composite action whose every input is declared, described
    and used, whose run steps name their shell, whose actions are pinned by major version, and whose scripts
    exist beside it."""
    spec = action()
    assert spec["runs"]["using"] == "composite" and spec["name"] and spec["description"]
    assert set(spec) <= {"name", "description", "author", "branding", "inputs", "outputs", "runs"}
    inputs = spec["inputs"]
    assert set(inputs) == {"paths", "objects", "policy", "format", "output-file", "warnings-as-errors", "version"}
    assert (inputs["paths"]["default"], inputs["format"]["default"]) == (".", "text")
    for name, declared in inputs.items():
        assert declared["description"].strip() and set(declared) <= {"description", "required", "default"}, name
        assert isinstance(declared.get("default", ""), str), name
    text = (ROOT / "action.yml").read_text()
    used = set(re.findall(r"\binputs\.([A-Za-z0-9_-]+)", " ".join(EXPRESSION.findall(text))))
    assert used == set(inputs)
    ids = {step.get("id") for step in spec["runs"]["steps"]}
    for expression in EXPRESSION.findall(text):
        step = re.match(r"steps\.([\w-]+)\.", expression)
        assert expression.startswith(("inputs.", "github.action_path", "steps.")), expression
        assert step is None or step.group(1) in ids, expression
    for step in spec["runs"]["steps"]:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]
        else:
            assert step["shell"] == "bash" and "${{" not in step["run"], step  # inputs reach scripts by env only
    for script in re.findall(r"\$ACTION_PATH/(\S+?\.py)", text):
        assert (ROOT / script).is_file(), script


def test_action_scripts_pass_shellcheck_and_python_lint(lint_bin: Path, tmp_path: Path) -> None:
    for index, step in enumerate(s for s in action()["runs"]["steps"] if "run" in s):
        script = tmp_path / f"step{index}.sh"
        names = " ".join(f'"${name}"' for name in step.get("env", {}))
        script.write_text(f"#!/bin/bash\nset -eo pipefail\n: {names} \"$RUNNER_TEMP\"\n{step['run']}")
        proc = run([str(lint_bin / "shellcheck"), "-s", "bash", str(script)], tmp_path)
        assert proc.returncode == 0, proc.stdout
    ruff = run([str(VENV_BIN / "ruff"), "check", "action"], ROOT)
    assert ruff.returncode == 0, ruff.stdout
    mypy = run([str(VENV_BIN / "mypy"), "--strict", "--cache-dir", str(tmp_path / "mypy"), "action/annotations.py",
                "action/arguments.py"], ROOT, timeout=300)
    assert mypy.returncode == 0, mypy.stdout


class ActionRun:
    """action.yml's `run:` steps run as the runner runs them (`bash --noprofile --norc -eo pipefail`, in the
    workspace, inputs and contexts substituted, stopping at the first failing step); `uses:` steps (setup-python)
    are skipped: the Python they would give is a stand-in whose `-m venv DIR` makes DIR/bin with this .venv's
    python and wi-webhook, and a pip that records what it was asked to install."""

    def __init__(self, workspace: Path, runner_temp: Path) -> None:
        self.workspace, self.runner_temp = workspace, runner_temp
        self.python = runner_temp.parent / "setup-python"
        self.python.write_text(f"""#!/bin/bash
set -eu
[[ "$1 $2" == "-m venv" ]] || exit 99
mkdir -p "$3/bin"
printf '#!/bin/sh\\necho "$*" >> %q\\n' "{runner_temp.parent}/pip.log" > "$3/bin/pip"
printf '#!/bin/sh\\nexec %q "$@"\\n' "{VENV_BIN}/python" > "$3/bin/python"
printf '#!/bin/sh\\nexec %q "$@"\\n' "{VENV_BIN}/wi-webhook" > "$3/bin/wi-webhook"
chmod +x "$3/bin/pip" "$3/bin/python" "$3/bin/wi-webhook"
""")
        self.python.chmod(0o755)

    def __call__(self, inputs: dict[str, str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        shutil.rmtree(self.runner_temp, ignore_errors=True)
        self.runner_temp.mkdir()
        spec = action()
        values = {f"inputs.{name}": str(inputs.get(name, declared.get("default", "")))
                  for name, declared in spec["inputs"].items()}
        assert set(inputs) <= set(spec["inputs"]), inputs
        values.update({"github.action_path": str(ROOT), "steps.python.outputs.python-path": str(self.python)})

        def substitute(text: str) -> str:
            return EXPRESSION.sub(lambda m: values[m.group(1)], text)

        base = {k: v for k, v in os.environ.items() if k != "AZURE_TENANT_ID"}
        base.update({"RUNNER_TEMP": str(self.runner_temp), "GITHUB_WORKSPACE": str(self.workspace), **env})
        stdout, stderr, code = "", "", 0
        for index, step in enumerate(spec["runs"]["steps"]):
            if "uses" in step:
                continue
            script = self.runner_temp.parent / f"step{index}.sh"
            script.write_text(substitute(step["run"]))
            step_env = {**base, **{k: substitute(str(v)) for k, v in step.get("env", {}).items()}}
            proc = run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], self.workspace, step_env)
            stdout, stderr, code = stdout + proc.stdout, stderr + proc.stderr, proc.returncode
            if code != 0:
                break
        return subprocess.CompletedProcess(["action.yml"], code, stdout, stderr)

    def installed(self) -> list[str]:
        log = self.runner_temp.parent / "pip.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    return write_project(tmp_path / "repo")


@pytest.fixture
def action_run(tmp_path: Path, project: Path) -> ActionRun:
    (tmp_path / "runner").mkdir()
    return ActionRun(project, tmp_path / "runner" / "temp")


def annotations(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("::")]


def test_action_as_the_readme_workflow_uses_it(action_run: ActionRun, project: Path) -> None:
    """The README workflow's `with:` (no AZURE_TENANT_ID): the step exits with check's code, the report goes to the
    SARIF file, and the finding becomes `::error file=F,line=L::RULE message`, L where its document starts."""
    job = yaml.safe_load(WORKFLOW)["jobs"]["wi-webhook"]
    [step] = [s for s in job["steps"] if s.get("uses", "").startswith("workload-identity-webhook/")]
    finding = the_finding(project)
    result = action_run(step["with"], job.get("env", {}))
    assert result.returncode == 1, result.stderr
    assert annotations(result.stdout) == [f"::error file=k8s/bad.yaml,line={BAD_LINE}::WI001 {finding['message']}"]
    sarif = json.loads((project / "wi-webhook.sarif").read_text())
    [sarif_result] = sarif["runs"][0]["results"]
    assert sarif_result["ruleId"] == "WI001"
    assert sarif_result["locations"][0]["physicalLocation"]["region"]["startLine"] == BAD_LINE
    assert action_run.installed() == [f"install --quiet --disable-pip-version-check {ROOT}"]


def test_action_defaults_and_version(action_run: ActionRun, project: Path) -> None:
    """Defaults: `paths: .` checks the manifests and skips the workflow and tsconfig.json, naming them in the log
    (check without --skip-non-manifests would exit 2 on them); text on the log; WI001 is a warning without the
    policy (exit 0, `::warning`), an error with warnings-as-errors. `version` installs that tag of this
    repository. An AZURE_TENANT_ID in the job's env reaches check, whose WI003 then judges it."""
    result = action_run({}, {})
    assert result.returncode == 0, result.stderr
    assert f"k8s/bad.yaml:{BAD_LINE} Deployment/team-a/worker - WI001 warn " in result.stdout
    assert "skipped what is not a Kubernetes manifest: .github/workflows/build.yml:1, tsconfig.json" in result.stderr
    [line] = annotations(result.stdout)
    assert line.startswith(f"::warning file=k8s/bad.yaml,line={BAD_LINE}::WI001 ")
    strict = action_run({"warnings-as-errors": "true", "version": "v9.9.9"}, {})
    assert strict.returncode == 1 and annotations(strict.stdout) == [line]
    assert action_run.installed()[-1].endswith(f" git+{UPSTREAM}@v9.9.9")
    tenant = action_run({}, {"AZURE_TENANT_ID": "contoso"})
    message = "WI003 tenant id 'contoso' from the webhook's AZURE_TENANT_ID is not a GUID"
    assert tenant.returncode == 0 and annotations(tenant.stdout)[1:] == [
        f"::warning file={file},line={start}::{message}" for file, start in (("k8s/bad.yaml", BAD_LINE),
                                                                             ("k8s/good.yaml", 1))]


def test_action_when_check_cannot_run(action_run: ActionRun, project: Path) -> None:
    """Exit 2 with check's message and no annotation: a mistyped path, a directory with no manifest (what it
    skipped is named), a bad input."""
    (project / "empty").mkdir()
    (project / "empty/notes.yaml").write_text("just: yaml\n")
    for inputs, message in (({"paths": "k8s/typo.yaml"}, "k8s/typo.yaml: no such file"),
                            ({"paths": "empty"}, "skipped what is not a Kubernetes manifest: empty/notes.yaml:1\n"
                                                 "wi-webhook: nothing to check in empty: "),
                            ({"paths": "k8s/typo*.yaml"}, "k8s/typo*.yaml: no such file"),
                            ({"warnings-as-errors": "yes"}, "warnings-as-errors: 'yes' is not true or false"),
                            ({"format": "xml"}, "invalid choice: 'xml'")):
        result = action_run(inputs, {})
        assert (result.returncode, annotations(result.stdout)) == (2, []), inputs
        assert message in result.stderr, (inputs, result.stderr)


def load_action_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"action_{name}", ROOT / "action" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_annotations_levels_and_escaping() -> None:
    """enforce → error, warn → warning, audit → notice, off → none; GitHub's escaping (@actions/core): `%`, CR, LF
    in the message, and also `:` and `,` in properties, so that no text ends the command or starts another."""
    script = load_action_script("annotations")

    def finding(**fields: Any) -> dict[str, Any]:
        return {"rule": "WI005", "mode": "warn", "file": "k8s/a.yaml", "line": 3, "message": "m", **fields}

    assert script.annotation(finding(mode="enforce")) == "::error file=k8s/a.yaml,line=3::WI005 m"
    assert script.annotation(finding()) == "::warning file=k8s/a.yaml,line=3::WI005 m"
    assert script.annotation(finding(mode="audit")) == "::notice file=k8s/a.yaml,line=3::WI005 m"
    assert script.annotation(finding(mode="off")) is None
    assert script.annotation(finding(file="a,b:c%.yaml", message="100% sure\r\n::error::x, y: z")) == \
           "::warning file=a%2Cb%3Ac%25.yaml,line=3::WI005 100%25 sure%0D%0A::error::x, y: z"
    assert script.annotation(finding(file="cluster", line=0)) == "::warning::WI005 m"
    assert script.annotation(finding(file="/w/k8s/a.yaml"), "/w") == "::warning file=k8s/a.yaml,line=3::WI005 m"
    assert script.annotation(finding(file="/elsewhere/a.yaml"), "/w").startswith("::warning file=/elsewhere/a")


def test_action_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """check's arguments for the inputs: --skip-non-manifests, `-f` per path (default `.`, globs expanded, a glob
    that matches nothing kept for check to name), --objects per path, --policy, --warnings-as-errors; a
    warnings-as-errors that is not true or false is refused (exit 2, nothing printed)."""
    script = load_action_script("arguments")
    project = write_project(tmp_path)
    monkeypatch.chdir(project)
    assert script.check_arguments({}) == ["--skip-non-manifests", "-f", "."]
    assert script.check_arguments({"PATHS": " .\n", "OBJECTS": "k8s/serviceaccounts.yaml\n k8s/*ts.yaml",
                                   "POLICY": " policy.yaml ", "WARNINGS_AS_ERRORS": "True"}) == [
        "--skip-non-manifests", "-f", ".", "--objects", "k8s/serviceaccounts.yaml", "--objects",
        "k8s/serviceaccounts.yaml", "--policy", "policy.yaml", "--warnings-as-errors"]
    globs = {"PATHS": "k8s/*.yaml tsconfig.json k8s/none*.yaml", "WARNINGS_AS_ERRORS": "false"}
    assert script.check_arguments(globs) == [
        "--skip-non-manifests", "-f", "k8s/bad.yaml", "-f", "k8s/good.yaml", "-f", "k8s/serviceaccounts.yaml",
        "-f", "tsconfig.json", "-f", "k8s/none*.yaml"]
    (project / "k8s/team-b/apps").mkdir(parents=True)
    (project / "k8s/team-b/apps/web.yaml").write_text(GOOD)
    assert script.check_arguments({"PATHS": "k8s/**/*.yaml"}) == [
        "--skip-non-manifests", "-f", "k8s/bad.yaml", "-f", "k8s/good.yaml", "-f", "k8s/serviceaccounts.yaml",
        "-f", "k8s/team-b/apps/web.yaml"]
    with pytest.raises(script.InputError, match="warnings-as-errors: 'yes' is not true or false"):
        script.check_arguments({"WARNINGS_AS_ERRORS": "yes"})
    for environ, code, stdout in (({"PATHS": "k8s/good.yaml"}, 0, "--skip-non-manifests\0-f\0k8s/good.yaml\0"),
                                  ({"WARNINGS_AS_ERRORS": "1"}, 2, "")):
        proc = run([sys.executable, str(ROOT / "action/arguments.py")], project,
                   {k: v for k, v in os.environ.items()
                    if k not in ("PATHS", "OBJECTS", "POLICY", "WARNINGS_AS_ERRORS")} | environ)
        assert (proc.returncode, proc.stdout) == (code, stdout), proc.stderr


# GitLab CI, shell ------------------------------------------------------------------------------------------------
def test_gitlab_job_script(project: Path) -> None:
    """The job's script as the runner runs it in the image (`entrypoint: [""]`: the image's ENTRYPOINT is
    wi-webhook, not a shell), with wi-webhook on PATH: exit 1 on the finding and a JUnit report that names
    file:LINE, kept with `when: always`. The image is the one release.yml pushes."""
    job = yaml.safe_load(GITLAB_JOB)["wi-webhook"]
    assert job["image"]["entrypoint"] == [""]
    assert re.search(r'^ENTRYPOINT \["wi-webhook"', (ROOT / "Dockerfile").read_text(), re.M)
    name, tag = job["image"]["name"].rsplit(":", 1)
    assert name == "ghcr.io/" + UPSTREAM.removeprefix("https://github.com/") and tag.startswith("v")
    assert "echo \"image=ghcr.io/${GITHUB_REPOSITORY,,}\"" in (ROOT / ".github/workflows/release.yml").read_text()
    assert job["artifacts"] == {"when": "always", "reports": {"junit": "report.xml"}}
    env = user_env(**{k: str(v) for k, v in job.get("variables", {}).items()})
    for line in job["script"]:
        proc = run(["sh", "-ec", line], project, env)
    assert proc.returncode == 1, proc.stderr
    suite = ET.parse(project / "report.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    [failure] = [case for case in suite if case.find("failure") is not None]
    assert failure.get("name", "").startswith(f"k8s/bad.yaml:{BAD_LINE} ")
    assert failure.findall("failure")[0].get("type") == "WI001"


def test_shell(project: Path) -> None:
    proc = run(["bash", "-c", SHELL], project, user_env())
    assert proc.returncode == 1, proc.stderr
    assert f"k8s/bad.yaml:{BAD_LINE} Deployment/team-a/worker - WI001 enforce " in proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 workloads checked: 1 injected, 1 denied, 0 warnings, 1 finding"


# pre-commit ------------------------------------------------------------------------------------------------------
def hook_repository() -> Path:
    """A git repository of this work tree (tracked files as they are now, and untracked ones not ignored), for
    pre-commit to clone and pip-install. Kept by content under the cache, so that pre-commit's store (also there)
    finds the same repository and commit next time and installs nothing."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT).stdout
    files = sorted({f for f in listed.split("\0") if f and (ROOT / f).is_file()})
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    repos = CACHE / "pre-commit" / "repos"
    target = repos / digest.hexdigest()[:16]
    if (target / ".git").is_dir():
        return target
    repos.mkdir(parents=True, exist_ok=True)
    for old in repos.iterdir():  # earlier work trees' copies, left for a day in case another session uses them
        if old.stat().st_mtime < time.time() - 86400:
            shutil.rmtree(old, ignore_errors=True)
    building = repos / f".building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    for name in files:
        (building / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, building / name)
    env = user_env()
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "--no-verify", "-m", "work tree"]):
        assert run(cmd, building, env).returncode == 0, cmd
    try:
        building.rename(target)
    except OSError:  # another session made it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return target


@pytest.mark.timeout(1500)
def test_pre_commit_hook_on_commits(tmp_path: Path) -> None:
    """The README's .pre-commit-config.yaml, installed as a git hook (`pre-commit install`) in a scratch repository,
    run by real commits, with no AZURE_TENANT_ID in the shell: the ServiceAccounts and the policy commit; a commit of
    only a GitHub workflow and a tsconfig.json with comments passes (the hook runs, skips both, and has nothing to
    check), and one of only a ConfigMap; a good manifest passes; a bad one fails naming file:LINE; 40 Deployments
    and their ServiceAccount in 41 new files of one commit pass (one check sees them all: require_serial)."""
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    [hook] = hooks
    assert (hook["id"], hook["language"], hook["pass_filenames"], hook["require_serial"]) == \
           ("wi-webhook-check", "python", True, True)
    assert hook["types_or"] == ["yaml", "json"]
    assert hook["entry"] == "wi-webhook check --allow-empty --skip-non-manifests"
    repo = hook_repository()
    rev = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    home = CACHE / "pre-commit" / "home"
    env = user_env(PRE_COMMIT_HOME=str(home), PRE_COMMIT_COLOR="never")
    pre_commit = [sys.executable, "-m", "pre_commit"]
    project = tmp_path / "project"
    project.mkdir()
    config = PRE_COMMIT_CONFIG.replace(UPSTREAM, str(repo)).replace("rev: v0.1.0", f"rev: {rev}")
    assert config.count(str(repo)) == 1 and rev in config
    (project / ".pre-commit-config.yaml").write_text(config)

    def git(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(["git", *args], project, env, timeout=timeout)

    def commit(*files: str, text: dict[str, str]) -> subprocess.CompletedProcess[str]:
        for name in files:
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            (project / name).write_text(text[name])
        assert git("add", *files).returncode == 0
        return git("commit", "-q", "-m", " ".join(files)[:60], timeout=900)

    assert git("init", "-q", "-b", "main").returncode == 0
    home.mkdir(parents=True, exist_ok=True)
    run([*pre_commit, "gc"], project, env, timeout=120)  # forget the environments of deleted scratch repositories
    installed = run([*pre_commit, "install"], project, env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    started = time.monotonic()
    first = commit(".pre-commit-config.yaml", "k8s/serviceaccounts.yaml", "policy.yaml",
                   text={".pre-commit-config.yaml": config, "k8s/serviceaccounts.yaml": SERVICE_ACCOUNTS,
                         "policy.yaml": POLICY})
    assert first.returncode == 0, first.stdout + first.stderr
    print(f"first commit (the hook's environment, when not cached): {time.monotonic() - started:.0f} s")

    workflow = commit(".github/workflows/build.yml", "tsconfig.json",
                      text={".github/workflows/build.yml": GITHUB_WORKFLOW, "tsconfig.json": TSCONFIG})
    assert workflow.returncode == 0, workflow.stdout + workflow.stderr
    assert re.search(r"wi-webhook check\.+Passed", workflow.stdout + workflow.stderr)

    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: team-a}\n"
    nothing = commit("k8s/settings.yaml", text={"k8s/settings.yaml": config_map})  # nothing to check: --allow-empty
    assert nothing.returncode == 0, nothing.stdout + nothing.stderr

    good = commit("k8s/good.yaml", text={"k8s/good.yaml": GOOD})
    assert good.returncode == 0, good.stdout + good.stderr

    bad = commit("k8s/bad.yaml", text={"k8s/bad.yaml": BAD})
    output = bad.stdout + bad.stderr
    assert bad.returncode == 1 and re.search(r"wi-webhook check\.+Failed", output), output
    assert f"k8s/bad.yaml:{BAD_LINE} Deployment/team-a/worker - WI001 enforce " in output
    assert git("log", "--format=%s").stdout.splitlines()[0] == "k8s/good.yaml"
    assert git("rm", "-q", "--cached", "k8s/bad.yaml").returncode == 0

    many = {f"k8s/many/app-{i:02}.yaml": deployment(f"app-{i:02}", "svc") for i in range(40)}
    many["k8s/many/serviceaccount.yaml"] = SERVICE_ACCOUNTS.split("---\n")[0].replace("name: api", "name: svc")
    result = commit(*many, text=many)
    assert result.returncode == 0, result.stdout + result.stderr


# The workflows ---------------------------------------------------------------------------------------------------
def workflow(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / ".github/workflows" / name).read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as true
    return loaded


def steps_using(job: dict[str, Any]) -> list[str]:
    return [step["uses"] for step in job["steps"] if "uses" in step]


def test_ci_workflow_runs_the_readme_test_command() -> None:
    ci = workflow("ci.yml")
    assert ci["on"] == {"pull_request": None, "push": {"branches": ["main"]}}
    test = ci["jobs"]["test"]
    assert test["timeout-minutes"] == 60 and steps_using(test)[0] == "actions/checkout@v4"
    [command] = [step["run"] for step in test["steps"] if "run" in step]
    assert re.search(r"^make test\b", (ROOT / "README.md").read_text(), re.M)
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)
    assert shlex.split(command)[-2:] == ["make", "test"] and shlex.split(command)[0] == "sudo"


def test_ci_workflow_runs_the_action_on_the_examples(tmp_path: Path) -> None:
    """ci.yml's `action` job: this commit's action (`uses: ./`) on examples/, with no AZURE_TENANT_ID, as the
    action's steps run (ActionRun): the examples are clean (exit 0, no annotation, an empty SARIF report)."""
    job = workflow("ci.yml")["jobs"]["action"]
    assert steps_using(job) == ["actions/checkout@v4", "./"]
    [step] = [s for s in job["steps"] if s.get("uses") == "./"]
    assert "AZURE_TENANT_ID" not in json.dumps(job)
    workspace = tmp_path / "checkout"
    shutil.copytree(ROOT / "examples", workspace / "examples")
    (tmp_path / "runner").mkdir()
    result = ActionRun(workspace, tmp_path / "runner" / "temp")(step["with"], step.get("env", {}))
    assert (result.returncode, annotations(result.stdout)) == (0, []), result.stderr
    sarif = json.loads((workspace / step["with"]["output-file"]).read_text())
    assert sarif["runs"][0]["tool"]["driver"]["name"] == "wi-webhook" and sarif["runs"][0]["results"] == []


def test_release_workflow() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    [job] = release["jobs"].values()
    assert job["permissions"]["id-token"] == "write" and job["permissions"]["packages"] == "write"
    uses = steps_using(job)
    for action_name in ("actions/checkout", "docker/setup-qemu-action", "docker/setup-buildx-action",
                        "docker/build-push-action", "azure/setup-helm", "sigstore/cosign-installer",
                        "anchore/sbom-action", "softprops/action-gh-release"):
        assert any(u.startswith(action_name + "@") for u in uses), action_name
    for workflow_name in ("ci.yml", "release.yml"):
        for job_spec in workflow(workflow_name)["jobs"].values():
            for u in steps_using(job_spec):
                assert u == "./" or re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", u), u  # pinned by major version
    build = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64" and build["with"]["push"] is True
    text = (ROOT / ".github/workflows/release.yml").read_text()
    assert 'helm package charts/workload-identity-webhook --version "$VERSION" --app-version "$GITHUB_REF_NAME"' in text
    assert 'helm push "dist/workload-identity-webhook-${VERSION}.tgz" "oci://${CHARTS}"' in text
    assert 'echo "charts=ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/charts"' in text
    # The released chart pulls an image the release pushed: its default repository, with the appVersion (the tag).
    values = yaml.safe_load((ROOT / "charts/workload-identity-webhook/values.yaml").read_text())
    owner = UPSTREAM.split("/")[-2]
    pushed = re.search(r'echo "chart-image=ghcr\.io/\$\{GITHUB_REPOSITORY_OWNER,,\}/([\w-]+)"', text)
    assert pushed is not None and values["image"]["repository"] == f"ghcr.io/{owner}/{pushed.group(1)}"
    assert "${{ steps.names.outputs.chart-image }}:${{ github.ref_name }}" in build["with"]["tags"]


# README ----------------------------------------------------------------------------------------------------------
def test_readme_shows_what_these_tests_run() -> None:
    """README "Use it in CI" shows each snippet above as it is."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it in CI", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", section, re.M | re.S)
    for name, snippet in SNIPPETS.items():
        assert snippet in blocks, f"README 'Use it in CI' lacks the {name} snippet as tested"
