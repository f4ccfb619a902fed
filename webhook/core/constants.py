"""The names the webhook reads and writes: first those shared with the reference webhook (Azure/azure-workload-identity
v1.6.0), then this project's own.

The reference's strings are the drop-in contract: annotations users already write, env var names every Azure SDK
reads, and paths existing workloads may rely on. Change none of them without a migration note.

A ServiceAccount annotation the core reads must start with `azure.workload.identity/` (ANNOTATION_PREFIX): under
`serve`, the ServiceAccount cache keeps only those keys (sources/manifests.py: `service_account_info`).
"""

from typing import Final

ANNOTATION_PREFIX: Final = "azure.workload.identity"
USE_LABEL: Final = f"{ANNOTATION_PREFIX}/use"
CLIENT_ID_ANNOTATION: Final = f"{ANNOTATION_PREFIX}/client-id"
TENANT_ID_ANNOTATION: Final = f"{ANNOTATION_PREFIX}/tenant-id"
TOKEN_EXPIRATION_ANNOTATION: Final = f"{ANNOTATION_PREFIX}/service-account-token-expiration"
SKIP_CONTAINERS_ANNOTATION: Final = f"{ANNOTATION_PREFIX}/skip-containers"
INJECT_PROXY_ANNOTATION: Final = f"{ANNOTATION_PREFIX}/inject-proxy-sidecar"
PROXY_PORT_ANNOTATION: Final = f"{ANNOTATION_PREFIX}/proxy-sidecar-port"

ENV_CLIENT_ID: Final = "AZURE_CLIENT_ID"
ENV_TENANT_ID: Final = "AZURE_TENANT_ID"
ENV_FEDERATED_TOKEN_FILE: Final = "AZURE_FEDERATED_TOKEN_FILE"
ENV_AUTHORITY_HOST: Final = "AZURE_AUTHORITY_HOST"
ENV_KUBERNETES_TOKEN_PROXY: Final = "AZURE_KUBERNETES_TOKEN_PROXY"
ENV_KUBERNETES_SNI_NAME: Final = "AZURE_KUBERNETES_SNI_NAME"
ENV_KUBERNETES_CA_FILE: Final = "AZURE_KUBERNETES_CA_FILE"
ENV_KUBERNETES_CA_DATA: Final = "AZURE_KUBERNETES_CA_DATA"

DEFAULT_AUDIENCE: Final = "api://AzureADTokenExchange"
VOLUME_NAME_PREFIX: Final = "azure-workload-identity-reserved-"
MOUNT_PATH: Final = "/var/run/secrets/azure/wi"
TOKEN_RELATIVE_PATH: Final = "token/azure-identity-token"
TOKEN_FILE_PATH: Final = f"{MOUNT_PATH}/{TOKEN_RELATIVE_PATH}"
CA_RELATIVE_PATH: Final = "ca-cert/ca.crt"
CA_FILE_PATH: Final = f"{MOUNT_PATH}/{CA_RELATIVE_PATH}"

MIN_TOKEN_EXPIRATION: Final = 3600
MAX_TOKEN_EXPIRATION: Final = 86400
DEFAULT_TOKEN_EXPIRATION: Final = 3600

PROXY_CONTAINER_NAME: Final = "azwi-proxy"
PROXY_INIT_CONTAINER_NAME: Final = "azwi-proxy-init"
DEFAULT_PROXY_PORT: Final = 8000
DEFAULT_IMAGE_REGISTRY: Final = "mcr.microsoft.com/oss/azure/workload-identity"
REFERENCE_VERSION: Final = "v1.6.0"
DEFAULT_PROXY_IMAGE: Final = f"{DEFAULT_IMAGE_REGISTRY}/proxy:{REFERENCE_VERSION}"
DEFAULT_PROXY_INIT_IMAGE: Final = f"{DEFAULT_IMAGE_REGISTRY}/proxy-init:{REFERENCE_VERSION}"
PUBLIC_CLOUD_HOST: Final = "https://login.microsoftonline.com/"  # AZURE_AUTHORITY_HOST for AzurePublicCloud

NATIVE_SIDECAR_MIN_VERSION: Final = (1, 32)  # the API server version from which the proxy is a native sidecar

# This project's own names.
MUTATE_PATH: Final = "/mutate-v1-pod"
VALIDATE_SA_PATH: Final = "/validate-v1-serviceaccount"
STATUS_ANNOTATION: Final = "wi-webhook/status"
