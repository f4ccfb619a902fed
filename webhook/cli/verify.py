"""`wi-webhook verify`: diagnose a pod's workload identity from inside the pod, with azure-identity.

Runs the checks in order and prints each as pass/fail with the fix: the env vars WorkloadIdentityCredential
needs; the token file (exists, readable by this user); the token's claims (decoded without verification: issuer,
subject, audience, expiry); a real token acquisition with `WorkloadIdentityCredential`; optionally a Key Vault
secret read. Entra ID errors are mapped to the classic mistakes (no matching federated credential, wrong client id,
wrong tenant, clock skew, unreachable authority, missing role assignment). Exit 0 only when a token was obtained (and
the optional Key Vault probe passed).
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from webhook.core.constants import (
    DEFAULT_AUDIENCE,
    ENV_AUTHORITY_HOST,
    ENV_CLIENT_ID,
    ENV_FEDERATED_TOKEN_FILE,
    ENV_TENANT_ID,
)

DEFAULT_SCOPE = "https://management.azure.com/.default"
# What WorkloadIdentityCredential needs: without any of these the token exchange cannot even be tried. (Other names
# the webhook may inject, such as the custom token endpoint's, are optional.)
REQUIRED_ENV = (ENV_CLIENT_ID, ENV_TENANT_ID, ENV_FEDERATED_TOKEN_FILE, ENV_AUTHORITY_HOST)
FIC_COMMAND = ("az identity federated-credential create --name <name> --identity-name <identity> "
               "--resource-group <resource-group> --issuer {issuer} --subject {subject} --audience {audience}")


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skip
    detail: str = ""
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    token_obtained: bool = False
    incomplete: bool = False  # a check was skipped: the caller may not do what it needs (verify --pod)

    @property
    def ok(self) -> bool:
        return self.token_obtained and all(c.status != "fail" for c in self.checks)

    def exit_code(self) -> int:
        """0 a token was obtained and nothing failed; 1 a check failed; 2 a check could not run."""
        if self.ok:
            return 0
        return 2 if self.incomplete and all(c.status != "fail" for c in self.checks) else 1

    def add(self, name: str, status: str, detail: str = "", fix: str = "") -> Check:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check


def decode_claims(token: str) -> dict[str, Any]:
    """The JWT payload without signature verification (diagnostics only)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError("the token is not a JWT (expected three dot-separated parts)")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims = json.loads(base64.urlsafe_b64decode(payload))
    if not isinstance(claims, dict):
        raise ValueError("the token payload is not a JSON object")
    return claims


_AADSTS = re.compile(r"AADSTS(\d+)")


def advice_for(error_text: str, claims: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, str]:
    """(diagnosis, fix) for an Entra ID error text, by its AADSTS code."""
    code = _AADSTS.search(error_text)
    issuer, subject = claims.get("iss", "<issuer>"), claims.get("sub", "<subject>")
    audience = claims.get("aud")
    audience = (audience[0] if isinstance(audience, list) and audience else audience) or DEFAULT_AUDIENCE
    client, tenant = env.get("AZURE_CLIENT_ID", "<client-id>"), env.get("AZURE_TENANT_ID", "<tenant-id>")
    if code is None:
        if any(w in error_text.lower() for w in ("connection", "timed out", "name resolution", "unreachable",
                                                 "ssl", "certificate verify")):
            return ("the authority host could not be reached",
                    f"check AZURE_AUTHORITY_HOST ({env.get('AZURE_AUTHORITY_HOST', '')}), DNS, egress NetworkPolicies "
                    "and proxies for login.microsoftonline.com (or your cloud's authority)")
        return "token request failed", "read the error above; run with -o json for the full text"
    number = code.group(1)
    if number == "70021":
        return ("no federated identity credential matches this token (AADSTS70021)",
                f"create one on the managed identity with exactly issuer {issuer} and subject {subject}: "
                + FIC_COMMAND.format(issuer=issuer, subject=subject, audience=audience))
    if number == "700016":
        return (f"application {client} was not found in tenant {tenant} (AADSTS700016)",
                "set the ServiceAccount annotation azure.workload.identity/client-id to the managed identity's "
                "client id (az identity show -n <identity> -g <resource-group> --query clientId), then recreate "
                "the pod")
    if number == "90002":
        return (f"tenant {tenant} was not found (AADSTS90002)",
                "fix azure.workload.identity/tenant-id on the ServiceAccount or the webhook's AZURE_TENANT_ID "
                "(az account show --query tenantId)")
    if number == "700024":
        return ("the token is expired or not yet valid for Entra ID (AADSTS700024: clock skew)",
                "check the node's clock (NTP) and that the kubelet refreshes the projected token; a token file "
                "copied out of the pod goes stale")
    if number == "50166":
        return ("Entra ID could not read this cluster's OIDC issuer (AADSTS50166)",
                f"make the issuer {issuer} publicly reachable (on AKS: --enable-oidc-issuer) and check the "
                "federated credential's issuer URL")
    return (f"Entra ID refused the token (AADSTS{number})",
            f"look up AADSTS{number} at https://login.microsoftonline.com/error?code={number}")


