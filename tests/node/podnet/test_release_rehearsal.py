"""A release rehearsal: what .github/workflows/release.yml does on a tag, done here with the pod-network node's
registry standing in for ghcr.io: the image pushed under both names the workflow pushes (tagged with the release
tag), the chart packaged with the release's version and appVersion and pushed as an OCI artifact by the workflow's
own `run:` script (with a `helm` that adds --plain-http and skips the registry login, which this registry does not
need), then `helm install` of that chart version from the registry with only the tenant and the registry set: the
chart's default image tag (its appVersion, the release tag) must name the image the workflow pushed. Signing, the
SBOM and the GitHub release need GitHub and are not rehearsed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.node.images import podman
from tests.node.podnet.conftest import Helm
from tests.node.podnetwork import PodNetworkCluster

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "release.yml"
TAG = "v0.9.9-rc.1"
OWNER = "workload-identity-webhook"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def release_step(name: str) -> dict[str, Any]:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["release"]["steps"]
    [step] = [s for s in steps if s.get("name") == name]
    return dict(step)


def test_the_release_workflow_rehearsed_locally(podnet: PodNetworkCluster, helm: Helm, webhook_image: str,
                                                tmp_path: Path) -> None:
    registry = podnet.registry
    # The image, under the two names the workflow's build-push step tags (ghcr.io/<repository>, the chart's default).
    pushed = release_step("Build and push the image")["with"]["tags"]
    assert "names.outputs.image" in pushed and "names.outputs.chart-image" in pushed and "github.ref_name" in pushed
    images = [f"{registry}/{OWNER}/workload-identity-webhook:{TAG}", f"{registry}/{OWNER}/webhook:{TAG}"]
    for image in images:
        podman("push", "--tls-verify=false", webhook_image, f"docker://{image}", timeout=300)
    # The chart, by the workflow's own script.
    real_helm = helm("version", "--short").args[0]
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "helm").write_text(f"""#!/usr/bin/env bash
if [[ "$1 $2" == "registry login" ]]; then cat > /dev/null; exit 0; fi   # this registry needs no login
if [[ "$1" == push ]]; then exec "{real_helm}" "$@" --plain-http; fi
exec "{real_helm}" "$@"
""")
    (shims / "helm").chmod(0o755)
    (tmp_path / "charts").symlink_to(REPO_ROOT / "charts")
    output = tmp_path / "github-output"
    env = {**helm.env, "PATH": f"{shims}:{os.environ['PATH']}",  # type: ignore[attr-defined]
           "VERSION": TAG.removeprefix("v"), "CHARTS": f"{registry}/charts", "TOKEN": "unused",
           "GITHUB_REF_NAME": TAG, "GITHUB_ACTOR": "rehearsal", "GITHUB_OUTPUT": str(output)}
    script = release_step("Package and push the chart")["run"]
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert output.read_text().startswith("digest=sha256:"), output.read_text()
    shown = helm("show", "chart", f"oci://{registry}/charts/workload-identity-webhook", "--version",
                 TAG.removeprefix("v"), "--plain-http").stdout
    assert f"version: {TAG.removeprefix('v')}" in shown and f"appVersion: {TAG}" in shown, shown
    # Install the released chart with only the tenant and the registry: its default tag is the release's image.
    try:
        helm("install", "rehearsal", f"oci://{registry}/charts/workload-identity-webhook", "--version",
             TAG.removeprefix("v"), "--plain-http", "--namespace", "azure-workload-identity-system",
             "--create-namespace", "--wait", "--timeout", "180s", "--set", f"azureTenantID={TENANT}",
             "--set", f"image.repository={registry}/{OWNER}/webhook")
        pods = [p for p in client.CoreV1Api(podnet.api_client()).list_namespaced_pod(
                    "azure-workload-identity-system", label_selector="release=rehearsal").items
                if p.metadata.deletion_timestamp is None]
        assert pods and all(p.spec.containers[0].image == images[1] for p in pods)
        tested = helm("test", "rehearsal", "--namespace", "azure-workload-identity-system", "--logs")
        assert "ok: the webhook injected the labelled pod" in tested.stdout
    finally:
        helm("uninstall", "rehearsal", "--namespace", "azure-workload-identity-system", "--wait", "--timeout",
             "120s", check=False)
