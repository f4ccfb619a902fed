"""The real node on a pod network, as a user's cluster runs: every address lives in a network namespace the suite
creates, so no test traffic can reach the machine's real network (/work/shared/reference/podnet.md records the
feasibility run this follows).

    node = PodNetworkCluster.start(workdir, bin_dir, images=[...])   # inside the netns from here on
    ... kubernetes clients, helm, podman push: all reach 10.200.0.1 (the node, API server, registry)
    node.stop()                                                         # back in the root netns, netns deleted

What differs from the hostNetwork node (tests/node/realnode.py):
* the netns `wi-webhook-podnet` holds the node's address 10.200.0.1 (on its `lo`: this VM kind's kernel has no dummy
  links), the CNI bridge `wipn0` (10.244.0.1/24, the pods' default gateway) and a route for the Service range
  10.96.0.0/24; it has no link to the root namespace and no default route;
* the test process itself enters the netns (setns on its main thread) while the cluster runs, so every process it
  starts (etcd, the API server, containerd, the kubelet, kube-proxy, the registry, helm, podman push) and every
  client it opens is in there too; it goes back before the host is restored;
* the API server listens on 10.200.0.1 and is advertised there: the `kubernetes` Service's endpoint, which pods reach
  through kube-proxy (iptables mode), as in any cluster; webhooks are called through their Services;
* an OCI registry (go-containerregistry's, hack/registry/build.sh) on the netns's 127.0.0.1:5000, from which
  containerd pulls (plain HTTP, as a hosts.toml says): the images under test are pushed there, as a user pushes to
  a registry.

Deleting the netns removes the bridge, the veths, the routes, kube-proxy's iptables rules and conntrack state at
once; HostState (tests/node/hoststate.py) restores the rest (the kubelet's global sysctls, mounts, cgroups, paths).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.node.nodeconfig import CONTAINERD_CONFIG, kubelet_config
from tests.node.realnode import CNI_BIN_DIR, PAUSE_IMAGE, NodeApiServer, NodeCluster, NodeError

NETNS = "wi-webhook-podnet"
NODE_IP = "10.200.0.1"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
POD_CIDR, POD_GATEWAY = "10.244.0.0/24", "10.244.0.1"
BRIDGE = "wipn0"
REGISTRY_PORT = 5000
CLONE_NEWNET = 0x40000000


def _run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)
    if proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


class NetworkNamespace:
    """The pod network's namespace: created, entered by this thread, left and deleted."""

    def __init__(self, name: str = NETNS) -> None:
        self.name = name
        self.path = Path("/run/netns") / name
        self._home: int | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)

    def create(self) -> None:
        if self.path.exists():
            self.delete()  # a run that died left it: nothing in it outlives its processes
        _run("ip", "netns", "add", self.name)
        inside = ["ip", "netns", "exec", self.name]
        for command in (["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"],
                        ["ip", "link", "add", BRIDGE, "type", "bridge"],
                        ["ip", "addr", "add", f"{POD_GATEWAY}/24", "dev", BRIDGE],
                        ["ip", "link", "set", BRIDGE, "up"],
                        # There is no default route: without this, dialling a ClusterIP fails before kube-proxy's
                        # DNAT runs; with it, an unallocated ClusterIP fails to ARP on the bridge, and nothing leaves.
                        ["ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP],
                        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1",
                         "net.bridge.bridge-nf-call-ip6tables=1"]):
            _run(*inside, *command)

    def enter(self) -> None:
        """Move this thread (the test process's main thread) into the namespace; `leave()` goes back."""
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            if self._libc.setns(target, CLONE_NEWNET) != 0:
                raise NodeError(f"setns({self.path}) failed: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)

    def leave(self) -> None:
        if self._home is None:
            return
        try:
            if self._libc.setns(self._home, CLONE_NEWNET) != 0:
                raise NodeError(f"setns(back to the root netns) failed: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(self._home)
            self._home = None

    def delete(self) -> None:
        if self.path.exists():
            _run("ip", "netns", "del", self.name)


class PodNetApiServer(NodeApiServer):
    """The API server on the node's address in the netns, advertised there: the `kubernetes` Service's endpoint."""

    HOST = NODE_IP
    EXTRA_IPS = (KUBERNETES_SERVICE_IP, "127.0.0.1")
    EXTRA_DNS_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                       "kubernetes.default.svc.cluster.local")

    def _apiserver_argv(self) -> list[str]:
        argv = [arg for arg in super()._apiserver_argv()
                if not arg.startswith(("--endpoint-reconciler-type", "--kubelet-preferred-address-types"))]
        return [*argv, "--kubelet-preferred-address-types=InternalIP"]


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """The pod network: a bridge whose gateway is the pods' default route (they reach Services through it)."""
    return {"cniVersion": "1.0.0", "name": "wi-podnet",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": True,
                         "ipMasq": False, "hairpinMode": True,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                                  "dataDir": str(ipam_dir)}},
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                        {"type": "loopback"}]}


