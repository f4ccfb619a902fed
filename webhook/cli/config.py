"""Configuration: the reference's env vars and flags, validated once, turned into one immutable MutationConfig.

Env vars are read the way the reference's envconfig does: `CONFIG_<NAME>` wins over `<NAME>` (the chart's
ConfigMap uses the plain names). Every error names the setting and what it accepts, and is raised at startup,
never in the middle of a request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from webhook.cli import clouds
from webhook.core.constants import (
    ANNOTATION_PREFIX,
    DEFAULT_AUDIENCE,
    DEFAULT_PROXY_IMAGE,
    DEFAULT_PROXY_INIT_IMAGE,
)
from webhook.core.model import CustomTokenEndpoint, MutationConfig


class ConfigError(ValueError):
    """A setting is missing or invalid; str() names the setting and the accepted values."""


ENV_NAMES = (
    "AZURE_TENANT_ID",
    "AZURE_ENVIRONMENT",
    "AZURE_ENVIRONMENT_FILEPATH",
    "PROXY_IMAGE",
    "PROXY_INIT_IMAGE",
    "PROXY_RESOURCES",
    "PROXY_INIT_RESOURCES",
    "AZURE_KUBERNETES_TOKEN_PROXY",
    "AZURE_KUBERNETES_SNI_NAME",
    "AZURE_KUBERNETES_CA_DATA",
    "AZURE_KUBERNETES_CA_CONFIGMAP_NAME",
    "AZURE_KUBERNETES_CA_CTB_SIGNER_NAME",
    "AZURE_KUBERNETES_CA_CTB_LABEL_SELECTOR",
    "POD_NAMESPACE",
)


def read_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Pick our env vars, letting `CONFIG_<NAME>` take priority over `<NAME>` like the reference."""
    found: dict[str, str] = {}
    for name in ENV_NAMES:
        if f"CONFIG_{name}" in environ:
            found[name] = environ[f"CONFIG_{name}"]
        elif name in environ:
            found[name] = environ[name]
    return found


LogLevel = Literal["", "error", "warning", "info", "debug", "trace", "all"]
NativeSidecar = Literal["auto", "true", "false"]
TlsVersion = Literal["1.0", "1.1", "1.2", "1.3"]


