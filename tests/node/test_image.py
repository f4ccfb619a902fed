"""The real image, built from the Dockerfile by podman (hack/image/build.sh): its metadata, its size, and
`wi-webhook serve` running in it as 65532 on a read-only root, answering an AdmissionReview over TLS."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.node.images import REPO_ROOT, ULIMITS, inspect_image, podman
from tests.processes import free_port, make_certs

BASE = "docker.io/library/python:3.11-slim-bookworm"
# What the Dockerfile adds on top of its base: the webhook and its dependencies (the kubernetes client alone is
# ~126 MB with its bytecode). Measured 196 MB; a build stage's tools or a pip cache leaking in would exceed this.
MAX_ADDED_BYTES = 240_000_000
MAX_IMAGE_BYTES = 480_000_000
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_image_metadata_user_entrypoint_and_size(webhook_image: str) -> None:
    image = inspect_image(webhook_image)
    config = image["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["wi-webhook"] and config["Cmd"] == ["serve"]
    assert set(config["ExposedPorts"]) == {"9443/tcp", "9440/tcp", "8095/tcp"}
    assert config["WorkingDir"] == "/"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    added = int(image["Size"]) - int(inspect_image(BASE)["Size"])
    assert 0 < added <= MAX_ADDED_BYTES, f"the Dockerfile adds {added / 1e6:.0f} MB to its base"
    assert int(image["Size"]) <= MAX_IMAGE_BYTES


def run_in_image(image: str, *command: str, user: str = "65532") -> str:
    proc = podman("run", "--rm", *ULIMITS, "--network", "none", "--read-only", "--user", user,
                  "--entrypoint", command[0], image, *command[1:], timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_only_the_runtime_is_installed(webhook_image: str) -> None:
    """No build stage leftovers: no wheels, sources, compilers or pip cache; the webhook is importable."""
    out = run_in_image(webhook_image, "sh", "-c",
                       "for p in /wheels /src /root/.cache/pip /usr/bin/gcc /usr/bin/cc; do "
                       "test -e $p && echo leftover $p; done; "
                       "find /usr/local/lib/python3.11/dist-packages/webhook -name '*.so' -o -name '*.c' "
                       "| sed 's/^/compiled /'; "
                       "wi-webhook version; "
                       "python -c 'import webhook; print(webhook.__file__)'", user="0")
    assert "leftover" not in out and "compiled" not in out, out  # one pure-Python build
    assert f"\n{VERSION}\n" in f"\n{out}"
    assert "/dist-packages/webhook/__init__.py" in out


def test_the_installed_webhook_is_this_source_tree(webhook_image: str) -> None:
    """Every module in the image is byte-for-byte the source's: a build cache that reuses an old `pip install`
    layer (podman 4.3 did, see hack/image/build.sh) would otherwise test yesterday's webhook."""
    out = run_in_image(webhook_image, "python", "-c",
                       "import hashlib, pathlib, webhook; d = pathlib.Path(webhook.__file__).parent; "
                       "[print(p.relative_to(d), hashlib.sha256(p.read_bytes()).hexdigest()) "
                       "for p in sorted(d.rglob('*.py'))]")
    installed = dict(line.split() for line in out.splitlines())
    package = REPO_ROOT / "webhook"
    source = {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(package.rglob("*.py"))}
    assert "core/mutation.py" in source
    assert installed == source, sorted(set(installed.items()) ^ set(source.items()))[:6]


def test_the_image_runs_check_on_mounted_manifests(webhook_image: str, tmp_path: Path) -> None:
    """The image runs every command, not only `serve` (README "Use it in CI": a CI job runs `check` in the image
    over the repository mounted read-only): a finding exits 1 and names the file and line, a clean tree exits 0."""
    src = tmp_path / "src"
    (src / "k8s").mkdir(parents=True)
    (src / "k8s" / "app.yaml").write_text(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app, namespace: team,"
        " annotations: {azure.workload.identity/client-id: 00000000-1111-2222-3333-444444444444}}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: team}\nspec:\n  template:\n"
        "    metadata: {labels: {azure.workload.identity/use: \"true\"}}\n"
        "    spec: {serviceAccountName: app, containers: [{name: app, image: app}]}\n")
    for path in (tmp_path, src, src / "k8s"):
        path.chmod(0o755)  # readable by the image's user, 65532
    (src / "k8s" / "app.yaml").chmod(0o644)

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return podman("run", "--rm", *ULIMITS, "--network", "none", "--read-only", "-v", f"{src}:/src:ro,z",
                      "-e", "AZURE_TENANT_ID=72f988bf-86f1-41af-91ab-2d7cd011db47", webhook_image, "check",
                      "-f", "/src", *args, timeout=120, check=False)

    clean = check()
    assert clean.returncode == 0, clean.stderr
    assert "1 workload checked: 1 injected, 0 denied" in clean.stdout
    (src / "k8s" / "app.yaml").write_text((src / "k8s" / "app.yaml").read_text().replace(
        "00000000-1111-2222-3333-444444444444", "not-a-guid"))
    found = check()
    assert found.returncode == 0 and "/src/k8s/app.yaml:1 ServiceAccount/team/app - WI002 warn" in found.stdout
    enforced = check("--warnings-as-errors", "-o", "junit")
    assert enforced.returncode == 1 and "<failure" in enforced.stdout and "WI002" in enforced.stdout


