"""`wi-webhook check`'s shell: read the manifests (or list a cluster's pods), look up what the input does not
contain in the cluster, run webhook.cli.check_workloads and print the report.

In CI the exit code is the whole interface, so every way the check itself cannot run is a UsageError (exit 2),
never a finding (exit 1) and never a traceback: a missing or broken kubeconfig, an unreachable API server, and
input with nothing to check. Decision: "nothing to check" means no workload and no ServiceAccount in the input
(a mistyped path, an empty directory or an empty `helm template`); `--allow-empty` accepts it. Input with only
ServiceAccounts is checked as such. `check --cluster` with no opted-in pod is a valid answer and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
import yaml

from webhook.cli.check_workloads import Report
from webhook.cli.errors import UsageError, one_line, require_stdin
from webhook.core.model import MutationConfig
from webhook.policy.file import PolicyFile
from webhook.sources.kubeclient import REQUEST_TIMEOUT, api_client, reaching
from webhook.sources.manifests import ManifestError, load
from webhook.sources.serviceaccounts import StaticServiceAccounts


def run_check_command(args: argparse.Namespace, config: MutationConfig | None, policy: PolicyFile,
                      version: str) -> int:
    """Run the check and print the report; `config` is None for `--cluster` (running pods are not mutated)."""
    from webhook.cli.check_output import render_json, render_junit, render_sarif, render_text

    report: Report
    if args.cluster:
        report = _check_cluster(args, policy)
    else:
        if not (args.filename or args.paths) or config is None:
            raise UsageError("check needs -f PATH (manifests) or --cluster --kubeconfig FILE")
        report = _check_manifests(args, config, policy)
    if args.output == "json":
        sys.stdout.write(render_json(report))
    elif args.output == "sarif":
        sys.stdout.write(render_sarif(report, version))
    elif args.output == "junit":
        sys.stdout.write(render_junit(report, args.warnings_as_errors))
    else:
        sys.stdout.write(render_text(report))
        if report.mutated:
            sys.stdout.write("---\n" + yaml.safe_dump_all(report.mutated, sort_keys=False))
    return report.exit_code(args.warnings_as_errors)


def _check_cluster(args: argparse.Namespace, policy: PolicyFile) -> Report:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from webhook.cli.check_workloads import check_running_pods

    if not args.kubeconfig:
        raise UsageError("--cluster needs --kubeconfig FILE (the cluster whose running pods to check)")
    api = api_client(args.kubeconfig)
    core: Any = client.CoreV1Api(api)  # raw responses (_preload_content=False)
    try:
        with reaching(api, args.kubeconfig, "list pods"):
            if args.namespace:
                raw = core.list_namespaced_pod(args.namespace, _preload_content=False,
                                               _request_timeout=REQUEST_TIMEOUT)
            else:
                raw = core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        raise UsageError(f"--kubeconfig {args.kubeconfig}: cannot list pods: {exc.status} {exc.reason}; the "
                         "kubeconfig's user needs list on pods (and get on serviceaccounts)") from None
    find_sa, find_namespace = _with_cluster(StaticServiceAccounts([]), args.kubeconfig, api)
    return check_running_pods(orjson.loads(raw.data).get("items") or [], lambda ns, name: find_sa(ns, name).sa,
                              policy.current, find_namespace)


def _check_manifests(args: argparse.Namespace, config: MutationConfig, policy: PolicyFile) -> Report:
    from webhook.cli.check_workloads import CheckInputError, require_object_metadata, run_check

    namespace = args.namespace or "default"
    paths = [*args.filename, *args.paths]
    require_stdin(paths, "-f")
    require_stdin(args.objects, "--objects")
    skipped: list[str] | None = [] if args.skip_non_manifests else None
    try:
        manifests = load(paths, skipped)
        every = [*manifests, *load(args.objects)]
        require_object_metadata(every)
        known = StaticServiceAccounts.from_manifests(every, namespace)
    except (ManifestError, CheckInputError) as exc:
        raise UsageError(one_line(exc)) from None
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"wi-webhook: check: skipped what is not a Kubernetes manifest: {shown}", file=sys.stderr)
    find_sa, find_namespace = known.lookup, known.namespace_now
    searched = ["the input"] + [f"--objects {path}" for path in args.objects]
    if args.kubeconfig:
        api = api_client(args.kubeconfig)
        find_sa, find_namespace = _with_cluster(known, args.kubeconfig, api)
        searched.append(f"the cluster at {api.configuration.host}")
    try:
        report = run_check(manifests, config, policy.current, lambda ns, name: find_sa(ns, name).sa,
                           find_namespace, namespace, show_mutated=args.show_mutated,
                           searched=", ".join(searched))
    except CheckInputError as exc:
        raise UsageError(str(exc)) from None
    if not report.checked and not args.allow_empty:
        raise UsageError(f"nothing to check in {', '.join(paths)}: no workload (Pod, Deployment, Job, ...) "
                         "and no ServiceAccount found; check the -f paths (a mistyped glob or an empty `helm "
                         "template` output), or pass --allow-empty if that is expected")
    return report


def _with_cluster(known: StaticServiceAccounts, kubeconfig: str, api: Any) -> tuple[Any, Any]:
    """Look-ups that fall back to the cluster for objects the input does not contain (synchronous GETs)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from webhook.sources.manifests import service_account_info
    from webhook.sources.serviceaccounts import Lookup, namespace_info

    core: Any = client.CoreV1Api(api)  # raw responses (_preload_content=False)

    def find_sa(namespace: str, name: str) -> Lookup:
        found = known.lookup(namespace, name)
        if found.sa is not None:
            return found
        try:
            with reaching(api, kubeconfig, f"read ServiceAccount {namespace}/{name}"):
                raw = core.read_namespaced_service_account(name, namespace, _preload_content=False,
                                                           _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return Lookup(None, "missing")
            raise UsageError(f"--kubeconfig {kubeconfig}: cannot read ServiceAccount {namespace}/{name}: "
                             f"{exc.status} {exc.reason}; the kubeconfig's user needs get on serviceaccounts") from None
        sa = service_account_info(orjson.loads(raw.data), namespace)
        known.add(sa)
        return Lookup(sa, "live")

    def find_namespace(name: str) -> Any:
        found = known.namespace_now(name)
        if found is not None:
            return found
        try:
            with reaching(api, kubeconfig, f"read Namespace {name}"):
                raw = core.read_namespace(name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException:
            return None
        return namespace_info(orjson.loads(raw.data))

    return find_sa, find_namespace
