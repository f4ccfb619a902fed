"""`wi-webhook mutate`, `certs generate` and `version` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support import TENANT
from webhook.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
POD = str(ROOT / "examples/demo/pod.yaml")
SAS = str(ROOT / "examples/demo/serviceaccounts.yaml")


@pytest.fixture(autouse=True)
def tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)


def test_mutate_yaml_json_and_patch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mutate", "-f", POD, "--objects", SAS]) == 0
    pod = yaml.safe_load(capsys.readouterr().out)
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]][-1] == "AZURE_AUTHORITY_HOST"
    assert main(["mutate", "-f", POD, "--objects", SAS, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["volumes"][0]["projected"]
    assert main(["mutate", "-f", POD, "--objects", SAS, "-o", "patch"]) == 0
    patch = json.loads(capsys.readouterr().out)
    assert {op["op"] for op in patch} == {"add"}


def test_mutate_denial_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["mutate", "-f", POD, "--objects", str(tmp_path)]) == 1
    assert 'serviceaccounts "workload-identity-sa" not found' in capsys.readouterr().err


def test_mutate_bad_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["mutate", "-f", str(tmp_path / "missing.yaml"), "--objects", SAS]) == 2
    assert "missing.yaml: no such file or directory" in capsys.readouterr().err
    assert main(["mutate", "-f", SAS, "--objects", SAS]) == 2
    assert "no Pod found" in capsys.readouterr().err


def test_mutate_config_errors_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_TENANT_ID")
    assert main(["mutate", "-f", POD, "--objects", SAS]) == 2
    assert "required key AZURE_TENANT_ID missing value" in capsys.readouterr().err
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    assert main(["mutate", "-f", POD, "--objects", SAS, "--log-level", "loud"]) == 2
    assert "--log-level" in capsys.readouterr().err


def test_certs_generate_and_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["certs", "generate", "--service", "svc", "--namespace", "ns", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip()


def test_reference_serve_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--version"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["serve", "--metrics-backend", "statsd", "--objects", SAS]) == 2
    assert "--metrics-backend" in capsys.readouterr().err


def test_mutate_malformed_pod_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nmetadata: [1]\nspec: {}\n")
    assert main(["mutate", "-f", str(bad), "--objects", SAS]) == 2
    assert "metadata must be an object" in capsys.readouterr().err


def test_unexpected_errors_are_one_line_unless_debug(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: object) -> int:
        raise RuntimeError("spec\nmore")

    monkeypatch.setattr("webhook.cli.main.run_mutate", broken)
    assert main(["mutate", "-f", POD]) == 2
    err = capsys.readouterr().err
    assert err == ("wi-webhook: mutate: unexpected error: RuntimeError: spec more (run again with --debug for the "
                   "traceback, and please report it)\n")
    with pytest.raises(RuntimeError):
        main(["--debug", "mutate", "-f", POD])
    with pytest.raises(RuntimeError):
        main(["mutate", "-f", POD, "--debug"])


def test_environment_failures_nobody_caught_are_described_not_reported_as_bugs(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    def unreachable(_: object) -> int:
        raise MaxRetryError(None, "/version", NewConnectionError(None, "[Errno 111] Connection refused"))  # type: ignore[arg-type]

    monkeypatch.setattr("webhook.cli.main.run_mutate", unreachable)
    assert main(["mutate", "-f", POD]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wi-webhook: mutate: the Kubernetes API server is not reachable (")
    assert "Connection refused" in err and "--kubeconfig" in err and "please report" not in err

    def disk_full(_: object) -> int:
        raise OSError(28, "No space left on device", "/out/tls.key")

    monkeypatch.setattr("webhook.cli.main.run_mutate", disk_full)
    assert main(["mutate", "-f", POD]) == 2
    assert capsys.readouterr().err == "wi-webhook: mutate: No space left on device (/out/tls.key) (--debug shows the " \
                                      "traceback)\n"


def test_serve_giving_up_on_missing_certificates_names_the_directory(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def gives_up(*_: object, **__: object) -> None:
        raise RuntimeError("certs are not ready after 300s: cannot read tls.crt")

    monkeypatch.setattr("webhook.serving.server.serve", gives_up)
    monkeypatch.setattr("webhook.cli.logs.setup", lambda level: None)  # keep this process's logging as pytest set it
    port = _free_port()
    assert main(["serve", "--objects", SAS, "--webhook-cert-dir", str(tmp_path), "--host", "127.0.0.1", "--port",
                 str(port), "--health-addr", f"127.0.0.1:{_free_port()}", "--metrics-addr",
                 f"127.0.0.1:{_free_port()}", "--event-loop", "asyncio"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"wi-webhook: --webhook-cert-dir {tmp_path}: cannot read {tmp_path}/tls.crt")
    assert err.endswith("gave up: certs are not ready after 300s: cannot read tls.crt")


def _free_port() -> int:
    from tests.processes import free_port

    return free_port()


def test_unreadable_stdin_is_an_input_error(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`-f -` when standard input cannot be read (a detached terminal, a CI runner's closed descriptor) is exit 2
    naming stdin, not an unexpected error."""
    class Unreadable:
        closed = False

        def read(self) -> str:
            raise OSError("reading from stdin is not possible here")

    monkeypatch.setattr("sys.stdin", Unreadable())
    assert main(["check", "-f", "-"]) == 2
    err = capsys.readouterr().err
    assert "<stdin>: cannot read standard input" in err and "unexpected" not in err
