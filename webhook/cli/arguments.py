"""The `wi-webhook` command line: every sub-command's flags and help, in one place.

`Parser.parse` reports an unknown or bad flag with the usage of the sub-command it was given to (argparse alone
reports unknown flags with the top-level usage, which does not list them).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

DESCRIPTION = """Azure Workload Identity mutating admission webhook (a drop-in for the reference v1.6.0 webhook).

Exit codes: 0 success; 1 a pod denied or a policy finding (check, mutate) or a failed check (verify);
2 the command could not run: bad flag, file or configuration, or an unreachable cluster (the message names it)."""
EPILOG = "Run `wi-webhook COMMAND --help` for a command's flags."
LOG_LEVEL_HELP = ('log level: "" (the default: warnings and errors, plus the startup lines of serve), error, '
                  "warning, info, debug, trace or all (trace and all log as much as debug); also passed to the "
                  "injected proxy sidecar")
DEBUG_HELP = "on an unexpected error, print the Python traceback (for a bug report)"


class Parser(argparse.ArgumentParser):
    """argparse with a map of sub-command parsers, so that errors are reported with the right usage."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        args, extra = self.parse_known_args(argv)
        if extra:
            name = getattr(args, "command", None) or ""
            if name == "certs" and getattr(args, "certs_command", None):
                name = "certs generate"
            target = self.commands.get(name, self)
            target.error(f"unrecognized arguments: {' '.join(extra)}")
        return args


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audience", default="", help="token audience (default api://AzureADTokenExchange)")
    parser.add_argument("--custom-token-endpoint-annotation-suffix", default="", metavar="SUFFIX",
                        help="custom token endpoint (identity binding): pods annotated "
                             "azure.workload.identity/use-SUFFIX get a second token for "
                             "--custom-token-endpoint-audience")
    parser.add_argument("--custom-token-endpoint-audience", default="", metavar="AUDIENCE",
                        help="the audience of that second token (set both or neither)")
    parser.add_argument("--log-level", default="", metavar="LEVEL", help=LOG_LEVEL_HELP)
    parser.add_argument("--native-sidecar", default="auto", help="auto|true|false: proxy as a native sidecar "
                        "(auto: API server >= 1.32; offline: classic)")
    parser.add_argument("--policy", default=None, metavar="FILE", help="policy file (YAML); see README 'Policy'")
    parser.add_argument("--status-annotation", default="true", choices=("true", "false"),
                        help="add the wi-webhook/status annotation to injected pods")


def build_parser() -> Parser:
    parser = Parser(prog="wi-webhook", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the admission webhook (HTTPS)")
    _common_flags(serve)
    serve.add_argument("--port", type=int, default=9443, help="HTTPS port of the webhook (default: %(default)s)")
    serve.add_argument("--host", default="", help="listen address of the webhook port (default: all)")
    serve.add_argument("--health-addr", default=":9440", metavar="[HOST]:PORT",
                       help="/healthz and /readyz, plain HTTP (default: %(default)s)")
    serve.add_argument("--metrics-addr", default=":8095", metavar="[HOST]:PORT",
                       help="/metrics (Prometheus), plain HTTP (default: %(default)s)")
    serve.add_argument("--webhook-cert-dir", default="/certs", metavar="DIR",
                       help="directory with tls.crt and tls.key, reloaded when they change (default: %(default)s)")
    serve.add_argument("--tls-min-version", default="1.3", help="1.0, 1.1, 1.2 or 1.3 (default: %(default)s)")
    serve.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or in-cluster)")
    serve.add_argument("--objects", action="append", default=[], metavar="FILE_OR_DIR",
                       help="serve ServiceAccounts from manifests instead of a cluster (repeatable)")
    serve.add_argument("--serviceaccount-lookup-timeout", type=float, default=2.0,
                       help="seconds a cache miss may spend on a live GET before the pod is denied")
    serve.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024,
                       help="largest AdmissionReview accepted (default: %(default)s, 8 MiB)")
    serve.add_argument("--metrics-backend", default="prometheus",
                       help="accepted for compatibility with the reference; prometheus is the only backend")
    serve.add_argument("--version", action="store_true", help="print the version and exit (as the reference)")
    serve.add_argument("--event-loop", default="auto", help="auto (uvloop when installed), uvloop or asyncio")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the webhook port (SO_REUSEPORT), each with its own cache")
    serve.add_argument("--reuse-port", action="store_true",
                       help="bind the webhook, health and metrics ports with SO_REUSEPORT so that a successor "
                            "process (same user, e.g. the next hostNetwork pod on the node) can start beside this "
                            "one; on SIGTERM, keep serving until the successor's /readyz answers (at most "
                            "--shutdown-delay), then stop (needs --workers 1)")
    serve.add_argument("--decision-cache-size", type=int, default=None,
                       help="deprecated and ignored: the remembered-decision cache was removed (accepted so that "
                            "existing extraArgs keep working)")
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-state-dir", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--shutdown-delay", type=float, default=0.0,
                       help="seconds to keep serving after SIGTERM with /readyz failing (endpoint propagation); with "
                            "--reuse-port, the longest wait for a successor to be ready")
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

    check = commands.add_parser("check", help="run the webhook's mutation and policy over manifests (for CI)",
                                description="Run the webhook's mutation and policy over manifests (or, with "
                                            "--cluster, a cluster's running pods). Exit codes: 0 no enforce finding; "
                                            "1 an enforce finding or a denial (or a warning with "
                                            "--warnings-as-errors); 2 the check could not run (bad flag, file, "
                                            "policy or kubeconfig, unreachable cluster, nothing to check).")
    _common_flags(check)
    check.add_argument("-f", "--filename", action="append", default=[], metavar="PATH",
                       help="manifests: file, directory (recursive) or - for stdin (repeatable)")
    check.add_argument("paths", nargs="*", metavar="PATH",
                       help="more manifests, as -f (a pre-commit hook passes the staged files so)")
    check.add_argument("--skip-non-manifests", action="store_true",
                       help="leave out files that are not YAML/JSON and documents that are not Kubernetes objects "
                            "(no apiVersion and kind: workflows, Chart.yaml), naming them on stderr, instead of "
                            "exit 2 (for a pre-commit hook, or a scan of a whole repository)")
    check.add_argument("--cluster", action="store_true",
                       help="check the running pods of the --kubeconfig cluster instead of manifests: opted-in pods "
                            "that were not injected (WI013) or run with a stale identity (WI012)")
    check.add_argument("--objects", action="append", default=[], metavar="FILE_OR_DIR",
                       help="more ServiceAccounts/Namespaces (repeatable)")
    check.add_argument("--kubeconfig", default=None,
                       help="also look up ServiceAccounts and Namespaces missing from the input in this cluster")
    check.add_argument("-n", "--namespace", default="", help="namespace for objects without one (default: default)")
    check.add_argument("-o", "--output", choices=("text", "json", "sarif", "junit"), default="text",
                       help="text: one `file:LINE kind/namespace/name container rule mode message` line per finding "
                            "(default); json, sarif (code scanning) or junit (test reports)")
    check.add_argument("--show-mutated", action="store_true", help="also print each workload after injection")
    check.add_argument("--warnings-as-errors", action="store_true", help="exit 1 on warn findings too")
    check.add_argument("--allow-empty", action="store_true",
                       help="exit 0 when the input holds no workload and no ServiceAccount (default: exit 2, as a "
                            "mistyped path or an empty `helm template` output should not pass CI)")

    verify = commands.add_parser(
        "verify", help="diagnose a pod's workload identity: --pod from outside it (kubeconfig), or inside the pod",
        description="Diagnose a pod's workload identity. With --pod, from anywhere a kubeconfig reaches the cluster: "
                    "the pod's injection, its identity against its ServiceAccount, a token minted for it, and a real "
                    "token request. Without --pod, inside the pod (its env and token file). Exit codes: 0 a token was "
                    "obtained; 1 a check failed; 2 the diagnosis could not run (no cluster or pod, or a permission "
                    "missing).")
    verify.add_argument("--pod", default=None, metavar="POD",
                        help="NAME, NAMESPACE/NAME or deploy/NAME (sts/, ds/, rs/, job/): diagnose it from outside")
    verify.add_argument("-n", "--namespace", default="", help="the pod's namespace with --pod (default: default)")
    verify.add_argument("--kubeconfig", default=None,
                        help="with --pod: kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    verify.add_argument("--scope", default="https://management.azure.com/.default")
    verify.add_argument("--keyvault", default=None, metavar="URL", help="also read a secret from this vault")
    verify.add_argument("--secret", default=None, metavar="NAME", help="the secret to read with --keyvault")
    verify.add_argument("-o", "--output", choices=("text", "json"), default="text")

    certs_parser = commands.add_parser("certs", help="certificate helpers (certs generate)")
    certs = certs_parser.add_subparsers(dest="certs_command", required=True, title="commands", metavar="COMMAND")
    generate = certs.add_parser("generate", help="write a CA and a serving certificate for the webhook Service")
    generate.add_argument("--service", default="azure-wi-webhook-webhook-service",
                          help="the webhook's Service name; the certificate is issued for <service>.<namespace>.svc "
                               "(default: %(default)s)")
    generate.add_argument("--namespace", default="azure-workload-identity-system",
                          help="the namespace of that Service (default: %(default)s)")
    generate.add_argument("--host", action="append", default=[], help="extra DNS name or IP (repeatable)")
    generate.add_argument("--out", required=True, help="directory for ca.crt, ca.key, tls.crt, tls.key")

    version_parser = commands.add_parser("version", help="print the version")
    for name, sub in (*commands.choices.items(), ("certs generate", generate)):
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        parser.commands[name] = sub
    del certs_parser, version_parser
    return parser


