"""The pod-network node (tests/node/podnetwork.py) for this package's tests: one cluster for the package, stopped (and
the host restored) before the hostNetwork node of tests/node starts (one cluster per machine).

While it runs, the test process is inside the cluster's network namespace: the tests reach the API server, the
registry and pod IPs at their addresses there, and nothing else."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.node.conftest import _get
from tests.node.podnetwork import PodNetworkCluster

Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="package")
def podnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodNetworkCluster]:
    bin_dir: Path = _get("bin_dir")
    _, registry = _get("podnet_tools")
    cluster = PodNetworkCluster.start_pod_network(tmp_path_factory.mktemp("podnet"), bin_dir, Path(registry))
    try:
        yield cluster
    finally:
        problems = cluster.stop()
        assert not problems, f"the pod-network cluster left changes on the host: {problems}"


@pytest.fixture(scope="package")
def helm(podnet: PodNetworkCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The `helm` command (v4, built from its module) against the pod-network cluster, with its own config dirs."""
    helm_bin, _ = _get("podnet_tools")
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "KUBECONFIG": str(podnet.apiserver.kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str, timeout: float = 240.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    run.env = env  # type: ignore[attr-defined]  # for a helm run in the background (tests/node/podnet/test_faults.py)
    return run
