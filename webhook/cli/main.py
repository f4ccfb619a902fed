"""The `wi-webhook` command: `serve`, `mutate` and `check` (offline), `verify`, `certs generate`, `version`.

Every sub-command builds its configuration with the same code (`webhook.cli.config`) and mutates with the same core
(`webhook.core.mutation`), so what `mutate` prints is what `serve` would answer. Exit codes: 0 success, 1 a pod was
denied or a policy finding, 2 the command could not run (bad input, configuration or cluster; the message names the
file, flag or server and the fix). No input prints a Python traceback unless `--debug` is given: an unexpected error
is one line with exit code 2, because CI reads exit 1 as "policy violation".
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import jsonpatch
import orjson
import yaml
from pydantic import ValidationError

from webhook.cli import logs
from webhook.cli.arguments import build_parser
from webhook.cli.config import (
    ConfigError,
    ServeOptions,
    WebhookOptions,
    build_mutation_config,
    explain_validation_error,
)
from webhook.cli.errors import UsageError, one_line, require_stdin
from webhook.core.constants import MUTATE_PATH, NATIVE_SIDECAR_MIN_VERSION
from webhook.core.model import Denial, MutationConfig
from webhook.core.shape import read_pod
from webhook.policy.evaluate import admission_warnings, admit
from webhook.policy.file import PolicyFile
from webhook.policy.schema import PolicyError
from webhook.sources.kubeclient import api_client
from webhook.sources.manifests import ManifestError, load
from webhook.sources.serviceaccounts import ClusterServiceAccounts, ServiceAccountSource, StaticServiceAccounts

__all__ = ["UsageError", "main", "package_version", "parse_server_version"]


def package_version() -> str:
    try:
        return version("workload-identity-webhook")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def _options(model: type[WebhookOptions], args: argparse.Namespace) -> Any:
    values = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    if "status_annotation" in values:
        values["status_annotation"] = values["status_annotation"] == "true"
    try:
        return model(**values)
    except ValidationError as exc:
        raise UsageError(explain_validation_error(exc)) from None


def _config(options: WebhookOptions, native_sidecar: bool, require_tenant: bool = True) -> MutationConfig:
    try:
        return build_mutation_config(options, os.environ, native_sidecar=native_sidecar,
                                     require_tenant=require_tenant, webhook_version=package_version())
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _policy(options: WebhookOptions) -> PolicyFile:
    try:
        return PolicyFile(options.policy)
    except PolicyError as exc:
        raise UsageError(str(exc)) from None


def _static_source(paths: Sequence[str]) -> StaticServiceAccounts:
    from webhook.cli.check_workloads import CheckInputError, require_object_metadata

    require_stdin(paths, "--objects")
    try:
        manifests = load(paths)
        require_object_metadata(manifests)
        return StaticServiceAccounts.from_manifests(manifests)
    except (ManifestError, CheckInputError) as exc:
        raise UsageError(one_line(exc)) from None


def parse_server_version(git_version: str) -> tuple[int, int]:
    match = re.match(r"^v?(\d+)\.(\d+)", git_version)
    if not match:
        raise UsageError(f"cannot parse the API server version {git_version!r} for --native-sidecar=auto; "
                         "set --native-sidecar=true or false")
    return int(match.group(1)), int(match.group(2))


def _api_client(kubeconfig: str | None) -> Any:
    return api_client(kubeconfig, no_cluster_hint="--objects FILE to serve ServiceAccounts from manifests")


def run_serve(args: argparse.Namespace) -> int:
    from webhook.serving.handler import AdmissionHandler
    from webhook.serving.metrics import Metrics
    from webhook.serving.startup import exit_past_stuck_threads

    if args.version:
        print(package_version())
        return 0
    if args.metrics_backend.lower() != "prometheus":
        raise UsageError(f"--metrics-backend: {args.metrics_backend!r} is not supported; use prometheus")

    options: ServeOptions = _options(ServeOptions, args)
    logs.setup(options.log_level)
    _config(options, native_sidecar=False)  # fail fast on bad settings before touching the cluster
    policy = _policy(options)
    if options.reuse_port and options.workers > 1:
        # The hand-off (webhook/serving/handoff.py) runs in the process that owns /readyz and the webhook port; with
        # --workers the supervisor owns one and the workers the other, and nothing coordinates them yet.
        raise UsageError(f"--reuse-port cannot be combined with --workers {options.workers}: the hand-off to a "
                         "successor needs a single process; use --workers 1 with --reuse-port")
    if options.worker_index is None:  # workers share the supervisor's port (SO_REUSEPORT) and serve no health
        _check_listen_addresses(options)
    if options.workers > 1 and options.worker_index is None:
        from webhook.serving.workers import supervise

        if args.objects:
            _static_source(args.objects)  # report unreadable files once, before starting workers
        return asyncio.run(supervise(options, list(args.raw_argv)))
    metrics = Metrics()
    source: ServiceAccountSource
    rotator, probe = None, None
    if args.objects:
        source = _static_source(args.objects)
        native = options.native_sidecar == "true"
        accounts_from = f"files {', '.join(args.objects)}"
    else:
        api = _api_client(options.kubeconfig)
        accounts_from = f"the cluster at {api.configuration.host}"
        native = options.native_sidecar == "true"
        if options.native_sidecar == "auto":  # asked in serve(), retried: the API server may be down (issue 18)
            from kubernetes import client

            probe = lambda: parse_server_version(client.VersionApi(api).get_code(  # noqa: E731
                _request_timeout=5).git_version) >= NATIVE_SIDECAR_MIN_VERSION
        source = ClusterServiceAccounts(api, metrics, lookup_timeout=options.serviceaccount_lookup_timeout,
                                        client_factory=lambda: _api_client(options.kubeconfig))
        if not options.disable_cert_rotation and not options.worker_index:
            rotator = _rotator(api, options)  # with --workers, only worker 0 rotates
    if args.decision_cache_size is not None:
        logging.getLogger("webhook").warning("--decision-cache-size is deprecated and ignored")
    handler = AdmissionHandler(_config(options, native), source, metrics, policy)
    # Everything made so far (modules, clients, config) lives as long as the process: keep it out of the cyclic
    # garbage collector's full collections, which otherwise walk it again every thousand reviews or so.
    gc.freeze()
    run_event_loop(_serve_and_report(options, handler, rotator, accounts_from, probe), options.event_loop)
    exit_past_stuck_threads(0)
    return 0


def _check_listen_addresses(options: ServeOptions) -> None:
    """Name the flag whose address is taken, instead of an OSError from deep inside the server."""
    from webhook.cli.config import parse_addr
    from webhook.serving.startup import bind_error

    wanted = [("--health-addr", options.health_addr, parse_addr(options.health_addr)),
              ("--metrics-addr", options.metrics_addr, parse_addr(options.metrics_addr)),
              ("--port", str(options.port), (options.host, options.port))]
    for index, (flag, value, (host, port)) in enumerate(wanted):
        for other_flag, other_value, (other_host, other_port) in wanted[:index]:
            if port == other_port and port != 0 and (host == other_host or not host or not other_host):
                raise UsageError(f"{flag} {value}: the same port as {other_flag} {other_value}; give each its own")
        problem = bind_error(host, port, reuse_port=options.reuse_port)
        if problem is not None:
            raise UsageError(f"{flag} {value}: {problem}; stop the process using it or choose another address "
                             f"with {flag}")


async def _serve_and_report(options: ServeOptions, handler: Any, rotator: Any, accounts_from: str,
                            probe: Callable[[], bool] | None) -> None:
    """The server, with serving.startup's watcher beside it logging why it is not serving yet, then where it is
    (one line per process: with --workers only worker 0 reports)."""
    from webhook.serving import startup
    from webhook.serving.server import serve

    if options.worker_index:
        await serve(options, handler, rotator=rotator, native_sidecar_probe=probe)
        return
    listening = startup.Listening(options.host, options.port, MUTATE_PATH, options.webhook_cert_dir, accounts_from)

    def reasons() -> list[str]:
        rotation = None
        if rotator is not None and not rotator.done_once.is_set():
            rotation = rotator.last_error or "the first rotation is still running"
        return startup.not_ready_reasons(startup.cert_reason(options.webhook_cert_dir, options.port),
                                         handler.source.ready(), rotation)

    watcher = asyncio.ensure_future(startup.watch(listening, reasons))
    try:
        await serve(options, handler, rotator=rotator, native_sidecar_probe=probe)
    except RuntimeError as exc:  # the server gave up waiting; if the certificates are still missing, say which
        missing = startup.cert_reason(options.webhook_cert_dir, options.port)
        if missing is None:
            raise
        raise UsageError(f"{missing}; gave up: {exc}") from None
    finally:
        watcher.cancel()


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
    from webhook.certificates.generate import service_hosts
    from webhook.certificates.rotation import CertRotator, RotationSettings
    from webhook.cli.config import parse_duration

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
    require_stdin(args.filename, "-f")
    try:
        manifests = load(args.filename)
    except ManifestError as exc:
        raise UsageError(one_line(exc)) from None
    pods = [m for m in manifests if m.obj.get("kind") == "Pod"]
    if not pods:
        raise UsageError(f"no Pod found in {', '.join(args.filename)} (mutate renders Pods)")
    outputs: list[Any] = []
    denied = 0
    for manifest in pods:
        pod = manifest.obj
        metadata = pod.get("metadata")
        namespace = args.namespace or (metadata.get("namespace") if isinstance(metadata, dict) else None) or "default"
        ref = read_pod(pod, namespace)
        if isinstance(ref, Denial):
            raise UsageError(f"{manifest.source}: {ref.message}")
        decision = admit(pod, ref, source.lookup(ref.namespace, ref.service_account).sa, config, policy,
                         source.namespace_now(ref.namespace))
        result = decision.result
        for warning in admission_warnings(decision.findings):
            print(f"wi-webhook: {manifest.source}: pod {ref.name}: warning: {warning}", file=sys.stderr)
        if result.denial is not None:
            denied += 1
            print(f"wi-webhook: {manifest.source}: pod {ref.name} denied: {result.denial.message}", file=sys.stderr)
            continue
        outputs.append(result.patch if args.output == "patch" else jsonpatch.apply_patch(pod, result.patch))
    _print(outputs, args.output)
    return 1 if denied else 0


def run_check_command(args: argparse.Namespace) -> int:
    from webhook.cli.check import run_check_command as run

    options: WebhookOptions = _options(WebhookOptions, args)
    policy = _policy(options)
    if args.cluster:  # running pods are not mutated: no AZURE_TENANT_ID needed
        return run(args, None, policy, package_version())
    # AZURE_TENANT_ID is the webhook's setting, not the manifests': check runs without it (a developer's shell, a CI
    # job), and then judges only the tenants the ServiceAccounts name (policy/rules.py, WI003).
    config = _config(options, native_sidecar=options.native_sidecar == "true", require_tenant=False)
    return run(args, config, policy, package_version())


def run_verify_command(args: argparse.Namespace) -> int:
    from webhook.cli.verify import render, run_verify

    if bool(args.keyvault) != bool(args.secret):
        raise UsageError("--keyvault and --secret go together (the vault URL and the secret name to read)")
    if args.pod:
        from webhook.cli.verify_pod import parse_target, run_verify_pod

        target = parse_target(args.pod, args.namespace)
        report = run_verify_pod(api_client(args.kubeconfig), args.kubeconfig, target, args.scope, args.keyvault,
                                args.secret)
    else:
        if args.namespace or args.kubeconfig:
            raise UsageError("-n/--namespace and --kubeconfig go with --pod (verify without --pod runs inside the pod)")
        report = run_verify(os.environ, args.scope, args.keyvault, args.secret)
    sys.stdout.write(render(report, args.output))
    return report.exit_code()


def run_certs_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from webhook.certificates import generate as certs

    ca = certs.generate_ca()
    hosts = certs.service_hosts(args.service, args.namespace) + list(args.host)
    try:
        serving = certs.generate_serving(ca, hosts)
    except ValueError as exc:
        raise UsageError(f"--service/--namespace/--host: not a valid DNS name or IP: {exc}") from None
    try:
        certs.write_bundle(Path(args.out), ca, serving)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot write the certificates: {exc.strerror or exc}") from None
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
    """Run one command. Bad flags exit 2 through argparse (SystemExit, with the command's usage)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse(raw)
    args.raw_argv = raw
    try:
        return _dispatch(args)
    except UsageError as exc:
        print(f"wi-webhook: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an error nobody foresaw: one line (exit 2: the command could not run)
        if args.debug:
            raise
        print(f"wi-webhook: {args.command}: {_unforeseen(exc)}", file=sys.stderr)
        return 2


def _unforeseen(exc: Exception) -> str:
    """One line for an error no code path turned into a UsageError. The environment's failures (the API server
    unreachable, an OS error) are described as such; anything else is a bug to report."""
    from urllib3.exceptions import HTTPError

    if isinstance(exc, HTTPError):
        reason = one_line(getattr(exc, "reason", None) or exc)
        return (f"the Kubernetes API server is not reachable ({reason[:300]}); check --kubeconfig (or $KUBECONFIG) "
                "and that the cluster is running (--debug shows the traceback)")
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where} (--debug shows the traceback)"
    return (f"unexpected error: {type(exc).__name__}: {one_line(exc)[:500] or '(no message)'} (run again with "
            "--debug for the traceback, and please report it)")


def _dispatch(args: argparse.Namespace) -> int:
    commands = {"serve": run_serve, "certs": run_certs_generate, "check": run_check_command,
                "verify": run_verify_command, "mutate": run_mutate}
    if args.command == "version":
        print(package_version())
        return 0
    return commands[args.command](args)

