"""A real single-node Kubernetes cluster on this machine for tests (no pytest import here).

    bin_dir = ensure_node_binaries()                        # hack/test-node/prepare.sh: packages, binaries, pause
    node = NodeCluster.start(workdir, bin_dir, images=[webhook_image])
    ...  kubernetes.client.CoreV1Api(node.api_client())     # pods really run (runc), tokens really projected
    node.stop()                                             # every process by PID, host changes undone

What runs, all bound to 127.0.0.1 and started by this process (stopped by PID):
* etcd + kube-apiserver of the e2e harness (tests/e2e/cluster.py) with what a node needs: Node,RBAC authorization,
  NodeRestriction, and kubelet access through the node's Hostname address (the node is named after this host,
  which must resolve to 127.0.0.1: nothing here dials another address);
* containerd (Debian's, own socket and dirs under the work dir, CRI `restrict_oom_score_adj`: this VM's root lacks
  CAP_SYS_RESOURCE, so runc cannot lower a sandbox's oom_score_adj) with runc; images are imported from podman
  (`podman save` → `ctr images import`), the pause image included: no registry is reachable;
* kube-controller-manager (ServiceAccounts, kube-root-ca.crt, Deployments/ReplicaSets) and kube-scheduler;
* the kubelet (cgroupfs, `failCgroupV1: false`, `failSwapOn: false`), serving on 127.0.0.1 only; it accepts the
  API server's requests (logs, exec) anonymously, so nothing needs a kubelet client certificate;
* the sysctl net.ipv4.tcp_migrate_req=1, which the chart README asks hostNetwork users to set (the webhook's
  hand-off to its successor on an upgrade; webhook/serving/handoff.py).

Pods must be `hostNetwork: true`: without kube-proxy and with the API server on 127.0.0.1 only, a pod reaches the
API server through the node's loopback (`pod_env()` sets KUBERNETES_SERVICE_HOST/PORT), and tests dial only
127.0.0.1 (a hostNetwork pod's reported IP is eth0's, never dialled). A CNI bridge config is present only because
the node is not Ready without one.

One cluster per machine (node name, /var/lib/kubelet/device-plugins, sysctls, iptables are machine-wide): start()
waits for a machine-wide lock. Host changes are recorded and undone (tests/node/hoststate.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tests.e2e.cluster import TestCluster, _Proc, free_port
from tests.node.hoststate import HostState
from tests.node.images import REPO_ROOT, run_script, save_oci_archive
from tests.node.nodeconfig import CONTAINERD_CONFIG, cni_config, kubelet_config

PREPARE_SCRIPT = REPO_ROOT / "hack" / "test-node" / "prepare.sh"
PAUSE_IMAGE = "localhost/wi-webhook-test/pause:3.10-local"  # made by prepare.sh
CACHE_DIR = Path(os.environ.get("WI_TEST_BIN_DIR", Path.home() / ".cache" / "wi-webhook-test-bin"))
LOCK_FILE = CACHE_DIR / "node-cluster.lock"
# The running cluster's host baseline and work dir, written under the lock and removed by stop(): if it exists at
# start, the previous test process died without stopping its cluster, and start() cleans up after it first.
STATE_FILE = CACHE_DIR / "node-cluster.json"
CNI_BIN_DIR = Path("/usr/lib/cni")
PREPARE_TIMEOUT_S = 2400.0
LOCK_TIMEOUT_S = 1200.0
READY_TIMEOUT_S = 180.0
K8S_NS = "k8s.io"  # containerd namespace of the CRI


class NodeError(RuntimeError):
    """The node could not be prepared, started or stopped cleanly; the message names the step and its output."""


def ensure_node_binaries() -> Path:
    """Run hack/test-node/prepare.sh (idempotent); the dir with kube-apiserver, etcd, kubelet, kcm, scheduler."""
    return Path(run_script(PREPARE_SCRIPT, timeout=PREPARE_TIMEOUT_S))


def node_name() -> str:
    return socket.gethostname().lower()


def _write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> Path:
    import base64

    cfg = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "node", "cluster": {"server": server,
                                                      "certificate-authority-data":
                                                          base64.b64encode(ca_file.read_bytes()).decode()}}],
           "users": [{"name": user, "user": {"token": token}}],
           "contexts": [{"name": "node", "context": {"cluster": "node", "user": user}}],
           "current-context": "node"}
    path.write_text(json.dumps(cfg, indent=2))
    path.chmod(0o600)
    return path


class NodeApiServer(TestCluster):
    """The e2e harness's API server with Node authorization, NodeRestriction and the node components' tokens."""

    def __init__(self, workdir: Path, bin_dir: Path) -> None:
        super().__init__(workdir, bin_dir)
        self.component_tokens = {
            "kubelet": (f"system:node:{node_name()}", "system:nodes"),
            "controller-manager": ("system:kube-controller-manager", ""),
            "scheduler": ("system:kube-scheduler", ""),
            # bound to system:node-proxier by default (the pod-network node's kube-proxy: tests/node/podnetwork.py)
            "kube-proxy": ("system:kube-proxy", ""),
        }
        self.kubeconfigs: dict[str, Path] = {}
        with self.token_file.open("a") as tokens:
            for component, (user, group) in self.component_tokens.items():
                token = secrets.token_hex(24)
                tokens.write(f'{token},{user},{user},"{group}"\n' if group else f"{token},{user},{user}\n")
                self.kubeconfigs[component] = _write_kubeconfig(
                    self.workdir / f"{component}.kubeconfig", self.url, self.ca_file, user, token)

    def _apiserver_argv(self) -> list[str]:
        argv = []
        for arg in super()._apiserver_argv():
            if arg.startswith("--authorization-mode="):
                arg = "--authorization-mode=Node,RBAC"
            elif arg.startswith("--enable-admission-plugins="):
                arg = arg.replace("=", "=NodeRestriction,", 1)
            argv.append(arg)
        # The node's Hostname address resolves to 127.0.0.1 (checked before start); its InternalIP is eth0's.
        return [*argv, "--kubelet-preferred-address-types=Hostname"]


class NodeCluster:
    """A control plane plus one real node (containerd + kubelet) started by this process."""

    def __init__(self, workdir: Path, bin_dir: Path, images: Sequence[str]) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = bin_dir
        self.images = [PAUSE_IMAGE, *images]
        self.node_name = node_name()
        self.api: NodeApiServer | None = None
        self.host: HostState | None = None
        self.procs: list[_Proc] = []
        self.containerd_sock = self.workdir / "containerd" / "containerd.sock"
        self.kubelet_port, self.kubelet_healthz_port = free_port(), free_port()
        self.startup_seconds = 0.0
        self._lock: IO[str] | None = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, workdir: Path, bin_dir: Path, images: Sequence[str] = ()) -> NodeCluster:
        workdir.mkdir(parents=True, exist_ok=True)
        node = cls(workdir, bin_dir, images)
        t0 = time.monotonic()
        node._take_lock()
        try:
            node._preflight()
            node._clean_up_after_a_dead_run()
            node.host = HostState.record()
            node.host.save(STATE_FILE, node.workdir)
            node._set_sysctls()
            node.api = NodeApiServer.start(node.workdir / "control-plane", bin_dir)
            node._start_containerd()
            node._import_images()
            node._start_control_plane_components()
            node._start_kubelet()
            node._wait_ready()
        except BaseException:
            node.stop()
            raise
        node.startup_seconds = time.monotonic() - t0
        return node

    def stop(self) -> list[str]:
        """Stop every process by PID (containers first), undo the host changes; returns what was left over."""
        if self._stopped:
            return []
        self._stopped = True
        problems: list[str] = []
        by_name = {p.name: p for p in self.procs}
        if "kubelet" in by_name:
            by_name["kubelet"].stop()
        if "containerd" in by_name and by_name["containerd"].running():
            problems += self._remove_containers()
        for proc in reversed(self.procs):
            proc.stop()
        problems += self._kill_leftover_shims()
        if self.api is not None:
            self.api.stop()
        problems += self._leave_network()
        if self.host is not None:
            problems += self.host.restore(self.workdir)
            if not problems:
                STATE_FILE.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
        return problems

    def _leave_network(self) -> list[str]:
        """Undo what the cluster's network needed before the host is restored (tests/node/podnetwork.py: its netns)."""
        return []

    def __enter__(self) -> NodeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ for tests

    @property
    def apiserver(self) -> NodeApiServer:
        assert self.api is not None, "the cluster is not started"
        return self.api

    def api_client(self) -> Any:
        return self.apiserver.api_client()

    def pod_env(self) -> list[dict[str, str]]:
        """Env for a hostNetwork pod to reach the API server with in-cluster config (no kube-proxy here)."""
        return [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.apiserver.port)}]

    def ctr(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ctr", "--address", str(self.containerd_sock), "-n", K8S_NS, *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc

    def log_tail(self, name: str, lines: int = 60) -> str:
        path = self.workdir / f"{name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return f"(no {path})"

    # ------------------------------------------------------------------ steps

    def _take_lock(self) -> None:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = LOCK_FILE.open("a+")
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeError(f"another real-node cluster runs on this machine (lock {LOCK_FILE}) and did "
                                    f"not stop within {LOCK_TIMEOUT_S:.0f}s") from None
                time.sleep(1.0)

    def _clean_up_after_a_dead_run(self) -> None:
        """A previous session died (SIGKILL, OOM, CI timeout) with its cluster up: its kubelet and containerd died
        with it (PDEATHSIG) but containers, shims, mounts and host settings stayed. Undo them from its saved state."""
        if not STATE_FILE.exists():
            return
        try:
            previous, workdir = HostState.load(STATE_FILE)
        except (OSError, ValueError, KeyError) as exc:
            raise NodeError(f"cannot read {STATE_FILE} ({exc}): check the host by hand, then delete it") from exc
        previous.kill_leftovers(workdir)
        time.sleep(1.0)  # SIGKILLed processes leave their cgroups and mounts
        problems = previous.restore(workdir)
        if problems:
            raise NodeError(f"a previous real-node run left changes that could not be undone: {problems}; fix them "
                            f"by hand, then delete {STATE_FILE}")
        STATE_FILE.unlink()

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise NodeError("the real-node tests need root (containerd, runc, the kubelet's cgroups and iptables)")
        try:
            address = socket.gethostbyname(self.node_name)
        except OSError as exc:
            raise NodeError(f"the host name {self.node_name!r} does not resolve ({exc}): add "
                            f"'127.0.0.1 {self.node_name}' to /etc/hosts") from exc
        if address != "127.0.0.1":
            raise NodeError(f"the host name {self.node_name!r} resolves to {address}, not 127.0.0.1: the API "
                            f"server would dial it for logs/exec; add '127.0.0.1 {self.node_name}' to /etc/hosts")
        missing = [n for n in ("kubelet", "kube-controller-manager", "kube-scheduler")
                   if not os.access(self.bin_dir / n, os.X_OK)]
        if missing or not (CNI_BIN_DIR / "bridge").exists():
            raise NodeError(f"missing {missing or CNI_BIN_DIR / 'bridge'}: run hack/test-node/prepare.sh")

    def _set_sysctls(self) -> None:
        """net.ipv4.tcp_migrate_req=1, as the chart README asks of hostNetwork users: when the old webhook pod
        closes its SO_REUSEPORT listener during an upgrade, connections queued on it move to the new pod's instead
        of being reset (webhook/serving/handoff.py). Restored with the other sysctls at stop()."""
        assert self.host is not None
        try:
            self.host.apply_harness_sysctls()
        except OSError as exc:
            raise NodeError(f"cannot set the node's sysctls: {exc}") from exc

    def _start(self, name: str, argv: list[str]) -> _Proc:
        proc = _Proc(name, argv, self.workdir / f"{name}.log")
        self.procs.append(proc)
        proc.start()
        return proc

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        cni = self.workdir / "cni"
        for d in (base, cni / "net.d", cni / "ipam"):
            d.mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-wi-node.conflist").write_text(json.dumps(cni_config(cni / "ipam")))
        config = base / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(base=base, sock=self.containerd_sock, pause=PAUSE_IMAGE,
                                                   cni_bin=CNI_BIN_DIR, cni_conf=cni / "net.d"))
        proc = self._start("containerd", ["containerd", "--config", str(config)])
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, 60, proc)

    def import_image(self, image: str) -> None:
        """Make a podman image runnable by the kubelet: `podman save` (cached by image id) → `ctr images import`.
        Pods use it with imagePullPolicy Never (or IfNotPresent and a tag other than latest)."""
        archives = CACHE_DIR / "images"
        archives.mkdir(parents=True, exist_ok=True)
        image_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", image],
                                  capture_output=True, text=True, timeout=60, check=False).stdout.strip()
        if not image_id:
            raise NodeError(f"image {image} is not in podman's store (hack/image/build.sh, prepare.sh)")
        archive = save_oci_archive(image, archives / f"{image_id[:16]}.oci.tar")
        self.ctr("images", "import", str(archive), timeout=300)
        listed = self.ctr("images", "ls", "-q").stdout.split()
        if image not in listed:
            raise NodeError(f"containerd did not list {image} after import (it has {listed})")

    def _import_images(self) -> None:
        for image in self.images:
            self.import_image(image)

    def _start_control_plane_components(self) -> None:
        api = self.apiserver
        self._start("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"), f"--kubeconfig={api.kubeconfigs['controller-manager']}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false",
            "--use-service-account-credentials=true", f"--root-ca-file={api.ca_file}",
            f"--service-account-private-key-file={api.sa_key_file}", "--allocate-node-cidrs=false",
            f"--cert-dir={self.workdir / 'kcm-certs'}", "--v=1"])
        self._start("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={api.kubeconfigs['scheduler']}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false",
            f"--cert-dir={self.workdir / 'scheduler-certs'}", "--v=1"])

    def _start_kubelet(self) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "kubelet-config.json"
        config.write_text(json.dumps(kubelet_config(self.kubelet_port, self.kubelet_healthz_port,
                                                    self.containerd_sock, self.workdir)))
        self._start("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={config}",
            f"--kubeconfig={self.apiserver.kubeconfigs['kubelet']}", f"--root-dir={root}",
            f"--cert-dir={root / 'pki'}", f"--hostname-override={self.node_name}", "--v=1"])

    def _wait_ready(self) -> None:
        from kubernetes import client

        with self.api_client() as api_client:
            core = client.CoreV1Api(api_client)

            def node_ready() -> bool:
                node = core.read_node(self.node_name)
                return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

            def default_sa() -> bool:
                return bool(core.list_namespaced_service_account("default").items)

            self._wait("node Ready", node_ready, READY_TIMEOUT_S, *self.procs)
            self._wait("the default ServiceAccount (kube-controller-manager)", default_sa, READY_TIMEOUT_S,
                       *self.procs)

    def _wait(self, what: str, check: Any, timeout: float, *procs: _Proc) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in procs:
                if not proc.running():
                    raise NodeError(f"{proc.name} exited while waiting for {what}:\n{self.log_tail(proc.name)}")
            try:
                if check():
                    return
            except Exception as exc:  # the API may not answer yet: report the last error
                last = repr(exc)
            time.sleep(0.5)
        tails = "\n".join(f"--- {p.name}\n{self.log_tail(p.name, 25)}" for p in procs)
        raise NodeError(f"{what}: not reached within {timeout:.0f}s ({last})\n{tails}")

    def _remove_containers(self) -> list[str]:
        """Kill and delete every container of the CRI namespace, so their shims exit (runc state cleaned)."""
        problems: list[str] = []
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 60
        remaining = list(tasks)
        while remaining and time.monotonic() < deadline:
            for task in list(remaining):
                # -f: also a task whose process is still exiting (SIGKILL is not instantaneous for runc's init).
                self.ctr("tasks", "delete", "-f", task, check=False)
            listed = set(self.ctr("tasks", "ls", "-q", check=False).stdout.split())
            remaining = [t for t in remaining if t in listed]
            if remaining:
                time.sleep(0.5)
        problems += [f"container task {task} could not be deleted" for task in remaining]
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)
        return problems

    def _kill_leftover_shims(self) -> list[str]:
        """Shims daemonize away from containerd: find ours by our socket path in their command line, by PID."""
        marker = str(self.containerd_sock).encode()
        killed = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(entry.name)
        return [f"killed leftover containerd shims {killed}"] if killed else []