class WebhookOptions(BaseModel):
    """Flags shared by `serve`, `mutate` and `check` (the reference's names, plus our additions)."""

    model_config = ConfigDict(extra="forbid")

    audience: str = ""
    custom_token_endpoint_annotation_suffix: str = ""
    custom_token_endpoint_audience: str = ""
    log_level: LogLevel = ""
    native_sidecar: NativeSidecar = "auto"
    status_annotation: bool = True
    policy: str | None = None

    @field_validator("log_level", "native_sidecar", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class ServeOptions(WebhookOptions):
    """Flags of `serve` only."""

    tls_min_version: TlsVersion = "1.3"
    port: int = Field(default=9443, ge=1, le=65535)
    host: str = ""
    health_addr: str = ":9440"
    metrics_addr: str = ":8095"
    webhook_cert_dir: str = "/certs"
    kubeconfig: str | None = None
    serviceaccount_lookup_timeout: float = Field(default=2.0, gt=0, le=25)
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=3 * 1024 * 1024 + 65536)
    shutdown_timeout: float = Field(default=25.0, gt=0, le=300)
    shutdown_delay: float = Field(default=0.0, ge=0, le=300)
    cert_check_interval: float = Field(default=2.0, gt=0, le=3600)
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    workers: int = Field(default=1, ge=1, le=64)
    reuse_port: bool = False
    worker_index: int | None = Field(default=None, ge=0)
    worker_state_dir: str | None = None
    disable_cert_rotation: bool = False
    cert_secret_name: str = "azure-wi-webhook-server-cert"
    webhook_config_name: str = "azure-wi-webhook-mutating-webhook-configuration"
    validating_webhook_config_name: str = ""
    service_name: str = "azure-wi-webhook-webhook-service"
    cert_check_rotation_interval: str = "12h"
    cert_renew_before: str = "2160h"
    cert_ca_settle_delay: str = "10s"
    cert_host: list[str] = Field(default_factory=list)

    @field_validator("cert_check_rotation_interval", "cert_renew_before")
    @classmethod
    def _duration(cls, value: str) -> str:
        if parse_duration(value) <= 0:
            raise ValueError("must be a positive duration, e.g. 12h")
        return value

    @field_validator("cert_ca_settle_delay")
    @classmethod
    def _settle_delay(cls, value: str) -> str:
        if not 0 <= parse_duration(value) <= 600:
            raise ValueError("must be a duration from 0s to 10m, e.g. 10s")
        return value

    @field_validator("health_addr", "metrics_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        parse_addr(value)
        return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration(text: str) -> float:
    """A Go-style duration (`12h`, `90m`, `1h30m`, `45s`) or a plain number of seconds, as seconds."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    if not value or not re.fullmatch(rf"(?:{_DURATION.pattern})+", value):
        raise ValueError(f"{text!r} is not a duration; use e.g. 12h, 90m, 1h30m or 45s")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[unit] for n, unit in _DURATION.findall(value))


def parse_addr(value: str) -> tuple[str, int]:
    """Split a Go-style listen address (`:9440`, `127.0.0.1:9440`, `[::1]:9440`) into host and port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not a listen address; use HOST:PORT or :PORT, e.g. :9440")
    return host.strip("[]"), int(port_text)


_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_annotation_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    problems = []
    if len(name) > 63 or not _QUALIFIED_NAME.match(name):
        problems.append("name part must be at most 63 characters of [A-Za-z0-9-_.], starting and ending "
                        "alphanumeric")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        problems.append("prefix must be a DNS subdomain")
    if problems:
        raise ConfigError(f"--custom-token-endpoint-annotation-suffix: annotation key {key!r} is not a valid "
                          f"qualified name: {'; '.join(problems)}")


def _custom_endpoint(options: WebhookOptions, env: Mapping[str, str]) -> CustomTokenEndpoint | None:
    suffix = options.custom_token_endpoint_annotation_suffix
    audience = options.custom_token_endpoint_audience
    if not suffix and not audience:
        return None
    if not suffix:
        raise ConfigError("--custom-token-endpoint-annotation-suffix: custom token endpoint annotation suffix "
                          "cannot be empty when audience is set")
    if not audience:
        raise ConfigError("--custom-token-endpoint-audience: custom token endpoint audience cannot be empty "
                          "when annotation suffix is set")
    if audience.lower() == DEFAULT_AUDIENCE.lower():
        raise ConfigError(f"--custom-token-endpoint-audience: must differ from the default audience "
                          f"{DEFAULT_AUDIENCE} (the custom endpoint needs its own audience)")
    key = f"{ANNOTATION_PREFIX}/use-{suffix}"
    _check_annotation_key(key.lower())
    ca_sources = [n for n in ("AZURE_KUBERNETES_CA_DATA", "AZURE_KUBERNETES_CA_CONFIGMAP_NAME",
                              "AZURE_KUBERNETES_CA_CTB_SIGNER_NAME") if env.get(n)]
    if len(ca_sources) > 1:
        raise ConfigError("only one of AZURE_KUBERNETES_CA_DATA, AZURE_KUBERNETES_CA_CONFIGMAP_NAME or "
                          f"AZURE_KUBERNETES_CA_CTB_SIGNER_NAME can be set (set: {', '.join(ca_sources)})")
    selector = _label_selector(env.get("AZURE_KUBERNETES_CA_CTB_LABEL_SELECTOR"))
    if selector is not None and not env.get("AZURE_KUBERNETES_CA_CTB_SIGNER_NAME"):
        raise ConfigError("AZURE_KUBERNETES_CA_CTB_SIGNER_NAME needs to be set when "
                          "AZURE_KUBERNETES_CA_CTB_LABEL_SELECTOR is set")
    return CustomTokenEndpoint(
        annotation_key=key,
        audience=audience,
        token_proxy=env.get("AZURE_KUBERNETES_TOKEN_PROXY", ""),
        sni_name=env.get("AZURE_KUBERNETES_SNI_NAME", ""),
        ca_data=env.get("AZURE_KUBERNETES_CA_DATA", ""),
        ca_configmap_name=env.get("AZURE_KUBERNETES_CA_CONFIGMAP_NAME", ""),
        ctb_signer_name=env.get("AZURE_KUBERNETES_CA_CTB_SIGNER_NAME", ""),
        ctb_label_selector=selector,
    )


def _label_selector(raw: str | None) -> dict[str, Any] | None:
    name = "AZURE_KUBERNETES_CA_CTB_LABEL_SELECTOR"
    value = _json_setting(name, raw, 'failed to decode LabelSelector: not valid JSON ({error}); expected e.g. '
                                     '{{"matchLabels":{{"k":"v"}}}}')
    if value is not None and (not isinstance(value, dict) or set(value) - {"matchLabels", "matchExpressions"}):
        raise ConfigError(f"{name}: failed to decode LabelSelector: expected a JSON object with only matchLabels "
                          "and/or matchExpressions")
    return value


def _resources(name: str, raw: str | None) -> dict[str, Any] | None:
    """Proxy container resources (improvement for reference #1441), as a JSON ResourceRequirements."""
    value = _json_setting(name, raw, 'not valid JSON ({error}); expected e.g. '
                                     '{{"requests":{{"cpu":"10m","memory":"32Mi"}},"limits":{{"memory":"64Mi"}}}}')
    if value is not None and (not isinstance(value, dict) or set(value) - {"requests", "limits"} or not all(
            isinstance(v, dict) and all(isinstance(q, str) for q in v.values()) for v in value.values())):
        raise ConfigError(f"{name}: expected an object with only 'requests' and/or 'limits', each mapping a "
                          'resource name to a quantity string, e.g. {"requests":{"cpu":"10m"}}')
    return value


def _json_setting(name: str, raw: str | None, problem: str) -> Any:
    """The JSON value of setting `name` (None when unset or blank); ConfigError `name: problem` when it is not JSON."""
    if raw is None or raw.strip() == "":
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {problem.format(error=exc)}") from exc


def build_mutation_config(options: WebhookOptions, environ: Mapping[str, str], *, native_sidecar: bool,
                          require_tenant: bool = True, webhook_version: str = "") -> MutationConfig:
    """Validate env + flags into a MutationConfig, raising ConfigError that names the bad setting."""
    env = read_environment(environ)
    tenant = env.get("AZURE_TENANT_ID", "")
    if require_tenant and not tenant:
        raise ConfigError("required key AZURE_TENANT_ID missing value: set AZURE_TENANT_ID to your Microsoft "
                          "Entra tenant id (the chart's azureTenantID value)")
    try:
        authority = clouds.authority_host(env.get("AZURE_ENVIRONMENT", ""), env.get("AZURE_ENVIRONMENT_FILEPATH"))
    except clouds.CloudError as exc:
        raise ConfigError(f"AZURE_ENVIRONMENT: {exc}") from exc
    return MutationConfig(
        tenant_id=tenant,
        authority_host=authority,
        audience=options.audience or DEFAULT_AUDIENCE,
        proxy_image=env.get("PROXY_IMAGE") or DEFAULT_PROXY_IMAGE,
        proxy_init_image=env.get("PROXY_INIT_IMAGE") or DEFAULT_PROXY_INIT_IMAGE,
        log_level=options.log_level,
        native_sidecar=native_sidecar,
        custom_endpoint=_custom_endpoint(options, env),
        proxy_resources=_resources("PROXY_RESOURCES", env.get("PROXY_RESOURCES")),
        proxy_init_resources=_resources("PROXY_INIT_RESOURCES", env.get("PROXY_INIT_RESOURCES")),
        status_annotation=options.status_annotation,
        webhook_version=webhook_version,
    )


def explain_validation_error(exc: ValidationError) -> str:
    """Turn pydantic's error list into one line per setting, named as the user typed it (a flag)."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "value"
        flag = "--" + field.replace("_", "-")
        accepted = ""
        ctx = error.get("ctx") or {}
        if "expected" in ctx and str(ctx["expected"]) not in error["msg"]:
            accepted = f" (accepted: {ctx['expected']})"
        lines.append(f"{flag}: {error['msg']}{accepted}; got {error.get('input')!r}")
    return "\n".join(lines)