def run_verify(env: Mapping[str, str], scope: str = DEFAULT_SCOPE, keyvault: str | None = None,
               secret: str | None = None, credential_factory: Any = None,
               keyvault_client_factory: Any = None) -> Report:
    """Run the checks; the factories are seams for tests (the defaults build the real azure-identity and
    azure-keyvault-secrets clients)."""
    report = Report()
    missing = [name for name in REQUIRED_ENV if not env.get(name)]
    if missing:
        report.add("environment", "fail", f"missing: {', '.join(missing)}",
                   "label the pod azure.workload.identity/use=\"true\" (on the pod template, not the Deployment or "
                   "Job), annotate its ServiceAccount with azure.workload.identity/client-id, and recreate the pod")
        return report
    report.add("environment", "pass", ", ".join(f"{n}={env[n]}" for n in REQUIRED_ENV))

    path = env["AZURE_FEDERATED_TOKEN_FILE"]
    if not os.path.exists(path):
        report.add("token file", "fail", f"{path} does not exist",
                   "the projected token volume is not mounted in this container: is it listed in "
                   "azure.workload.identity/skip-containers? was the pod created before the webhook ran?")
        return report
    if not os.access(path, os.R_OK):
        report.add("token file", "fail", f"{path} is not readable by uid {os.getuid()}",
                   "a non-root container needs spec.securityContext.fsGroup (e.g. 65534) or runAsUser matching the "
                   "file's owner so the kubelet makes the projected token readable")
        return report
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read()
        claims = decode_claims(token)
    except (OSError, ValueError) as exc:
        report.add("token file", "fail", f"{path}: {exc}", "recreate the pod so the kubelet projects a new token")
        return report
    report.add("token file", "pass", f"{path} readable")
    exchange(report, env, claims, scope, keyvault, secret, credential_factory, keyvault_client_factory)
    return report


def exchange(report: Report, env: Mapping[str, str], claims: Mapping[str, Any], scope: str, keyvault: str | None,
             secret: str | None, credential_factory: Any = None, keyvault_client_factory: Any = None) -> None:
    """The checks on a token's claims, the real token request with WorkloadIdentityCredential (env's client,
    tenant, authority and AZURE_FEDERATED_TOKEN_FILE), and the optional Key Vault read; shared by `verify` in a pod
    and `verify --pod` from outside it."""
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    left = int(claims.get("exp", 0) - time.time())
    detail = (f"issuer {claims.get('iss')}, subject {claims.get('sub')}, audience {', '.join(map(str, audiences))}, "
              f"expires in {left}s")
    if left <= 0:
        report.add("token claims", "fail", detail, "the token expired: the kubelet refreshes it; check the node")
    elif not any(audiences):
        report.add("token claims", "fail", detail, "the token has no audience: check the webhook's --audience")
    else:
        report.add("token claims", "pass", detail)

    try:
        credential = (credential_factory or _credential)(env)
        access = credential.get_token(scope)
    except Exception as exc:  # azure-identity raises ClientAuthenticationError and transport errors
        diagnosis, fix = advice_for(str(exc), claims, env)
        report.add("token acquisition", "fail", f"{diagnosis}: {str(exc).strip()[:600]}", fix)
        return
    report.token_obtained = True
    report.add("token acquisition", "pass", f"access token for {scope}, expires in "
               f"{int(access.expires_on - time.time())}s")
    if keyvault and secret:
        _probe_keyvault(report, credential, keyvault, secret, env, keyvault_client_factory)


def _credential(env: Mapping[str, str]) -> Any:
    from azure.identity import WorkloadIdentityCredential

    return WorkloadIdentityCredential(tenant_id=env["AZURE_TENANT_ID"], client_id=env["AZURE_CLIENT_ID"],
                                      token_file_path=env["AZURE_FEDERATED_TOKEN_FILE"],
                                      authority=env["AZURE_AUTHORITY_HOST"])


def _probe_keyvault(report: Report, credential: Any, vault: str, secret: str, env: Mapping[str, str],
                    client_factory: Any = None) -> None:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.keyvault.secrets import SecretClient

    factory = client_factory or (lambda url, cred: SecretClient(vault_url=url, credential=cred))
    try:
        factory(vault, credential).get_secret(secret)
    except ResourceNotFoundError:
        report.add("key vault", "fail", f"secret {secret!r} not found in {vault}",
                   "check the secret name (az keyvault secret list --vault-name <vault>)")
    except HttpResponseError as exc:
        if exc.status_code == 403:
            report.add("key vault", "fail", f"403 Forbidden reading {secret!r} from {vault}",
                       "grant the identity the 'Key Vault Secrets User' role at the vault scope: az role assignment "
                       f"create --role 'Key Vault Secrets User' --assignee {env.get('AZURE_CLIENT_ID')} --scope "
                       "$(az keyvault show --name <vault> --query id -o tsv)")
        else:
            report.add("key vault", "fail", f"{exc.status_code}: {str(exc)[:300]}", "see the error above")
    except Exception as exc:
        report.add("key vault", "fail", f"{type(exc).__name__}: {str(exc)[:300]}",
                   "check the vault URL and network access to it")
    else:
        report.add("key vault", "pass", f"read secret {secret!r} from {vault}")


def render(report: Report, output: str) -> str:
    if output == "json":
        return json.dumps({"ok": report.ok, "tokenObtained": report.token_obtained, "exitCode": report.exit_code(),
                           "checks": [asdict(c) for c in report.checks]}, indent=2) + "\n"
    lines = []
    for check in report.checks:
        lines.append(f"[{check.status.upper():4}] {check.name}: {check.detail}")
        if check.fix and check.status in ("fail", "skip"):
            lines.append(f"       fix: {check.fix}")
    lines.append("workload identity OK" if report.ok else "workload identity NOT working")
    return "\n".join(lines) + "\n"