def test_verify_runs_in_the_image_as_it_is(webhook_image: str, tmp_path: Path) -> None:
    """`verify` in the image with nothing added: it gets as far as a real token request (here to an authority that
    refuses connections) and gives the network advice, not "No module named 'azure'" (azure-identity and
    azure-keyvault-secrets are dependencies of the package, not only of its tests)."""
    claims = {"iss": "https://issuer.example", "sub": "system:serviceaccount:ns:sa", "aud": ["api://AzureADTokenExchange"],
              "exp": int(time.time()) + 3600}
    token = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                     for part in ({"alg": "RS256"}, claims)) + ".signature"
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    (token_dir / "azure-identity-token").write_text(token)
    for path in (tmp_path, token_dir):
        path.chmod(0o755)
    (token_dir / "azure-identity-token").chmod(0o644)
    closed = free_port()
    proc = podman("run", "--rm", *ULIMITS, "--network", "host", "--read-only", "-v", f"{token_dir}:/token:ro,z",
                  "-e", "AZURE_CLIENT_ID=00000000-1111-2222-3333-444444444444",
                  "-e", "AZURE_TENANT_ID=72f988bf-86f1-41af-91ab-2d7cd011db47",
                  "-e", "AZURE_FEDERATED_TOKEN_FILE=/token/azure-identity-token",
                  "-e", f"AZURE_AUTHORITY_HOST=https://127.0.0.1:{closed}/",
                  webhook_image, "verify", "--keyvault", f"https://127.0.0.1:{closed}/", "--secret", "s",
                  timeout=180, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "No module named" not in out and "[PASS] token file" in out, out
    assert "[FAIL] token acquisition: the authority host could not be reached" in out, out


def test_the_readme_gitlab_job_runs_in_the_image(webhook_image: str, tmp_path: Path) -> None:
    """README "Use it in CI", GitLab: the job's script as a GitLab runner runs it in the image (`entrypoint: [""]`,
    the checkout as the working directory): exit 1 on the finding and a JUnit report naming its file:LINE."""
    import xml.etree.ElementTree as ET

    import yaml

    from tests.test_ci_conventions import BAD_LINE, GITLAB_JOB, write_project

    job = yaml.safe_load(GITLAB_JOB)["wi-webhook"]
    project = write_project(tmp_path / "project")
    for path in [project, *project.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)  # the image's user (65532) writes report.xml there
    [script] = job["script"]
    proc = podman("run", "--rm", *ULIMITS, "--network", "none", "--entrypoint", "", "-v", f"{project}:/builds/p:z",
                  "-w", "/builds/p", webhook_image, "sh", "-ec", script, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    suite = ET.parse(project / "report.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    [failure] = [case for case in suite if case.find("failure") is not None]
    assert failure.get("name", "").startswith(f"k8s/bad.yaml:{BAD_LINE} ")


@pytest.fixture
def serving(webhook_image: str, tmp_path: Path) -> Iterator[tuple[str, int, int, Path]]:
    """`serve` in the image as the image's user, read-only root, on free 127.0.0.1 ports (host network)."""
    certs = tmp_path / "certs"
    ca_file = make_certs(certs)
    for path in certs.iterdir():
        path.chmod(0o644)  # readable by 65532 in the container
    name = f"wi-image-test-{uuid.uuid4().hex[:8]}"
    port, health, metrics = free_port(), free_port(), free_port()
    podman("run", "-d", "--name", name, *ULIMITS, "--read-only", "--network", "host",
           "-v", f"{certs}:/certs:ro,z", "-v", f"{REPO_ROOT / 'examples/demo'}:/demo:ro,z",
           "-e", "AZURE_TENANT_ID=72f988bf-86f1-41af-91ab-2d7cd011db47",
           webhook_image, "serve", "--host", "127.0.0.1", "--port", str(port), "--health-addr", f"127.0.0.1:{health}",
           "--metrics-addr", f"127.0.0.1:{metrics}", "--webhook-cert-dir", "/certs", "--disable-cert-rotation",
           "--objects", "/demo/serviceaccounts.yaml")
    try:
        yield name, port, health, ca_file
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


def wait_ready(name: str, health: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", health, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    logs = podman("logs", name, check=False)
    raise AssertionError(f"the container never became ready:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")


def test_serve_runs_read_only_as_65532_and_mutates(serving: tuple[str, int, int, Path]) -> None:
    name, port, health, ca_file = serving
    wait_ready(name, health)
    # The process the entrypoint started, as whom, and a root filesystem nothing can write to.
    cmdline = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[0].endswith(("python", "python3")) and cmdline[1].endswith("/wi-webhook") and cmdline[2] == "serve"
    status = podman("exec", name, "cat", "/proc/1/status").stdout
    assert "\nUid:\t65532\t65532\t65532\t65532" in status and "\nGid:\t65532\t65532\t65532\t65532" in status
    touch = podman("exec", name, "touch", "/usr/local/lib/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    mounts = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip()
    assert mounts == "true"

    pod = yaml.safe_load((REPO_ROOT / "examples/demo/pod.yaml").read_text())
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u1", "namespace": "demo", "operation": "CREATE", "object": pod}}
    context = ssl.create_default_context(cafile=str(ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=15)
    conn.request("POST", "/mutate-v1-pod", body=json.dumps(review), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200 and answer["response"]["allowed"] is True, answer
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    assert any(op["path"].startswith("/spec/volumes") for op in patch)
    assert "AZURE_FEDERATED_TOKEN_FILE" in json.dumps(patch)

    # SIGTERM (podman stop) ends it cleanly.
    podman("stop", "-t", "40", name, timeout=90)
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    assert code == "0", podman("logs", name, check=False).stderr[-3000:]
