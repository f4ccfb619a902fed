"""The node's configuration files: containerd's (CRI), the CNI bridge's and the kubelet's, with the settings this VM
kind needs (/work/shared/reference/real-node.md): all bound to 127.0.0.1, everything under the work dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.node.hoststate import BRIDGE


def kubelet_config(port: int, healthz_port: int, containerd_sock: Path, workdir: Path) -> dict[str, Any]:
    """cgroupfs on cgroup v1 (`failCgroupV1: false`), swap tolerated, serving on 127.0.0.1 only. The API server's
    logs/exec requests are accepted anonymously there (no kubelet client certificate to manage on a test node).
    Eviction and image GC thresholds are low so a busy shared disk never evicts the tests' pods or images."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": "127.0.0.1", "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_sock}",
        "volumePluginDir": str(workdir / "volume-plugins"),
        "resolvConf": "/etc/resolv.conf", "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "syncFrequency": "5s", "fileCheckFrequency": "5s", "nodeStatusUpdateFrequency": "5s",
    }


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """A bridge network: the node is not Ready without one. Only a pod without hostNetwork uses it."""
    return {"cniVersion": "1.0.0", "name": "wi-node",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]],
                                  "dataDir": str(ipam_dir)}},
                        {"type": "loopback"}]}


CONTAINERD_CONFIG = """version = 2
root = "{base}/root"
state = "{base}/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # No CAP_SYS_RESOURCE on this VM kind: runc cannot lower oom_score_adj (a sandbox asks for -998).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
"""
