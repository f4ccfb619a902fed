"""The `wi-webhook` command: `serve`, `mutate` (offline rendering) and `version`.

Every sub-command builds its configuration with the same code (`webhook.config`) and mutates with the same core
(`webhook.mutation`), so what `mutate` prints is what `serve` would answer. Exit codes: 0 success, 1 a pod was
denied, 2 bad input or configuration (the message names the file or setting).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Coroutine, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import jsonpatch
import orjson
import yaml
from pydantic import ValidationError

from webhook import logs
from webhook.check import Report as CheckReport
from webhook.config import (
    ConfigError,
    MutationConfig,
    ServeOptions,
    WebhookOptions,
    build_mutation_config,
    explain_validation_error,
)
from webhook.constants import NATIVE_SIDECAR_MIN_VERSION
from webhook.manifests import ManifestError, load
from webhook.mutation import pod_ref
from webhook.policy import PolicyError, admit
from webhook.policyfile import PolicyFile
from webhook.serviceaccounts import ClusterServiceAccounts, ServiceAccountSource, StaticServiceAccounts


class UsageError(Exception):
    """Bad input or configuration: printed as `wi-webhook: <message>` with exit code 2."""


def package_version() -> str:
    try:
        return version("workload-identity-webhook")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audience", default="", help="token audience (default api://AzureADTokenExchange)")
    parser.add_argument("--custom-token-endpoint-annotation-suffix", default="")
    parser.add_argument("--custom-token-endpoint-audience", default="")
    parser.add_argument("--log-level", default="", help='"" (warnings), info, debug, trace or all')
    parser.add_argument("--native-sidecar", default="auto", help="auto|true|false: proxy as a native sidecar "
                        "(auto: API server >= 1.32; offline: classic)")
    parser.add_argument("--policy", default=None, metavar="FILE", help="policy file (YAML); see README 'Policy'")
    parser.add_argument("--status-annotation", default="true", choices=("true", "false"),
                        help="add the wi-webhook/status annotation to injected pods")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wi-webhook", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the admission webhook (HTTPS)")
    _common_flags(serve)
    serve.add_argument("--port", type=int, default=9443)
    serve.add_argument("--host", default="", help="listen address of the webhook port (default: all)")
    serve.add_argument("--health-addr", default=":9440")
    serve.add_argument("--metrics-addr", default=":8095")
    serve.add_argument("--webhook-cert-dir", default="/certs")
    serve.add_argument("--tls-min-version", default="1.3")
    serve.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or in-cluster)")
    serve.add_argument("--objects", action="append", default=[], metavar="FILE_OR_DIR",
                       help="serve ServiceAccounts from manifests instead of a cluster (repeatable)")
    serve.add_argument("--serviceaccount-lookup-timeout", type=float, default=2.0,
                       help="seconds a cache miss may spend on a live GET before the pod is denied")
    serve.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024)
    serve.add_argument("--metrics-backend", default="prometheus",
                       help="accepted for compatibility with the reference; prometheus is the only backend")
    serve.add_argument("--version", action="store_true", help="print the version and exit (as the reference)")
    serve.add_argument("--event-loop", default="auto", help="auto (uvloop when installed), uvloop or asyncio")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the webhook port (SO_REUSEPORT), each with its own cache")
    serve.add_argument("--decision-cache-size", type=int, default=512,
                       help="identical pods (a ReplicaSet scale-up) remembered per worker with their decision; "
                            "0 turns this off")
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-state-dir", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--shutdown-delay", type=float, default=0.0,
                       help="seconds to keep serving after SIGTERM with /readyz failing (endpoint propagation)")
    serve.add_argument("--shutdown-timeout", type=float, default=25.0,
                       help="seconds to finish in-flight reviews after SIGTERM")
    serve.add_argument("--cert-check-interval", type=float, default=2.0,
                       help="seconds between checks of tls.crt/tls.key for changes")
    rotation = serve.add_argument_group("self-managed certificates (in-cluster; on unless --disable-cert-rotation)")
    rotation.add_argument("--disable-cert-rotation", action="store_true",
                          help="use the certificates in --webhook-cert-dir as they are (cert-manager, own Secret)")
    rotation.add_argument("--cert-secret-name", default="azure-wi-webhook-server-cert",
                          help="Secret in $POD_NAMESPACE holding ca.crt/ca.key/tls.crt/tls.key")
    rotation.add_argument("--webhook-config-name", default="azure-wi-webhook-mutating-webhook-configuration",
                          help="MutatingWebhookConfiguration whose caBundle is kept current")
    rotation.add_argument("--validating-webhook-config-name", default="",
                          help="also keep this ValidatingWebhookConfiguration's caBundle current (ServiceAccount "
                               "validator)")
    rotation.add_argument("--service-name", default="azure-wi-webhook-webhook-service",
                          help="Service the serving certificate is issued for (<svc>.<ns>.svc)")
    rotation.add_argument("--cert-check-rotation-interval", default="12h", help="how often to check expiry")
    rotation.add_argument("--cert-renew-before", default="2160h",
                          help="renew when the certificate would expire within this duration (90 days)")
    rotation.add_argument("--cert-ca-settle-delay", default="10s",
                          help="keep a new CA in the caBundle this long before serving a certificate it signed "
                               "(the API server applies caBundle changes with a delay)")
    rotation.add_argument("--cert-host", action="append", default=[],
                          help="extra DNS name or IP for the serving certificate (repeatable)")

    mutate = commands.add_parser("mutate", help="print what the webhook would do to pods, offline")
    _common_flags(mutate)
    mutate.add_argument("-f", "--filename", action="append", required=True, metavar="POD_FILE",
                        help="pod manifest(s): file, directory or - for stdin (repeatable)")
    mutate.add_argument("--objects", action="append", default=[], metavar="SA_FILE",
                        help="ServiceAccount manifest(s) (repeatable)")
    mutate.add_argument("-n", "--namespace", default="", help="request namespace (default: the pod's, else default)")
    mutate.add_argument("-o", "--output", choices=("yaml", "json", "patch"), default="yaml")

    check = commands.add_parser("check", help="run the webhook's mutation and policy over manifests (for CI)")
    _common_flags(check)
    check.add_argument("-f", "--filename", action="append", default=[], metavar="PATH",
                       help="manifests: file, directory (recursive) or - for stdin (repeatable)")
    check.add_argument("--cluster", action="store_true",
                       help="check the running pods of the --kubeconfig cluster instead of manifests: opted-in pods "
                            "that were not injected (WI013) or run with a stale identity (WI012)")
    check.add_argument("--objects", action="append", default=[], metavar="FILE_OR_DIR",
                       help="more ServiceAccounts/Namespaces (repeatable)")
    check.add_argument("--kubeconfig", default=None,
                       help="also look up ServiceAccounts and Namespaces missing from the input in this cluster")
    check.add_argument("-n", "--namespace", default="", help="namespace for objects without one (default: default)")
    check.add_argument("-o", "--output", choices=("text", "json", "sarif", "junit"), default="text")
    check.add_argument("--show-mutated", action="store_true", help="also print each workload after injection")
    check.add_argument("--warnings-as-errors", action="store_true", help="exit 1 on warn findings too")

    verify = commands.add_parser("verify", help="diagnose this pod's workload identity (run inside the pod)")
    verify.add_argument("--scope", default="https://management.azure.com/.default")
    verify.add_argument("--keyvault", default=None, metavar="URL", help="also read a secret from this vault")
    verify.add_argument("--secret", default=None, metavar="NAME", help="the secret to read with --keyvault")
    verify.add_argument("-o", "--output", choices=("text", "json"), default="text")

    certs = commands.add_parser("certs", help="certificate helpers").add_subparsers(dest="certs_command",
                                                                                      required=True)
    generate = certs.add_parser("generate", help="write a CA and a serving certificate for the webhook Service")
    generate.add_argument("--service", default="azure-wi-webhook-webhook-service")
    generate.add_argument("--namespace", default="azure-workload-identity-system")
    generate.add_argument("--host", action="append", default=[], help="extra DNS name or IP (repeatable)")
    generate.add_argument("--out", required=True, help="directory for ca.crt, ca.key, tls.crt, tls.key")

    commands.add_parser("version", help="print the version")
    return parser


def _options(model: type[WebhookOptions], args: argparse.Namespace) -> Any:
    values = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    if "status_annotation" in values:
        values["status_annotation"] = values["status_annotation"] == "true"
    try:
        return model(**values)
    except ValidationError as exc:
        raise UsageError(explain_validation_error(exc)) from None


def _config(options: WebhookOptions, native_sidecar: bool) -> MutationConfig:
    try:
        return build_mutation_config(options, os.environ, native_sidecar=native_sidecar,
                                     webhook_version=package_version())
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _policy(options: WebhookOptions) -> PolicyFile:
    try:
        return PolicyFile(options.policy)
    except PolicyError as exc:
        raise UsageError(str(exc)) from None


def _static_source(paths: Sequence[str]) -> StaticServiceAccounts:
    try:
        return StaticServiceAccounts.from_manifests(load(paths))
    except ManifestError as exc:
        raise UsageError(str(exc)) from None


def parse_server_version(git_version: str) -> tuple[int, int]:
    match = re.match(r"^v?(\d+)\.(\d+)", git_version)
    if not match:
        raise UsageError(f"cannot parse the API server version {git_version!r} for --native-sidecar=auto; "
                         "set --native-sidecar=true or false")
    return int(match.group(1)), int(match.group(2))


def _api_client(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def run_serve(args: argparse.Namespace) -> int:
    from webhook.decisions import DecisionCache
    from webhook.handler import AdmissionHandler
    from webhook.metrics import Metrics
    from webhook.server import serve
    from webhook.startup import exit_past_stuck_threads

    if args.version:
        print(package_version())
        return 0
    if args.metrics_backend.lower() != "prometheus":
        raise UsageError(f"--metrics-backend: {args.metrics_backend!r} is not supported; use prometheus")

    options: ServeOptions = _options(ServeOptions, args)
    logs.setup(options.log_level)
    _config(options, native_sidecar=False)  # fail fast on bad settings before touching the cluster
    policy = _policy(options)
    if options.workers > 1 and options.worker_index is None:
        from webhook.workers import supervise

        if args.objects:
            _static_source(args.objects)  # report unreadable files once, before starting workers
        return asyncio.run(supervise(options, list(args.raw_argv)))
    metrics = Metrics()
    source: ServiceAccountSource
    rotator, probe = None, None
    if args.objects:
        source = _static_source(args.objects)
        native = options.native_sidecar == "true"
    else:
        api = _api_client(options.kubeconfig)
        native = options.native_sidecar == "true"
        if options.native_sidecar == "auto":  # asked in serve(), retried: the API server may be down (issue 18)
            from kubernetes import client

            probe = lambda: parse_server_version(client.VersionApi(api).get_code(  # noqa: E731
                _request_timeout=5).git_version) >= NATIVE_SIDECAR_MIN_VERSION
        source = ClusterServiceAccounts(api, metrics, lookup_timeout=options.serviceaccount_lookup_timeout,
                                        client_factory=lambda: _api_client(options.kubeconfig))
        if not options.disable_cert_rotation and not options.worker_index:
            rotator = _rotator(api, options)  # with --workers, only worker 0 rotates
    handler = AdmissionHandler(_config(options, native), source, metrics, policy,
                               DecisionCache(max_entries=options.decision_cache_size))
    run_event_loop(serve(options, handler, rotator=rotator, native_sidecar_probe=probe), options.event_loop)
    exit_past_stuck_threads(0)
    return 0


def run_event_loop(main_coroutine: Coroutine[Any, Any, None], choice: str) -> None:
    """Run on uvloop when it is installed (faster TLS and transports) unless `--event-loop asyncio`."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise UsageError("--event-loop uvloop: the uvloop package is not installed") from None
        else:
            uvloop.run(main_coroutine)
            return
    asyncio.run(main_coroutine)


