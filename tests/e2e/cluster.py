"""A real kube-apiserver + etcd on 127.0.0.1 for end-to-end tests (no pytest import here).

    cluster = TestCluster.start(tmp_path)       # builds the binaries once (hack/test-apiserver/build.sh)
    api = kubernetes.client.CoreV1Api(cluster.api_client())
    ...
    cluster.stop_apiserver(); cluster.start_apiserver()   # same URL, same config, same etcd data
    cluster.stop()

What runs, and what does not:

* etcd (data in `<workdir>/etcd-data`) and kube-apiserver, both bound to 127.0.0.1 on free ports; their logs
  are `<workdir>/etcd.log` and `<workdir>/kube-apiserver.log`.
* No kube-controller-manager, scheduler or kubelet. Consequences:
  - the `default` ServiceAccount is NOT created in new namespaces, and the ServiceAccount admission plugin
    (left on, as in a real cluster) rejects pods whose ServiceAccount does not exist: create it yourself, e.g.
    with `create_namespace(name)` which also creates `default`;
  - pods are never scheduled and stay Pending; nothing garbage-collects, no token controllers run.
* Authentication: a static admin token (`--token-auth-file`, user `e2e-admin` in `system:masters`);
  authorization is RBAC. Anonymous requests are allowed (apiserver default) and the issuer's OIDC discovery
  documents (`/.well-known/openid-configuration`, `/openid/v1/jwks`) are made readable by
  `system:unauthenticated`, as the Kubernetes docs suggest for external token verifiers (fake_entra.py).
* Service-account tokens are signed with a fresh RSA key; the issuer is the apiserver's own URL
  `https://127.0.0.1:<port>` so the discovery document is served at the issuer, as Entra ID expects.
  `--api-audiences` lists the issuer and `api://AzureADTokenExchange`.
* Admission webhooks must be registered with `clientConfig.url` (https://127.0.0.1:<port>/...): a
  `clientConfig.service` reference would make the apiserver dial a ClusterIP that nothing serves here.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .tls import make_serving_cert, write_rsa_key

__all__ = ["BUILD_SCRIPT", "KUBE_VERSION", "ClusterError", "TestCluster", "ensure_binaries"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "test-apiserver" / "build.sh"
KUBE_VERSION = "v1.37.2"  # keep in step with hack/test-apiserver/build.sh
AZURE_TOKEN_AUDIENCE = "api://AzureADTokenExchange"
ADMIN_USER = "e2e-admin"

BUILD_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class ClusterError(RuntimeError):
    """The harness could not build or start etcd / kube-apiserver; the message has the relevant output."""


def _tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log, preceded by its last error lines (klog `E`/`F`, etcd JSON error)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    errors = [
        line
        for line in text[:-lines]
        if re.match(r"^[EF]\d{4} ", line) or '"level":"error"' in line or '"level":"fatal"' in line
    ][-10:]
    head = ["... error lines earlier in the log:", *errors, "... last lines:"] if errors else []
    return "\n".join([f"({path})", *head, *text[-lines:]])


def ensure_binaries(timeout: float = BUILD_TIMEOUT_S) -> Path:
    """Run build.sh (a no-op when the binaries are cached) and return the bin dir it printed last."""
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{BUILD_SCRIPT} timed out after {timeout:.0f}s:\n{exc.stdout!r}\n{exc.stderr!r}") from exc
    out_lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out_lines:
        raise ClusterError(
            f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    bin_dir = Path(out_lines[-1])
    for name in ("kube-apiserver", "etcd"):
        if not os.access(bin_dir / name, os.X_OK):
            raise ClusterError(f"{BUILD_SCRIPT} did not produce {bin_dir / name}:\n{proc.stderr}")
    return bin_dir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the child dies if this (main) thread dies


class _Proc:
    """One child process we started, with its log file; stopped only by its own PID."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n===== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
        self._log.flush()
        # PDEATHSIG is tied to the forking *thread*: only use it from the main thread.
        preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S, kill: bool = False) -> int | None:
        """SIGTERM (or SIGKILL at once if `kill`), SIGKILL after `timeout`; returns the exit code."""
        p = self.popen
        rc: int | None = None
        if p is not None:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                try:
                    p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    p.wait(timeout=10)
            rc = p.returncode
            self.popen = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc


