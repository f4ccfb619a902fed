"""`wi-webhook verify --pod`: diagnose a running pod's workload identity from wherever a kubeconfig reaches the
cluster (a laptop, a CI job after a deploy), without anything in the pod's image.

The checks, in order, each printed as pass/fail with the fix (cli/verify.py's report):
1. the pod: found (`NAMESPACE/NAME`, `-n NAMESPACE NAME`, or `deploy/NAME` as kubectl users type it);
2. injection: the token volume, its mount and the env vars, by either webhook (this one or the reference, any
   release: core/injected.py `injected_env`); if missing, why: no opt-in label, a ServiceAccount without client-id,
   no webhook configuration selecting the pod, or the pod predating the webhook's configuration;
3. identity: what the pod got against its ServiceAccount's annotations now (a stale pod needs a restart);
4. token: a token for the pod's ServiceAccount, minted with the TokenRequest API for the audience of the pod's
   projected volume and bound to the pod, with the issuer, subject and audience its federated credential must have;
5. the real token request with azure-identity at the pod's AZURE_AUTHORITY_HOST, and optionally a Key Vault read
   (cli/verify.py `exchange`, with its AADSTS advice).

A check the caller's permissions prevent is skipped naming the permission, and the rest still run. Exit codes:
0 a token was obtained and nothing failed; 1 a check failed; 2 the diagnosis could not run (no cluster, no such
pod, or a permission missing for a check that was needed).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from webhook.cli.errors import UsageError
from webhook.cli.verify import FIC_COMMAND, Report, decode_claims, exchange
from webhook.core.constants import (
    CLIENT_ID_ANNOTATION,
    DEFAULT_AUDIENCE,
    ENV_FEDERATED_TOKEN_FILE,
    MUTATE_PATH,
    SKIP_CONTAINERS_ANNOTATION,
    USE_LABEL,
)
from webhook.core.injected import identity_changes, injected_env, token_volumes
from webhook.sources.kubeclient import REQUEST_TIMEOUT, reaching
from webhook.sources.manifests import service_account_info

# kubectl's names for the workloads whose pods `--pod KIND/NAME` may name.
WORKLOADS = {
    **dict.fromkeys(("deploy", "deployment", "deployments"), "Deployment"),
    **dict.fromkeys(("sts", "statefulset", "statefulsets"), "StatefulSet"),
    **dict.fromkeys(("ds", "daemonset", "daemonsets"), "DaemonSet"),
    **dict.fromkeys(("rs", "replicaset", "replicasets"), "ReplicaSet"),
    **dict.fromkeys(("job", "jobs"), "Job"),
}
POD_KINDS = ("po", "pod", "pods")
WEBHOOK_NAME = "mutation.azure-workload-identity.io"  # the webhook's name in both charts
TOKEN_SECONDS = 600  # the minted token's lifetime: long enough to diagnose, the API server's minimum


@dataclass(frozen=True)
class Target:
    namespace: str
    kind: str  # "Pod" or a workload kind
    name: str


def parse_target(value: str, namespace: str) -> Target:
    """`NAME`, `NAMESPACE/NAME` or `KIND/NAME` (kubectl's `deploy/NAME`, `pod/NAME`), with `-n NAMESPACE`."""
    first, slash, rest = value.partition("/")
    if not slash:
        return Target(namespace or "default", "Pod", value)
    if not rest or "/" in rest:
        raise UsageError(f"--pod {value}: expected NAME, NAMESPACE/NAME or deploy/NAME")
    if first.lower() in POD_KINDS:
        return Target(namespace or "default", "Pod", rest)
    if first.lower() in WORKLOADS:
        return Target(namespace or "default", WORKLOADS[first.lower()], rest)
    if namespace and namespace != first:
        raise UsageError(f"--pod {value} names namespace {first!r} but -n says {namespace!r}; give one")
    return Target(first, "Pod", rest)


def run_verify_pod(api: Any, kubeconfig: str | None, target: Target, scope: str, keyvault: str | None,
                   secret: str | None, credential_factory: Any = None, keyvault_client_factory: Any = None) -> Report:
    """The checks above; UsageError when the pod cannot be found or read at all."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    report = Report()
    pod = _pod(api, core, kubeconfig, target)
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    namespace, name = metadata.get("namespace", target.namespace), metadata.get("name", "")
    sa_name = spec.get("serviceAccountName") or "default"
    report.add("pod", "pass", f"{namespace}/{name}, ServiceAccount {sa_name}, phase "
               f"{(pod.get('status') or {}).get('phase', 'unknown')}")
    account = _read(api, kubeconfig, f"read ServiceAccount {namespace}/{sa_name}",
                    lambda: core.read_namespaced_service_account(sa_name, namespace, _preload_content=False,
                                                                 _request_timeout=REQUEST_TIMEOUT))
    sa = service_account_info(account, namespace) if isinstance(account, dict) else None

    env = injected_env(pod)
    if env is None:
        reason, fix = _why_not_injected(api, kubeconfig, pod, sa)
        report.add("injection", "fail", reason, fix)
        return report
    mounted = [c.get("name", "") for c in _containers(spec) if _mounts_token(c, pod)]
    report.add("injection", "pass", f"token volume mounted in {', '.join(mounted)}; "
               + ", ".join(f"{key}={env.get(key)}" for key in sorted(env) if str(key).startswith("AZURE_")))

    if isinstance(account, Denied):
        report.add("identity", "skip", account.reason, account.fix)
        report.incomplete = True
    elif sa is None:
        report.add("identity", "fail", f"ServiceAccount {namespace}/{sa_name} no longer exists",
                   f"recreate it with its {CLIENT_ID_ANNOTATION} annotation, or fix the workload's "
                   "serviceAccountName")
        return report
    else:
        changed = identity_changes(env, sa)
        if changed:
            report.add("identity", "fail", f"ServiceAccount {namespace}/{sa_name} changed after the pod was "
                       f"injected: the pod has {', '.join(changed)}",
                       f"restart the workload (kubectl rollout restart -n {namespace} ...) so its pods get the "
                       "ServiceAccount's current identity")
        else:
            report.add("identity", "pass", f"the pod's identity is ServiceAccount {namespace}/{sa_name}'s")

    audience, seconds = _token_projection(pod)
    request: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": [audience], "expirationSeconds": seconds,
                             "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name,
                                                "uid": metadata.get("uid")}}}
    minted = _read(api, kubeconfig, f"create a token for ServiceAccount {namespace}/{sa_name}",
                   lambda: core.create_namespaced_service_account_token(
                       sa_name, namespace, request, _preload_content=False, _request_timeout=REQUEST_TIMEOUT),
                   verb="create", resource="serviceaccounts/token", namespace=namespace)
    if isinstance(minted, Denied):
        report.add("token", "skip", minted.reason, minted.fix)
        report.incomplete = True
        return report
    token = str(((minted or {}).get("status") or {}).get("token", ""))
    claims = decode_claims(token)
    issuer, subject = claims.get("iss", ""), claims.get("sub", "")
    report.add("token", "pass", f"minted for {subject} (audience {audience}, bound to the pod); its federated "
               f"credential needs issuer {issuer}, subject {subject}, audience {audience}: "
               + FIC_COMMAND.format(issuer=issuer, subject=subject, audience=audience))
    with tempfile.TemporaryDirectory(prefix="wi-verify-") as directory:
        token_file = Path(directory) / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        exchange(report, {**{k: str(v) for k, v in env.items() if v is not None},
                          ENV_FEDERATED_TOKEN_FILE: str(token_file)},
                 claims, scope, keyvault, secret, credential_factory, keyvault_client_factory)
    return report


@dataclass(frozen=True)
class Denied:
    """A read the caller's permissions refused: what was refused and the permission that grants it."""

    reason: str
    fix: str


def _read(api: Any, kubeconfig: str | None, action: str, call: Any, verb: str = "get", resource: str = "",
          namespace: str = "") -> dict[str, Any] | Denied | None:
    """The object, None when it does not exist, Denied when the caller may not (403)."""
    from kubernetes.client.exceptions import ApiException

    try:
        with reaching(api, kubeconfig, action):
            response = call()
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 403:
            what = resource or action.split()[1].lower() + "s"
            where = f" in namespace {namespace}" if namespace else ""
            return Denied(f"the caller may not {action} (HTTP 403)",
                          f"grant the kubeconfig's user `{verb}` on `{what}`{where}, e.g. kubectl create role "
                          f"wi-verify --verb={verb} --resource={what}{' -n ' + namespace if namespace else ''}")
        raise UsageError(f"{action}: {exc.status} {exc.reason}") from None
    data: dict[str, Any] = orjson.loads(response.data)
    return data


def _pod(api: Any, core: Any, kubeconfig: str | None, target: Target) -> dict[str, Any]:
    """The pod the target names (a workload's newest running pod); UsageError when there is none."""
    from kubernetes import client

    if target.kind == "Pod":
        pod = _read(api, kubeconfig, f"read pod {target.namespace}/{target.name}",
                    lambda: core.read_namespaced_pod(target.name, target.namespace, _preload_content=False,
                                                     _request_timeout=REQUEST_TIMEOUT))
        if pod is None:
            raise UsageError(f"--pod: pod {target.namespace}/{target.name} not found")
        if isinstance(pod, Denied):
            raise UsageError(f"--pod: {pod.reason}; {pod.fix}")
        return pod
    apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)
    read = {"Deployment": apps.read_namespaced_deployment, "StatefulSet": apps.read_namespaced_stateful_set,
            "DaemonSet": apps.read_namespaced_daemon_set, "ReplicaSet": apps.read_namespaced_replica_set,
            "Job": batch.read_namespaced_job}[target.kind]
    workload = _read(api, kubeconfig, f"read {target.kind} {target.namespace}/{target.name}",
                     lambda: read(target.name, target.namespace, _preload_content=False,
                                  _request_timeout=REQUEST_TIMEOUT))
    if workload is None or isinstance(workload, Denied):
        raise UsageError(f"--pod: {target.kind} {target.namespace}/{target.name} "
                         + ("not found" if workload is None else f": {workload.reason}; {workload.fix}"))
    selector = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    listed = _read(api, kubeconfig, f"list pods in {target.namespace}",
                   lambda: core.list_namespaced_pod(target.namespace, _preload_content=False,
                                                    label_selector=",".join(f"{k}={v}" for k, v in selector.items()),
                                                    _request_timeout=REQUEST_TIMEOUT))
    if isinstance(listed, Denied):
        raise UsageError(f"--pod: {listed.reason}; {listed.fix}")
    pods = (listed or {}).get("items") or []
    if not pods:
        raise UsageError(f"--pod: {target.kind} {target.namespace}/{target.name} has no pods")
    # A running pod if there is one, the newest first: the one a user would pick with `kubectl logs deploy/NAME`.
    pods.sort(key=lambda p: ((p.get("status") or {}).get("phase") == "Running",
                             (p.get("metadata") or {}).get("creationTimestamp") or ""), reverse=True)
    chosen: dict[str, Any] = pods[0]
    return chosen


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _mounts_token(container: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    names = {volume.get("name") for volume in token_volumes(pod)}
    return any(mount.get("name") in names for mount in container.get("volumeMounts") or [])


def _token_projection(pod: Mapping[str, Any]) -> tuple[str, int]:
    """The audience of the pod's projected token (what the kubelet asks for), and the minted token's lifetime."""
    for volume in token_volumes(pod):
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if token:
                return token.get("audience") or DEFAULT_AUDIENCE, TOKEN_SECONDS
    return DEFAULT_AUDIENCE, TOKEN_SECONDS


def _why_not_injected(api: Any, kubeconfig: str | None, pod: Mapping[str, Any], sa: Any) -> tuple[str, str]:
    """(what, fix) for a pod no webhook injected, the most likely cause first."""
    metadata = pod.get("metadata") or {}
    namespace, labels = metadata.get("namespace", ""), metadata.get("labels") or {}
    if labels.get(USE_LABEL) != "true":
        return (f"not injected: the pod has no {USE_LABEL}: \"true\" label",
                "put the label on the pod template's metadata.labels (a label on the Deployment or Job itself is "
                "not seen by the webhook), then roll the workload out again")
    skipped = (metadata.get("annotations") or {}).get(SKIP_CONTAINERS_ANNOTATION)
    if skipped:
        names = {name.strip() for name in skipped.split(";")}
        if all(c.get("name", "") in names for c in _containers(pod.get("spec") or {})):
            return (f"not injected: {SKIP_CONTAINERS_ANNOTATION} ({skipped!r}) skips every container",
                    f"remove at least one container from {SKIP_CONTAINERS_ANNOTATION}, then recreate the pod")
    if sa is not None and not sa.annotations.get(CLIENT_ID_ANNOTATION, "").strip():
        return (f"not injected, and its ServiceAccount {namespace}/{sa.name} has no {CLIENT_ID_ANNOTATION}",
                f"kubectl annotate serviceaccount -n {namespace} {sa.name} {CLIENT_ID_ANNOTATION}=<the managed "
                "identity's client id>, then recreate the pod")
    return _webhook_reason(api, kubeconfig, pod)


def _webhook_reason(api: Any, kubeconfig: str | None, pod: Mapping[str, Any]) -> tuple[str, str]:
    """What the cluster's webhook configurations say about a labelled pod that was not injected."""
    from kubernetes import client

    metadata = pod.get("metadata") or {}
    namespace = metadata.get("namespace", "")
    configs = _read(api, kubeconfig, "list mutatingwebhookconfigurations",
                    lambda: client.AdmissionregistrationV1Api(api).list_mutating_webhook_configuration(
                        _preload_content=False, _request_timeout=REQUEST_TIMEOUT), verb="list",
                    resource="mutatingwebhookconfigurations.admissionregistration.k8s.io")
    recreate = (f"recreate the pod (kubectl rollout restart -n {namespace} deploy/<name>, or delete it) now that the "
                "webhook is ready")
    if isinstance(configs, Denied):
        return ("not injected, though labelled and its ServiceAccount has a client id; the webhook configurations "
                f"could not be read: {configs.reason}", f"{configs.fix}; or: {recreate}")
    ours = [(config, hook) for config in (configs or {}).get("items") or [] for hook in config.get("webhooks") or []
            if hook.get("name") == WEBHOOK_NAME or _calls(hook, MUTATE_PATH)]
    if not ours:
        return ("not injected: no MutatingWebhookConfiguration in the cluster calls a workload identity webhook",
                "install the webhook (helm install workload-identity-webhook ...), then recreate the pod")
    namespace_labels = _namespace_labels(api, kubeconfig, namespace)
    selecting = [(config, hook) for config, hook in ours
                 if selects(hook.get("objectSelector"), metadata.get("labels") or {})
                 and (namespace_labels is None or selects(hook.get("namespaceSelector"), namespace_labels))]
    if not selecting:
        names = ", ".join(sorted({config["metadata"]["name"] for config, _ in ours}))
        return (f"not injected: the webhook configuration {names} does not select this pod (its objectSelector or "
                f"namespaceSelector excludes namespace {namespace} or the pod's labels)",
                "label the namespace or the pod so that the selectors match (helm get values for the release), "
                "then recreate the pod")
    created = str(metadata.get("creationTimestamp") or "")
    for config, _ in selecting:
        since = str(config["metadata"].get("creationTimestamp") or "")
        if created and since and _time(created) < _time(since):
            return (f"not injected: the pod was created at {created}, before the webhook configuration "
                    f"{config['metadata']['name']} (created {since})", recreate)
    return ("not injected: the pod was admitted without the webhook (it was unreachable and the configuration's "
            "failurePolicy is Ignore, or the pod was created before the webhook was ready)", recreate)


def _calls(hook: Mapping[str, Any], path: str) -> bool:
    config = hook.get("clientConfig") or {}
    return (config.get("service") or {}).get("path") == path or str(config.get("url", "")).endswith(path)


def _namespace_labels(api: Any, kubeconfig: str | None, namespace: str) -> dict[str, str] | None:
    from kubernetes import client

    found = _read(api, kubeconfig, f"read namespace {namespace}",
                  lambda: client.CoreV1Api(api).read_namespace(namespace, _preload_content=False,
                                                               _request_timeout=REQUEST_TIMEOUT))
    if not isinstance(found, dict):
        return None  # unknown: judge by the object selector alone
    labels: dict[str, str] = (found.get("metadata") or {}).get("labels") or {}
    return labels


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist); an
    empty or absent selector selects everything."""
    if not selector:
        return True
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
