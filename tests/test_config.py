"""Configuration: the reference's env vars and flags, validated with messages that name the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from webhook.cli import clouds
from webhook.cli.config import (
    ConfigError,
    ServeOptions,
    WebhookOptions,
    build_mutation_config,
    explain_validation_error,
    parse_addr,
    read_environment,
)

TENANT = {"AZURE_TENANT_ID": "t"}


def build(env: dict[str, str], **flags: str) -> object:
    return build_mutation_config(WebhookOptions(**flags), env, native_sidecar=False)


def test_tenant_required_with_reference_message() -> None:
    with pytest.raises(ConfigError, match="required key AZURE_TENANT_ID missing value"):
        build({})


def test_config_prefix_wins() -> None:
    assert read_environment({"AZURE_TENANT_ID": "a", "CONFIG_AZURE_TENANT_ID": "b"})["AZURE_TENANT_ID"] == "b"
    assert read_environment({"CONFIG_PROXY_IMAGE": "img", "OTHER": "x"}) == {"PROXY_IMAGE": "img"}


def test_defaults() -> None:
    cfg = build_mutation_config(WebhookOptions(), TENANT, native_sidecar=True)
    assert cfg.tenant_id == "t" and cfg.audience == "api://AzureADTokenExchange"
    assert cfg.authority_host == "https://login.microsoftonline.com/"
    assert cfg.proxy_image == "mcr.microsoft.com/oss/azure/workload-identity/proxy:v1.6.0"
    assert cfg.proxy_init_image == "mcr.microsoft.com/oss/azure/workload-identity/proxy-init:v1.6.0"
    assert cfg.native_sidecar and cfg.custom_endpoint is None and cfg.proxy_resources is None


@pytest.mark.parametrize(("name", "host"), [
    ("", "https://login.microsoftonline.com/"),
    ("AzurePublicCloud", "https://login.microsoftonline.com/"),
    ("azureusgovernmentcloud", "https://login.microsoftonline.us/"),
    ("AzureChinaCloud", "https://login.chinacloudapi.cn/"),
    ("AZUREGERMANCLOUD", "https://login.microsoftonline.de/"),
])
def test_clouds(name: str, host: str) -> None:
    assert clouds.authority_host(name, None) == host


def test_unknown_cloud_names_accepted_values() -> None:
    with pytest.raises(ConfigError, match=r'There is no cloud environment matching the name "MARS".*AzurePublicCloud'):
        build({**TENANT, "AZURE_ENVIRONMENT": "mars"})


def test_azure_stack_reads_file(tmp_path: Path) -> None:
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"activeDirectoryEndpoint": "https://adfs.local.azurestack.external/adfs/"}))
    cfg = build({**TENANT, "AZURE_ENVIRONMENT": "AzureStackCloud", "AZURE_ENVIRONMENT_FILEPATH": str(env_file)})
    assert cfg.authority_host == "https://adfs.local.azurestack.external/adfs/"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="AZURE_ENVIRONMENT_FILEPATH"):
        build({**TENANT, "AZURE_ENVIRONMENT": "AzureStackCloud"})
    env_file.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build({**TENANT, "AZURE_ENVIRONMENT": "AzureStackCloud", "AZURE_ENVIRONMENT_FILEPATH": str(env_file)})
    with pytest.raises(ConfigError, match="cannot read"):
        build({**TENANT, "AZURE_ENVIRONMENT": "AzureStackCloud", "AZURE_ENVIRONMENT_FILEPATH": "/nope.json"})


def test_custom_endpoint_needs_both_flags() -> None:
    with pytest.raises(ConfigError, match="annotation suffix cannot be empty when audience is set"):
        build(TENANT, custom_token_endpoint_audience="api://x")
    with pytest.raises(ConfigError, match="audience cannot be empty when annotation suffix is set"):
        build(TENANT, custom_token_endpoint_annotation_suffix="x")


def test_custom_endpoint_rejects_default_audience_and_bad_key() -> None:
    with pytest.raises(ConfigError, match="must differ from the default audience"):
        build(TENANT, custom_token_endpoint_annotation_suffix="x", custom_token_endpoint_audience="API://AzureADTokenExchange")
    with pytest.raises(ConfigError, match="not a valid qualified name"):
        build(TENANT, custom_token_endpoint_annotation_suffix="bad key!", custom_token_endpoint_audience="api://x")


def test_custom_endpoint_built_from_env() -> None:
    env = {**TENANT, "AZURE_KUBERNETES_TOKEN_PROXY": "https://p", "AZURE_KUBERNETES_SNI_NAME": "s",
           "AZURE_KUBERNETES_CA_CTB_SIGNER_NAME": "example.com/s",
           "AZURE_KUBERNETES_CA_CTB_LABEL_SELECTOR": '{"matchLabels":{"a":"b"}}'}
    cfg = build_mutation_config(WebhookOptions(custom_token_endpoint_annotation_suffix="Identity-Binding",
                                               custom_token_endpoint_audience="api://x"), env, native_sidecar=False)
    custom = cfg.custom_endpoint
    assert custom is not None and custom.annotation_key == "azure.workload.identity/use-Identity-Binding"
    assert custom.ctb_label_selector == {"matchLabels": {"a": "b"}} and custom.token_proxy == "https://p"


SIGNER, SELECTOR = "AZURE_KUBERNETES_CA_CTB_SIGNER_NAME", "AZURE_KUBERNETES_CA_CTB_LABEL_SELECTOR"


@pytest.mark.parametrize(("env", "message"), [
    ({"AZURE_KUBERNETES_CA_DATA": "x", "AZURE_KUBERNETES_CA_CONFIGMAP_NAME": "y"},
     "only one of AZURE_KUBERNETES_CA_DATA"),
    ({SELECTOR: '{"matchLabels":{}}'}, "AZURE_KUBERNETES_CA_CTB_SIGNER_NAME needs to be set"),
    ({SIGNER: "s", SELECTOR: "{"}, "failed to decode LabelSelector"),
    ({SIGNER: "s", SELECTOR: '{"x":1}'}, "only matchLabels"),
])
def test_custom_endpoint_ca_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build({**TENANT, **env}, custom_token_endpoint_annotation_suffix="x", custom_token_endpoint_audience="api://x")


def test_proxy_resources_json() -> None:
    cfg = build({**TENANT, "PROXY_RESOURCES": '{"requests":{"cpu":"10m"}}'})
    assert cfg.proxy_resources == {"requests": {"cpu": "10m"}}  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="PROXY_INIT_RESOURCES: not valid JSON"):
        build({**TENANT, "PROXY_INIT_RESOURCES": "cpu=1"})
    with pytest.raises(ConfigError, match="PROXY_RESOURCES: expected an object"):
        build({**TENANT, "PROXY_RESOURCES": '{"requests":{"cpu":1}}'})


def test_flag_validation_names_the_flag() -> None:
    with pytest.raises(ValidationError) as caught:
        ServeOptions(port=70000, tls_min_version="1.4", native_sidecar="maybe")
    text = explain_validation_error(caught.value)
    assert "--port" in text and "--tls-min-version" in text and "'1.2' or '1.3'" in text and "--native-sidecar" in text
    assert ServeOptions(native_sidecar="TRUE", log_level="Info").native_sidecar == "true"


def test_parse_addr() -> None:
    assert parse_addr(":9440") == ("", 9440)
    assert parse_addr("127.0.0.1:1") == ("127.0.0.1", 1)
    assert parse_addr("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_addr("9440")
    with pytest.raises(ValidationError, match="health_addr"):
        ServeOptions(health_addr="nope")