class TestCluster:
    """etcd + kube-apiserver started by this process. Build with `TestCluster.start(workdir)`."""

    __test__ = False  # not a pytest test class despite the name
    HOST = "127.0.0.1"  # where etcd and the API server listen (tests/node/podnetwork.py: an address in its netns)
    EXTRA_IPS: tuple[str, ...] = ()  # more IP addresses the serving certificate names
    EXTRA_DNS_NAMES: tuple[str, ...] = ()

    def __init__(self, workdir: Path, bin_dir: Path) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = bin_dir
        self.host = self.HOST
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.url = f"https://{self.host}:{self.port}"
        self.etcd_url = f"http://{self.host}:{self.etcd_port}"
        self.issuer = self.url
        self.api_audiences = [self.issuer, AZURE_TOKEN_AUDIENCE]
        self.token = secrets.token_hex(24)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.version = ""
        self.startup_seconds = 0.0
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        serving = make_serving_cert(pki, "kube-apiserver", ips=(self.host, *self.EXTRA_IPS),
                                    dns_names=("localhost", *self.EXTRA_DNS_NAMES))
        self.ca_file = serving.ca_file
        self.serving_cert_file = serving.cert_file
        self.serving_key_file = serving.key_file
        self.sa_key_file = pki / "sa.key"
        self.sa_pub_file = pki / "sa.pub"
        write_rsa_key(self.sa_key_file, self.sa_pub_file)
        self.audit_log = self.workdir / "audit.log"
        self.audit_policy = self.workdir / "audit-policy.yaml"
        # Metadata level records webhook audit annotations (the policy's `audit` mode) for every request.
        self.audit_policy.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n")
        self.token_file = pki / "tokens.csv"
        self.token_file.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        self.token_file.chmod(0o600)
        self.etcd = _Proc("etcd", self._etcd_argv(), self.workdir / "etcd.log")
        self.apiserver = _Proc("kube-apiserver", self._apiserver_argv(), self.workdir / "kube-apiserver.log")
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        self._stopped = False
        self._write_kubeconfig()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, workdir: Path, bin_dir: Path | None = None) -> TestCluster:
        """Build the binaries if needed, start etcd and kube-apiserver, wait until /readyz is ok."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if bin_dir is None:
            bin_dir = ensure_binaries()
        cluster = cls(workdir, bin_dir)
        atexit.register(cluster.stop)
        t0 = time.monotonic()
        try:
            cluster._start_etcd()
            cluster.start_apiserver()
            cluster._allow_anonymous_oidc_discovery()
        except BaseException:
            cluster.stop()
            raise
        cluster.startup_seconds = time.monotonic() - t0
        return cluster

    def _start_etcd(self, timeout: float = READY_TIMEOUT_S) -> None:
        self.etcd.start()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.etcd.running():
                raise ClusterError(f"etcd exited during startup; log tail:\n{_tail(self.etcd.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
                    body = json.loads(resp.read())
                    if body.get("health") == "true":
                        return
                    last = str(body)
            except (OSError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise ClusterError(f"etcd not healthy after {timeout:.0f}s ({last}); log tail:\n{_tail(self.etcd.log_path)}")

    def start_apiserver(self, timeout: float = READY_TIMEOUT_S) -> None:
        """(Re)start kube-apiserver on the same port with the same flags, and wait for /readyz."""
        if self.apiserver.running():
            return
        self.apiserver.start()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.apiserver.running():
                raise ClusterError(f"kube-apiserver exited during startup; log tail:\n{_tail(self.apiserver.log_path)}")
            try:
                status, body = self._get("/readyz")
                if status == 200:
                    if not self.version:
                        _, ver = self._get("/version")
                        self.version = str(json.loads(ver)["gitVersion"])
                    return
                last = f"HTTP {status}: {body[-500:]!r}"
            except (OSError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise ClusterError(
            f"kube-apiserver not ready after {timeout:.0f}s ({last}); log tail:\n{_tail(self.apiserver.log_path)}"
        )

    def stop_apiserver(self, timeout: float = STOP_TIMEOUT_S, kill: bool = False) -> int | None:
        """Stop only kube-apiserver: SIGTERM (SIGKILL if `kill`), SIGKILL after `timeout` s. Exit code."""
        rc = self.apiserver.stop(timeout=timeout, kill=kill)
        self._wait_port_closed(self.port, timeout=10)
        return rc

    def stop(self) -> None:
        """Stop kube-apiserver then etcd (by the PIDs started here). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.apiserver.stop()
        finally:
            self.etcd.stop()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> TestCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` for the admin user, built from the kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """Create namespace `name` plus its `default` ServiceAccount (no controller-manager makes it)."""
        from kubernetes import client

        with self.api_client() as api_client:
            core = client.CoreV1Api(api_client)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
            core.create_namespaced_service_account(
                name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
            )

    def env(self) -> dict[str, str]:
        """Environment for a child process (e.g. the webhook) to reach this cluster."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    # ------------------------------------------------------------------ internals

    def _etcd_argv(self) -> list[str]:
        peer = f"http://{self.host}:{self.etcd_peer_port}"
        return [
            str(self.bin_dir / "etcd"),
            "--name=e2e",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=e2e={peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # test data only: much faster on slow disks
            "--quota-backend-bytes=1073741824",
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self.serving_cert_file}",
            f"--tls-private-key-file={self.serving_key_file}",
            f"--token-auth-file={self.token_file}",
            "--authorization-mode=RBAC",
            "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            "--allow-privileged=true",  # like every real cluster: the proxy-init container is privileged
            f"--audit-policy-file={self.audit_policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            f"--service-account-issuer={self.issuer}",
            f"--service-account-key-file={self.sa_pub_file}",
            f"--service-account-signing-key-file={self.sa_key_file}",
            f"--api-audiences={','.join(self.api_audiences)}",
            # The endpoint reconciler refuses a loopback advertise address; the `kubernetes` Service has
            # no endpoints then, which nothing here needs.
            "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.96.0.0/24",  # an allocation range only; nothing dials it
            "--profiling=false",
            "--v=1",
        ]

    def _write_kubeconfig(self) -> None:
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url, "certificate-authority-data": ca_data}}],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": ADMIN_USER}}],
            "current-context": "e2e",
        }
        self.kubeconfig.write_text(json.dumps(cfg, indent=2))  # JSON is valid kubeconfig YAML
        self.kubeconfig.chmod(0o600)

    def _get(self, path: str, timeout: float = 5.0, auth: bool = True) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.url}{path}")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def _send(self, method: str, path: str, body: dict[str, Any], timeout: float = 10.0) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def _allow_anonymous_oidc_discovery(self) -> None:
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "e2e:service-account-issuer-discovery-unauthenticated"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:service-account-issuer-discovery",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}],
        }
        status, body = self._send("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        if status not in (201, 409):
            raise ClusterError(f"cannot create the OIDC discovery ClusterRoleBinding: HTTP {status} {body!r}")

    @staticmethod
    def _wait_port_closed(port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return
            time.sleep(0.1)

    def __repr__(self) -> str:
        return f"TestCluster(url={self.url!r}, etcd_url={self.etcd_url!r}, version={self.version!r})"


def _main() -> None:  # python -m tests.e2e.cluster [workdir]: start, print, wait for Ctrl-C
    import sys
    import tempfile

    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="wi-e2e-"))
    cluster = TestCluster.start(workdir)
    print(f"{cluster!r} started in {cluster.startup_seconds:.1f}s")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
        if len(sys.argv) <= 1:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    _main()
