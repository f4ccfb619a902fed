"""The CLI's contract for CI, through the real entry point (`python -m webhook.cli` in a subprocess): every way a
command cannot run exits 2 with one line naming the file, flag or server at fault and the fix, and no traceback.
Also serve's startup lines, and the help texts. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import WebhookProcess, free_port, make_certs
from tests.support import TENANT

ROOT = Path(__file__).resolve().parent.parent
POD = str(ROOT / "examples/demo/pod.yaml")
SAS = str(ROOT / "examples/demo/serviceaccounts.yaml")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST",
                                                             "KUBERNETES_SERVICE_PORT")}
    return subprocess.run([sys.executable, "-m", "webhook.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**base, "AZURE_TENANT_ID": TENANT, **(env or {})}, check=False)


def serve(*args: str) -> list[str]:
    """`serve` on free 127.0.0.1 ports: other processes on this machine may hold the defaults (9440, 8095, 9443)."""
    return ["serve", "--host", "127.0.0.1", "--port", str(free_port()), "--health-addr", f"127.0.0.1:{free_port()}",
            "--metrics-addr", f"127.0.0.1:{free_port()}", *args]


def assert_usage_error(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """Exit 2, a single `wi-webhook: ...` line on stderr naming each of `named`, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wi-webhook: "), result.stderr
    for text in named:
        assert text in lines[0]
    return lines[0]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound (so nobody else takes it) but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def unreachable_kubeconfig(tmp_path: Path, closed_port: int) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{closed_port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    return str(path)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_check_with_a_missing_kubeconfig() -> None:
    line = assert_usage_error(cli("check", "-f", POD, "--kubeconfig", "/nonexistent/kubeconfig"),
                              "--kubeconfig /nonexistent/kubeconfig", "no such file")
    assert "kubectl config view" in line


def test_check_with_a_broken_kubeconfig(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    assert_usage_error(cli("check", "-f", POD, "--kubeconfig", str(broken)), f"--kubeconfig {broken}",
                       "not a usable kubeconfig")


def test_check_with_an_unreachable_api_server(unreachable_kubeconfig: str, closed_port: int) -> None:
    line = assert_usage_error(cli("check", "-f", POD, "--kubeconfig", unreachable_kubeconfig),
                              f"--kubeconfig {unreachable_kubeconfig}", f"https://127.0.0.1:{closed_port}",
                              "not reachable")
    assert "check that the cluster is running" in line


def test_check_cluster_with_an_unreachable_api_server(unreachable_kubeconfig: str, closed_port: int) -> None:
    assert_usage_error(cli("check", "--cluster", "--kubeconfig", unreachable_kubeconfig),
                       f"--kubeconfig {unreachable_kubeconfig}", "cannot list pods",
                       f"https://127.0.0.1:{closed_port}")


def test_serve_outside_a_cluster_without_objects_or_kubeconfig() -> None:
    line = assert_usage_error(cli(*serve()), "not running inside one", "--kubeconfig FILE")
    assert "--objects FILE" in line


def test_serve_with_a_missing_kubeconfig() -> None:
    assert_usage_error(cli(*serve("--kubeconfig", "/nonexistent/kubeconfig")), "--kubeconfig /nonexistent/kubeconfig")


@pytest.mark.parametrize("flag", ["--health-addr", "--metrics-addr", "--port"])
def test_serve_with_a_port_in_use(flag: str, busy_port: int, tmp_path: Path) -> None:
    ports = {"--health-addr": f"127.0.0.1:{free_port()}", "--metrics-addr": f"127.0.0.1:{free_port()}",
             "--port": str(free_port())}
    ports[flag] = f"127.0.0.1:{busy_port}" if flag != "--port" else str(busy_port)
    args = [item for pair in ports.items() for item in pair]
    line = assert_usage_error(cli("serve", "--objects", SAS, "--host", "127.0.0.1", "--webhook-cert-dir",
                                  str(tmp_path), *args), f"{flag} {ports[flag]}", "in use")
    assert f"choose another address with {flag}" in line


def test_certs_generate_into_a_file_names_out(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert_usage_error(cli("certs", "generate", "--out", str(not_a_dir / "sub")), f"--out {not_a_dir / 'sub'}",
                       "cannot write the certificates")


def test_serve_logs_why_it_is_not_serving_then_where_it_serves(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs-later"
    with WebhookProcess(tmp_path, ["--objects", SAS], cert_dir=cert_dir) as webhook:
        _wait_for(webhook, f"not serving yet: --webhook-cert-dir {cert_dir}: cannot read {cert_dir}/tls.crt")
        assert "certs generate" in webhook.logs()
        assert f"port {webhook.port} opens once tls.crt and tls.key are there" in webhook.logs()
        make_certs(cert_dir)
        _wait_for(webhook, f"serving on https://127.0.0.1:{webhook.port}/mutate-v1-pod (ServiceAccounts from "
                           f"files {SAS})")
        assert webhook.logs().count("serving on") == 1


def test_serve_says_where_it_serves_at_the_default_log_level(tmp_path: Path) -> None:
    with WebhookProcess(tmp_path, ["--objects", SAS]) as webhook:
        webhook.wait_ready()
        _wait_for(webhook, f"serving on https://127.0.0.1:{webhook.port}/mutate-v1-pod")
        assert "not serving yet" not in webhook.logs()  # a normal start is quiet apart from that line
    with WebhookProcess(tmp_path, ["--objects", SAS, "--log-level", "error"]) as quiet:
        quiet.wait_ready()
        time.sleep(1.0)  # the watcher polls every 0.5 s; it must stay silent at --log-level error
        assert "serving on" not in quiet.logs()


def _wait_for(webhook: WebhookProcess, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in webhook.logs():
            return
        if webhook.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged:\n{webhook.logs()[-3000:]}")


def test_top_level_help_lists_every_command() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("serve", "mutate", "check", "verify", "certs", "version"):
        assert f"\n    {command} " in result.stdout, result.stdout
    assert "Exit codes: 0" in result.stdout and "--debug" in result.stdout


def test_certs_generate_help_shows_what_the_flags_do_and_their_defaults() -> None:
    out = " ".join(cli("certs", "generate", "--help", env={"COLUMNS": "300"}).stdout.split())
    assert "the webhook's Service name" in out and "(default: azure-wi-webhook-webhook-service)" in out
    assert "the namespace of that Service (default: azure-workload-identity-system)" in out


def test_log_level_help_names_every_level() -> None:
    out = " ".join(cli("serve", "--help", env={"COLUMNS": "300"}).stdout.split())
    assert 'LEVEL log level: "" (the default: warnings and errors, plus the startup lines of serve), error, warning, ' \
           "info, debug, trace or all" in out


@pytest.mark.parametrize("command", [["check"], ["mutate", "-f", "x"], ["serve"], ["certs", "generate", "--out", "x"],
                                     ["verify"], ["version"]])
def test_an_unknown_flag_shows_the_commands_usage(command: list[str]) -> None:
    result = cli(*command, "--no-such-flag")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    name = " ".join(c for c in command if c.isalpha() and len(c) > 1)
    assert result.stderr.startswith(f"usage: wi-webhook {name} ")
    assert f"wi-webhook {name}: error: unrecognized arguments: --no-such-flag" in result.stderr


def test_broken_yaml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Pod\nmetadata: [\n")
    for command in (["check", "-f", str(broken)], ["mutate", "-f", str(broken), "--objects", SAS],
                    ["check", "-f", POD, "--objects", str(broken)]):
        assert_usage_error(cli(*command), f"{broken}: not valid YAML/JSON")


def test_object_with_bad_metadata_in_objects_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "sas.yaml"
    bad.write_text("apiVersion: v1\nkind: ServiceAccount\nmetadata: true\n")
    assert_usage_error(cli("check", "-f", POD, "--objects", str(bad)), f"{bad}: document 1 (line 1, ServiceAccount)",
                       "metadata must be a mapping")
    assert_usage_error(cli("mutate", "-f", POD, "--objects", str(bad)), f"{bad}: document 1")


@pytest.mark.parametrize("command", ["check", "mutate"])
def test_reading_a_closed_stdin(command: str) -> None:
    script = f'exec "{sys.executable}" -m webhook.cli {command} -f - <&-'
    base = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, check=False,
                            env={**base, "AZURE_TENANT_ID": TENANT})
    assert_usage_error(result, "-f -: there is no standard input")


def test_a_missing_kubeconfig_from_the_environment_is_named_as_such(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert_usage_error(cli(*serve(), env={"KUBECONFIG": f"{missing}:{missing}2"}),
                       f"$KUBECONFIG ({missing}:{missing}2): no such file")


def test_serve_with_two_listeners_on_one_port(tmp_path: Path) -> None:
    port = free_port()
    assert_usage_error(cli("serve", "--objects", SAS, "--webhook-cert-dir", str(tmp_path), "--port", str(free_port()),
                           "--health-addr", f"127.0.0.1:{port}", "--metrics-addr", f":{port}"),
                       f"--metrics-addr :{port}: the same port as --health-addr 127.0.0.1:{port}")


@pytest.fixture
def forbidding_api_server() -> Iterator[str]:
    """A plain-HTTP stand-in for an API server that answers every request 403, on 127.0.0.1."""
    import http.server
    import threading

    class Forbid(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}'
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbid)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(("command", "needs"), [(["check", "-f", POD], "get on serviceaccounts"),
                                                (["check", "--cluster"], "list on pods")])
def test_a_forbidden_kubeconfig_user_is_named_with_the_permission(tmp_path: Path, forbidding_api_server: str,
                                                                  command: list[str], needs: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{forbidding_api_server}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    assert_usage_error(cli(*command, "--kubeconfig", str(kubeconfig)), f"--kubeconfig {kubeconfig}", "403",
                       f"needs {needs}")