def _rotator(api: Any, options: ServeOptions) -> Any:
    from webhook.certs import service_hosts
    from webhook.rotation import CertRotator, RotationSettings, parse_duration

    namespace = os.environ.get("POD_NAMESPACE") or "azure-workload-identity-system"
    return CertRotator(api, RotationSettings(
        namespace=namespace, secret_name=options.cert_secret_name, webhook_config_name=options.webhook_config_name,
        validating_config_name=options.validating_webhook_config_name,
        hosts=service_hosts(options.service_name, namespace) + list(options.cert_host),
        renew_before=parse_duration(options.cert_renew_before),
        check_interval=parse_duration(options.cert_check_rotation_interval),
        ca_settle_delay=parse_duration(options.cert_ca_settle_delay)))


def run_mutate(args: argparse.Namespace) -> int:
    options: WebhookOptions = _options(WebhookOptions, args)
    config = _config(options, native_sidecar=options.native_sidecar == "true")
    policy = _policy(options).current
    source = _static_source(args.objects)
    try:
        manifests = load(args.filename)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    pods = [m for m in manifests if m.obj.get("kind") == "Pod"]
    if not pods:
        raise UsageError(f"no Pod found in {', '.join(args.filename)} (mutate renders Pods)")
    outputs: list[Any] = []
    denied = 0
    for manifest in pods:
        pod = manifest.obj
        metadata = pod.get("metadata")
        namespace = args.namespace or (metadata.get("namespace") if isinstance(metadata, dict) else None) or "default"
        try:
            ref = pod_ref(pod, namespace)
        except ValueError as exc:
            raise UsageError(f"{manifest.source}: {exc}") from None
        decision = admit(pod, namespace, source.lookup(ref.namespace, ref.service_account).sa, config, policy,
                         source.namespace_now(ref.namespace))
        result = decision.result
        for warning in decision.warnings:
            print(f"wi-webhook: {manifest.source}: pod {ref.name}: warning: {warning}", file=sys.stderr)
        if result.denial is not None:
            denied += 1
            print(f"wi-webhook: {manifest.source}: pod {ref.name} denied: {result.denial.message}", file=sys.stderr)
            continue
        outputs.append(result.patch if args.output == "patch" else jsonpatch.apply_patch(pod, result.patch))
    _print(outputs, args.output)
    return 1 if denied else 0


