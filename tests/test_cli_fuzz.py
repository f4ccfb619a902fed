"""Fuzzing the CLI in-process (`webhook.cli.main`): whatever the flags and whatever the files hold, a command
exits 0, 1 or 2 (argparse's own errors are SystemExit 2), and never with an unforeseen error: every failure is a
message naming its cause, so "unexpected error" (the catch-all for bugs) never appears. Bounded example counts;
kubeconfigs only ever point at a closed 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import TENANT
from webhook.cli.check_workloads import WORKLOAD_KINDS
from webhook.cli.main import main
from webhook.cli.verify import REQUIRED_ENV

WI = "azure.workload.identity"
ROOT = Path(__file__).resolve().parent.parent
POD = str(ROOT / "examples/demo/pod.yaml")
SAS = str(ROOT / "examples/demo/serviceaccounts.yaml")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31), st.text(max_size=12),
                    st.sampled_from(["true", "default", "sa", f"{WI}/use", f"{WI}/client-id", "enforce", "off",
                                     "00000000-1111-2222-3333-444444444444", "3600", "a;b"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8) | st.sampled_from(
                                                           ["metadata", "spec", "name", "labels", "annotations",
                                                            "containers", "template", "serviceAccountName",
                                                            "namespace", "items", "jobTemplate"]), inner,
                                                           max_size=4)),
                      max_leaves=20)
objects = st.fixed_dictionaries({"apiVersion": st.sampled_from(["v1", "apps/v1", "batch/v1"]),
                                 "kind": st.sampled_from([*WORKLOAD_KINDS, "ServiceAccount", "Namespace", "List",
                                                          "ConfigMap"]) | scalars},
                                optional={"metadata": values, "spec": values, "items": st.lists(values, max_size=3)})
documents = st.one_of(st.lists(objects | values, max_size=4).map(lambda docs: yaml.safe_dump_all(docs)),
                      st.text(max_size=200), st.binary(max_size=100).map(lambda b: b.decode("latin-1")))
policies = st.one_of(st.dictionaries(st.sampled_from(["modes", "tokenExpiration", "namespaces", "identities",
                                                      "namespaceOverrides", "kind", "apiVersion", "x"]), values,
                                     max_size=4).map(yaml.safe_dump), st.text(max_size=100))


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REQUIRED_ENV:  # verify must stop at "environment" (no Entra ID call)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2)
        code = exc.code if isinstance(exc.code, int) else 2
    err = capsys.readouterr().err
    return code, err


def kubeconfigs(directory: Path, port: int) -> list[str]:
    """Broken kubeconfigs, and one whose server is a closed 127.0.0.1 port."""
    bodies = {"empty": "", "list": "- 1\n", "no-context": "apiVersion: v1\nkind: Config\nclusters: []\n",
              "dangling": "apiVersion: v1\nkind: Config\ncurrent-context: x\ncontexts: [{name: x, context: "
                          "{cluster: nope, user: nope}}]\n",
              "closed": f"apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: "
                        f"'https://127.0.0.1:{port}'}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\n"
                        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"}
    paths = []
    for name, body in bodies.items():
        (directory / name).write_text(body)
        paths.append(str(directory / name))
    return paths


COMMON = ["--policy", "--log-level", "--native-sidecar", "--status-annotation", "--audience",
          "--custom-token-endpoint-annotation-suffix", "--custom-token-endpoint-audience"]
VALUE_FLAGS = {"check": ["-f", "--objects", "--kubeconfig", "-o", "-n", *COMMON],
               "mutate": ["-f", "--objects", "-o", "-n", *COMMON],
               "certs generate": ["--service", "--namespace", "--host", "--out"],
               "verify": ["--scope", "--keyvault", "--secret", "-o"], "version": [], "certs": [], "": []}
BOOL_FLAGS = {"check": ["--show-mutated", "--warnings-as-errors", "--allow-empty", "--cluster"]}
ANY_COMMAND = ["--help", "--bogus", "--debug"]
FILES = ["MANIFEST", "DIR", "MISSING", "POD", "SAS"]
VALUES_FOR = {"-f": FILES, "--objects": FILES, "--policy": ["POLICY", "MISSING", "DIR"],
              "--kubeconfig": ["KUBECONFIG", "MISSING", "DIR"], "-o": ["json", "sarif", "junit", "patch", "yaml"],
              "-n": ["default", "team-a"], "--log-level": ["", "info", "trace", "loud"],
              "--native-sidecar": ["auto", "true", "false", "maybe"], "--status-annotation": ["true", "false"],
              "--out": ["DIR", "MANIFEST", "MISSING"]}


def flag_and_value(flag: str) -> st.SearchStrategy[tuple[str, str]]:
    """A value that makes sense for the flag (a file for -f, a format for -o, ...), or any text."""
    return st.tuples(st.just(flag), st.sampled_from(VALUES_FOR.get(flag, [""])) | st.text(max_size=10))


def command_lines(command: str) -> st.SearchStrategy[tuple[list[str], list[tuple[str, str]], list[str]]]:
    """A command with a few of its own flags (with fitting values) and maybe a flag-less token."""
    return st.tuples(st.just(command.split()),
                     st.lists(st.sampled_from(VALUE_FLAGS[command] or ["--bogus"]).flatmap(flag_and_value),
                              max_size=4),
                     st.lists(st.sampled_from([*BOOL_FLAGS.get(command, []), *ANY_COMMAND]), max_size=2)
                     .filter(lambda tokens: "--debug" not in tokens))


@FUZZ
@given(line=st.sampled_from(["check", "check", "check", "mutate", "mutate", "certs generate", "verify", "version",
                             "certs", ""]).flatmap(command_lines),
       inputs=st.booleans(), manifest=documents, policy=policies, kubeconfig_index=st.integers(0, 4))
def test_any_argv_exits_0_1_or_2_without_an_unexpected_error(
        line: tuple[list[str], list[tuple[str, str]], list[str]], inputs: bool, manifest: str, policy: str,
        kubeconfig_index: int, closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    command, pairs, tokens = line
    with tempfile.TemporaryDirectory(prefix="wi-cli-fuzz-") as tmp:
        directory = Path(tmp)
        (directory / "manifest.yaml").write_text(manifest)
        (directory / "policy.yaml").write_text(policy)
        (directory / "dir").mkdir()
        kubeconfig = kubeconfigs(directory, closed_port)[kubeconfig_index]
        substitutions = {"MANIFEST": str(directory / "manifest.yaml"), "POLICY": str(directory / "policy.yaml"),
                         "DIR": str(directory / "dir"), "MISSING": str(directory / "missing"),
                         "KUBECONFIG": kubeconfig, "POD": POD, "SAS": SAS}
        # `inputs`: start from a working command line (a real pod and its ServiceAccount), so that the fuzzed
        # flags reach the code past argument parsing
        base = ["-f", POD, "--objects", SAS] if inputs and command in (["check"], ["mutate"]) else []
        flags = [item for flag, value in pairs for item in (flag, value)]
        argv = [*command, *base, *(substitutions.get(t, t) for t in [*flags, *tokens])]
        if argv and argv[-1] == "--out":
            argv.append(str(directory / "out"))
        with contextlib.chdir(directory):  # relative paths (`--out x`) land in the temporary directory
            code, err = run(argv, capsys)
    assert code in (0, 1, 2), (argv, err)
    assert "unexpected error" not in err and "Traceback" not in err, (argv, err)


@FUZZ
@given(manifest=documents, objects=documents, policy=policies, output=st.sampled_from(["text", "json", "sarif",
                                                                                        "junit", "yaml", "patch"]),
       extra=st.lists(st.sampled_from(["--show-mutated", "--allow-empty", "--warnings-as-errors", "-n", "x"]),
                      max_size=3, unique=True))
def test_any_input_files_exit_0_1_or_2_without_an_unexpected_error(manifest: str, objects: str, policy: str,
                                                                   output: str, extra: list[str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="wi-cli-fuzz-") as tmp:
        directory = Path(tmp)
        paths = {name: directory / f"{name}.yaml" for name in ("manifest", "objects", "policy")}
        for name, text in (("manifest", manifest), ("objects", objects), ("policy", policy)):
            paths[name].write_text(text)
        base = ["-f", str(paths["manifest"]), "--objects", str(paths["objects"]), "--policy", str(paths["policy"])]
        results: list[Any] = []
        if output in ("yaml", "patch", "json"):
            results.append(run(["mutate", *base, "-o", output, *[e for e in extra if e == "-n" or e == "x"]],
                               capsys))
        if output != "yaml" and output != "patch":
            results.append(run(["check", *base, "-o", output, *extra], capsys))
    for code, err in results:
        assert code in (0, 1, 2), err
        assert "unexpected error" not in err and "Traceback" not in err, err