class PodNetworkCluster(NodeCluster):
    """A control plane plus one node with a pod network, kube-proxy and a registry, inside NETNS."""

    def __init__(self, workdir: Path, bin_dir: Path, images: Sequence[str]) -> None:
        super().__init__(workdir, bin_dir, images)
        self.netns = NetworkNamespace()
        self.registry = f"127.0.0.1:{REGISTRY_PORT}"  # the netns's loopback: containerd, helm and podman are in it
        self.registry_bin: Path | None = None

    @classmethod
    def start_pod_network(cls, workdir: Path, bin_dir: Path, registry_bin: Path,
                          images: Sequence[str] = ()) -> PodNetworkCluster:
        workdir.mkdir(parents=True, exist_ok=True)
        node = cls(workdir, bin_dir, images)
        node.registry_bin = registry_bin
        t0 = time.monotonic()
        node._take_lock()
        try:
            node._preflight()
            node._clean_up_after_a_dead_run()
            node.host = node._record_host()
            node.netns.create()
            node.netns.enter()
            node.api = PodNetApiServer.start(node.workdir / "control-plane", bin_dir)
            node._start_registry()
            node._start_containerd()
            node._import_images()
            node._start_control_plane_components()
            node._start_kubelet()
            node._start_kube_proxy()
            node._wait_ready()
            node._wait("kube-proxy's rules for the kubernetes Service", node._service_programmed, 120, *node.procs)
        except BaseException:
            node.stop()
            raise
        node.startup_seconds = time.monotonic() - t0
        return node

    def _record_host(self) -> Any:
        from tests.node.hoststate import HostState
        from tests.node.realnode import STATE_FILE

        host = HostState.record()
        host.save(STATE_FILE, self.workdir)
        return host

    def _leave_network(self) -> list[str]:
        problems: list[str] = []
        try:
            self.netns.leave()
            self.netns.delete()
        except (NodeError, OSError) as exc:
            problems.append(f"the network namespace {NETNS}: {exc}")
        return problems

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise NodeError("the pod-network node needs root (a network namespace, containerd, the kubelet)")
        missing = [n for n in ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy")
                   if not os.access(self.bin_dir / n, os.X_OK)]
        missing += [str(CNI_BIN_DIR / p) for p in ("bridge", "portmap", "host-local", "loopback")
                    if not (CNI_BIN_DIR / p).exists()]
        if missing:
            raise NodeError(f"missing {missing}: run hack/test-node/prepare.sh")

    def _start_registry(self) -> None:
        assert self.registry_bin is not None
        # go-containerregistry's registry keeps what is pushed in memory, and listens on localhost (the netns's).
        proc = self._start("registry", [str(self.registry_bin), "-port", str(REGISTRY_PORT)])
        self._wait("the registry", lambda: _http_ok(f"http://{self.registry}/v2/"), 30, proc)

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        cni = self.workdir / "cni"
        hosts = base / "certs.d" / self.registry
        for d in (base, cni / "net.d", cni / "ipam", hosts):
            d.mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-wi-podnet.conflist").write_text(json.dumps(cni_config(cni / "ipam")))
        # containerd pulls from the registry over plain HTTP, as a hosts.toml tells it.
        (hosts / "hosts.toml").write_text(f'server = "http://{self.registry}"\n\n'
                                          f'[host."http://{self.registry}"]\n  capabilities = ["pull", "resolve"]\n')
        config = base / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(base=base, sock=self.containerd_sock, pause=PAUSE_IMAGE,
                                                   cni_bin=CNI_BIN_DIR, cni_conf=cni / "net.d")
                          .replace('config_path = ""', f'config_path = "{base / "certs.d"}"'))
        proc = self._start("containerd", ["containerd", "--config", str(config)])
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, 60, proc)

    def _start_kubelet(self) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        settings = kubelet_config(self.kubelet_port, self.kubelet_healthz_port, self.containerd_sock, self.workdir)
        settings["address"] = NODE_IP  # the API server reaches it here (logs, exec); nothing outside the netns can
        config = self.workdir / "kubelet-config.json"
        config.write_text(json.dumps(settings))
        self._start("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={config}",
            f"--kubeconfig={self.apiserver.kubeconfigs['kubelet']}", f"--root-dir={root}",
            f"--cert-dir={root / 'pki'}", f"--hostname-override={self.node_name}", f"--node-ip={NODE_IP}", "--v=1"])

    def _start_kube_proxy(self) -> None:
        config = self.workdir / "kube-proxy.json"
        # conntrack: 0s/0 leave the conntrack sysctls alone (read-only in a non-initial netns).
        config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "iptables",
            "hostnameOverride": self.node_name, "clusterCIDR": POD_CIDR,
            "clientConnection": {"kubeconfig": str(self.apiserver.kubeconfigs["kube-proxy"])},
            "bindAddress": NODE_IP, "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": ["primary"],
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"masqueradeAll": False, "syncPeriod": "30s", "minSyncPeriod": "0s"}}))
        self._start("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={config}", "--v=1"])

    def _service_programmed(self) -> bool:
        rules = subprocess.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"], capture_output=True, text=True,
                               timeout=10, check=False).stdout
        return "default/kubernetes:https" in rules

    def push(self, image: str, name: str) -> str:
        """Push a podman image to the registry as `name` (repository:tag); the reference a pod pulls."""
        from tests.node.images import podman

        target = f"{self.registry}/{name}"
        podman("push", "--tls-verify=false", image, f"docker://{target}", timeout=300)
        return target


def ensure_podnet_tools() -> tuple[Path, Path]:
    """The `helm` command and the registry (hack/helm/build.sh, hack/registry/build.sh: cached by version)."""
    from tests.node.images import REPO_ROOT, run_script

    helm = Path(run_script(REPO_ROOT / "hack" / "helm" / "build.sh", timeout=1800)) / "helm"
    registry = Path(run_script(REPO_ROOT / "hack" / "registry" / "build.sh", timeout=1800)) / "registry"
    return helm, registry


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False