def run_check_command(args: argparse.Namespace) -> int:
    from webhook.check import render_json, render_junit, render_sarif, render_text

    options: WebhookOptions = _options(WebhookOptions, args)
    report: CheckReport
    if args.cluster:
        report = _check_cluster(args)
    else:
        if not args.filename:
            raise UsageError("check needs -f PATH (manifests) or --cluster --kubeconfig FILE")
        report = _check_manifests(args, options)
    if args.output == "json":
        sys.stdout.write(render_json(report))
    elif args.output == "sarif":
        sys.stdout.write(render_sarif(report, package_version()))
    elif args.output == "junit":
        sys.stdout.write(render_junit(report, args.warnings_as_errors))
    else:
        sys.stdout.write(render_text(report))
        if report.mutated:
            sys.stdout.write("---\n" + yaml.safe_dump_all(report.mutated, sort_keys=False))
    return report.exit_code(args.warnings_as_errors)


def _check_cluster(args: argparse.Namespace) -> CheckReport:
    from kubernetes.client.exceptions import ApiException

    from webhook.check import check_running_pods

    if not args.kubeconfig:
        raise UsageError("--cluster needs --kubeconfig FILE (the cluster whose running pods to check)")
    from kubernetes import client

    core: Any = client.CoreV1Api(_api_client(args.kubeconfig))  # raw responses (_preload_content=False)
    try:
        if args.namespace:
            raw = core.list_namespaced_pod(args.namespace, _preload_content=False)
        else:
            raw = core.list_pod_for_all_namespaces(_preload_content=False)
    except ApiException as exc:
        raise UsageError(f"--cluster: cannot list pods: {exc.status} {exc.reason}") from None
    find_sa, _ = _with_cluster(StaticServiceAccounts([]), args.kubeconfig)
    return check_running_pods(orjson.loads(raw.data).get("items") or [], lambda ns, name: find_sa(ns, name).sa)


