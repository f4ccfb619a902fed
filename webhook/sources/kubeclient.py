"""The CLI's Kubernetes client: built from --kubeconfig, $KUBECONFIG or the in-cluster environment, with every
way that can fail (missing or broken file, not in a cluster, API server unreachable) turned into a UsageError
that names the file or server and the fix, instead of the client library's traceback.

Decision: calls made by the CLI itself (`check`, the API server version for `--native-sidecar=auto`) get a short
timeout (REQUEST_TIMEOUT) and no urllib3 retries: a CI job should learn in seconds that its cluster is unreachable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from webhook.cli.errors import UsageError

REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds, for the CLI's own one-off calls


def _describe_source(kubeconfig: str | None) -> str:
    if kubeconfig:
        return f"--kubeconfig {kubeconfig}"
    return f"$KUBECONFIG ({os.environ['KUBECONFIG']})" if os.environ.get("KUBECONFIG") else "in-cluster config"


def api_client(kubeconfig: str | None, *, no_cluster_hint: str = "") -> Any:
    """A kubernetes ApiClient; `no_cluster_hint` is added when there is no kubeconfig and no in-cluster config."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        where = _describe_source(kubeconfig)
        if not any(os.path.isfile(os.path.expanduser(part)) for part in path.split(os.pathsep) if part):
            raise UsageError(f"{where}: no such file; pass the path of a kubeconfig file (kubectl config view "
                             "--raw > FILE)")
        try:
            return config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise UsageError(f"{where}: not a usable kubeconfig: {exc}; check its current-context, clusters "
                             "and users (kubectl --kubeconfig FILE config view)") from None
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # unreadable, bad YAML, wrong shapes
            raise UsageError(f"{where}: cannot read the kubeconfig: {exc}") from None
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException as exc:
        hint = f", or {no_cluster_hint}" if no_cluster_hint else ""
        raise UsageError(f"no Kubernetes cluster: not running inside one ({exc}) and neither --kubeconfig nor "
                         f"$KUBECONFIG is set; pass --kubeconfig FILE{hint}") from None
    return client.ApiClient(configuration)


@contextlib.contextmanager
def reaching(api: Any, kubeconfig: str | None, action: str) -> Iterator[None]:
    """Turn "cannot connect" errors of the calls inside into a UsageError naming the server and the kubeconfig."""
    from urllib3.exceptions import HTTPError

    try:
        yield
    except HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        server = getattr(getattr(api, "configuration", None), "host", "?")
        raise UsageError(f"{_describe_source(kubeconfig)}: cannot {action}: the API server {server} is not "
                         f"reachable ({_short(reason)}); check that the cluster is running and that the "
                         "kubeconfig's server address is right") from None


def _short(reason: object) -> str:
    """urllib3's reasons repeat the connection object's repr; keep what went wrong ("[Errno 111] Connection
    refused", "timed out")."""
    text = str(reason)
    for marker in ("Failed to establish a new connection: ", ">: ", "): "):
        if marker in text:
            return text.split(marker, 1)[1]
    return text
