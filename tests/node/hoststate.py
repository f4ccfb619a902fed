"""What a kubelet + containerd change on the host outside their work dir, recorded before the cluster starts and
undone after it stops (tests/node/realnode.py), so a test session leaves the machine as it found it.

The changes (measured on this VM kind, /work/shared/reference/real-node.md §5):
* sysctls the kubelet sets (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...) and the one the harness
  sets (net.ipv4.tcp_migrate_req=1, HARNESS_SYSCTLS): restored to the recorded values;
* iptables chains KUBE-* (KUBE-FIREWALL jumped to from INPUT/OUTPUT, KUBE-KUBELET-CANARY, ...): the jumps and the
  chains are deleted, nothing else is touched;
* mounts under the work dir (the kubelet's self bind-mount of its root dir, tmpfs volumes, containerd's rootfs
  overlays): unmounted, deepest first;
* `kubepods` cgroups in every cgroup v1 hierarchy (and v2 `unified`): removed, leaves first, if created here;
* the CNI bridge (only a pod without hostNetwork creates it: the proxy sidecar test's) and its network namespaces
  in /run/netns, and net.ipv4.ip_forward (the bridge plugin's gateway mode): link deleted, namespaces unmounted;
* paths created even with custom roots (/var/lib/kubelet, /var/log/containers, /var/lib/cni, /run/containerd, ...):
  removed if they did not exist before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
           "net.ipv4.tcp_migrate_req")
# Set by the harness itself (not the kubelet), after the baseline is recorded: the chart README asks hostNetwork
# users for it, and the webhook's hand-off on an upgrade relies on it (webhook/serving/handoff.py).
HARNESS_SYSCTLS = {"net.ipv4.tcp_migrate_req": "1"}
HARD_CODED_PATHS = (Path("/var/lib/kubelet"), Path("/var/log/containers"), Path("/var/log/pods"),
                    Path("/var/lib/cni"), Path("/run/containerd"), Path("/usr/libexec/kubernetes"),
                    Path("/etc/kubernetes"), Path("/var/run/kubernetes"))
NETNS_DIR = Path("/run/netns")
BRIDGE = "winode0"  # the CNI bridge of tests/node/realnode.py's config
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _cgroup_dirs() -> list[Path]:
    """`kubepods*` directories at the top of every cgroup hierarchy."""
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for hierarchy in CGROUP_ROOT.iterdir():
            with contextlib.suppress(OSError):
                found += [p for p in hierarchy.iterdir() if p.is_dir() and p.name.startswith("kubepods")]
    return found


def _links() -> list[str]:
    """Network interfaces of the host (a bridge and veths appear when a bridge pod starts)."""
    with contextlib.suppress(OSError):
        return sorted(p.name for p in Path("/sys/class/net").iterdir())
    return []


def _netns() -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(p.name for p in NETNS_DIR.iterdir())
    return []


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()).rstrip("/") + "/"
    points: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == prefix.rstrip("/"):
            points.append(point)
    return points


def _iptables_rules(tool: str, table: str) -> list[str]:
    proc = subprocess.run([tool, "-w", "5", "-t", table, "-S"], capture_output=True, text=True, timeout=30,
                          check=False)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


@dataclass
class HostState:
    """The host as found before the cluster started; `restore()` undoes what the cluster changed."""

    sysctls: dict[str, str] = field(default_factory=dict)
    existing_paths: set[Path] = field(default_factory=set)
    existing_cgroups: set[Path] = field(default_factory=set)
    existing_links: set[str] = field(default_factory=set)
    existing_netns: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def record(cls) -> HostState:
        state = cls()
        for name in SYSCTLS:
            with contextlib.suppress(OSError):
                state.sysctls[name] = _sysctl_path(name).read_text().strip()
        state.existing_paths = {p for p in HARD_CODED_PATHS if p.exists() or p.is_symlink()}
        state.existing_cgroups = set(_cgroup_dirs())
        state.existing_links = set(_links())
        state.existing_netns = set(_netns())
        return state

    def save(self, path: Path, workdir: Path) -> None:
        """Persist the baseline (and the work dir) so the next start can clean up if this process dies."""
        path.write_text(json.dumps({
            "workdir": str(workdir), "sysctls": self.sysctls,
            "existing_paths": sorted(map(str, self.existing_paths)),
            "existing_cgroups": sorted(map(str, self.existing_cgroups)),
            "existing_links": sorted(self.existing_links), "existing_netns": sorted(self.existing_netns)}))

    @classmethod
    def load(cls, path: Path) -> tuple[HostState, Path]:
        data = json.loads(path.read_text())
        state = cls(sysctls=dict(data["sysctls"]), existing_paths={Path(p) for p in data["existing_paths"]},
                    existing_cgroups={Path(p) for p in data["existing_cgroups"]},
                    existing_links=set(data["existing_links"]), existing_netns=set(data["existing_netns"]))
        return state, Path(data["workdir"])

    def kill_leftovers(self, workdir: Path) -> list[str]:
        """After a test process died without stopping its cluster: SIGKILL, by PID, every process in a kubepods
        cgroup created by that cluster (the containers) and every process whose command line names its work dir
        (kubelet, containerd and its shims, control plane)."""
        pids: set[int] = set()
        for top in _cgroup_dirs():
            if top in self.existing_cgroups:
                continue
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids |= {int(line) for line in procs.read_text().split()}
        marker = (str(workdir) + "/").encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if marker in (entry / "cmdline").read_bytes():
                        pids.add(int(entry.name))
        pids.discard(os.getpid())
        for pid in sorted(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"killed {len(pids)} processes left by a previous run in {workdir}"] if pids else []

    def apply_harness_sysctls(self) -> None:
        """Set HARNESS_SYSCTLS (call after record(): restore() puts the recorded values back)."""
        for name, value in HARNESS_SYSCTLS.items():
            path = _sysctl_path(name)
            if name not in self.sysctls:
                raise OSError(f"sysctl {name} does not exist on this kernel (Linux >= 5.14 needed)")
            if path.read_text().strip() != value:
                path.write_text(value + "\n")

    def restore(self, workdir: Path) -> list[str]:
        """Undo everything listed in the module docstring; returns what could not be undone (empty: all)."""
        self.problems = []
        self._unmount(workdir)
        self._remove_cgroups()
        self._remove_network()
        self._restore_sysctls()
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool):
                self._remove_kube_chains(tool)
        for path in HARD_CODED_PATHS:
            if path not in self.existing_paths and (path.exists() or path.is_symlink()):
                self._unmount(path)
                try:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                except OSError as exc:
                    self.problems.append(f"cannot remove {path}: {exc}")
        return self.problems

    def _unmount(self, root: Path) -> None:
        if not root.exists():
            return
        for point in sorted(_mounts_under(root), key=lambda p: p.count("/"), reverse=True):
            proc = subprocess.run(["umount", point], capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0:
                lazy = subprocess.run(["umount", "-l", point], capture_output=True, text=True, timeout=30,
                                      check=False)
                if lazy.returncode != 0:
                    self.problems.append(f"cannot unmount {point}: {proc.stderr.strip()}")

    def _remove_network(self) -> None:
        for name in _netns():  # containerd names them cni-<uuid>; podman's and others' are left alone
            if name.startswith("cni-") and name not in self.existing_netns:
                self._unmount(NETNS_DIR / name)
                subprocess.run(["umount", str(NETNS_DIR / name)], capture_output=True, timeout=30, check=False)
                with contextlib.suppress(OSError):
                    (NETNS_DIR / name).unlink()
        for name in _links():  # only our bridge: other sessions' interfaces are not ours to delete
            if name == BRIDGE and name not in self.existing_links:
                proc = subprocess.run(["ip", "link", "delete", name], capture_output=True, text=True, timeout=30,
                                      check=False)
                if proc.returncode != 0 and name in _links():
                    self.problems.append(f"cannot delete link {name}: {proc.stderr.strip()}")

    def _remove_cgroups(self) -> None:
        for top in _cgroup_dirs():
            if top in self.existing_cgroups:
                continue
            # Leaves first: a cgroup directory is removed with rmdir once it has no children (and no tasks).
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
                try:
                    os.rmdir(dirpath)
                except OSError as exc:
                    self.problems.append(f"cannot remove cgroup {dirpath}: {exc}")
                    break

    def _restore_sysctls(self) -> None:
        for name, value in self.sysctls.items():
            path = _sysctl_path(name)
            try:
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")
            except OSError as exc:
                self.problems.append(f"cannot restore sysctl {name}={value}: {exc}")

    def _remove_kube_chains(self, tool: str) -> None:
        for table in ("filter", "nat", "mangle"):
            rules = _iptables_rules(tool, table)
            kube_chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
            for rule in rules:  # jumps from the built-in (or other) chains into KUBE-* chains
                words = shlex.split(rule)
                if words[0] == "-A" and not words[1].startswith("KUBE-") and "-j" in words \
                        and words[words.index("-j") + 1].startswith("KUBE-"):
                    self._iptables(tool, table, ["-D", *words[1:]])
            for chain in kube_chains:
                self._iptables(tool, table, ["-F", chain])
            for chain in kube_chains:
                self._iptables(tool, table, ["-X", chain])

    def _iptables(self, tool: str, table: str, args: list[str]) -> None:
        proc = subprocess.run([tool, "-w", "5", "-t", table, *args], capture_output=True, text=True, timeout=30,
                              check=False)
        if proc.returncode != 0:
            self.problems.append(f"{tool} -t {table} {' '.join(args)}: {proc.stderr.strip()}")