def _check_manifests(args: argparse.Namespace, options: WebhookOptions) -> CheckReport:
    from webhook.check import CheckInputError, run_check

    config = _config(options, native_sidecar=options.native_sidecar == "true")
    policy = _policy(options).current
    namespace = args.namespace or "default"
    try:
        manifests = load(args.filename)
        known = StaticServiceAccounts.from_manifests([*manifests, *load(args.objects)], namespace)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    find_sa, find_namespace = known.lookup, known.namespace_now
    if args.kubeconfig:
        find_sa, find_namespace = _with_cluster(known, args.kubeconfig)
    try:
        return run_check(manifests, config, policy, lambda ns, name: find_sa(ns, name).sa, find_namespace,
                         namespace, show_mutated=args.show_mutated)
    except CheckInputError as exc:
        raise UsageError(str(exc)) from None


def _with_cluster(known: StaticServiceAccounts, kubeconfig: str) -> tuple[Any, Any]:
    """Look-ups that fall back to the cluster for objects the input does not contain (synchronous GETs)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from webhook.manifests import service_account_info
    from webhook.serviceaccounts import Lookup, namespace_info

    core: Any = client.CoreV1Api(_api_client(kubeconfig))  # raw responses (_preload_content=False)

    def find_sa(namespace: str, name: str) -> Lookup:
        found = known.lookup(namespace, name)
        if found.sa is not None:
            return found
        try:
            raw = core.read_namespaced_service_account(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return Lookup(None, "missing")
            raise UsageError(f"--kubeconfig: cannot read ServiceAccount {namespace}/{name}: {exc.reason}") from None
        sa = service_account_info(orjson.loads(raw.data), namespace)
        known.add(sa)
        return Lookup(sa, "live")

    def find_namespace(name: str) -> Any:
        found = known.namespace_now(name)
        if found is not None:
            return found
        try:
            return namespace_info(orjson.loads(core.read_namespace(name, _preload_content=False).data))
        except ApiException:
            return None

    return find_sa, find_namespace


def run_verify_command(args: argparse.Namespace) -> int:
    from webhook.verify import render, run_verify

    if bool(args.keyvault) != bool(args.secret):
        raise UsageError("--keyvault and --secret go together (the vault URL and the secret name to read)")
    report = run_verify(os.environ, args.scope, args.keyvault, args.secret)
    sys.stdout.write(render(report, args.output))
    return 0 if report.ok else 1


def run_certs_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from webhook import certs

    ca = certs.generate_ca()
    hosts = certs.service_hosts(args.service, args.namespace) + list(args.host)
    certs.write_bundle(Path(args.out), ca, certs.generate_serving(ca, hosts))
    print(f"wrote ca.crt, ca.key, tls.crt, tls.key to {args.out} for {hosts[0]}")
    return 0


def _print(outputs: list[Any], output: str) -> None:
    if output == "yaml":
        if outputs:
            sys.stdout.write(yaml.safe_dump_all(outputs, sort_keys=False))
    elif output == "patch":
        for patch in outputs:
            sys.stdout.write(orjson.dumps(patch).decode() + "\n")
    elif len(outputs) == 1:
        sys.stdout.write(orjson.dumps(outputs[0], option=orjson.OPT_INDENT_2).decode() + "\n")
    elif outputs:
        listing = {"apiVersion": "v1", "kind": "List", "items": outputs}
        sys.stdout.write(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    args.raw_argv = raw
    try:
        if args.command == "version":
            print(package_version())
            return 0
        if args.command == "serve":
            return run_serve(args)
        if args.command == "certs":
            return run_certs_generate(args)
        if args.command == "check":
            return run_check_command(args)
        if args.command == "verify":
            return run_verify_command(args)
        return run_mutate(args)
    except UsageError as exc:
        print(f"wi-webhook: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
