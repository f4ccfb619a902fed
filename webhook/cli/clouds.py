"""AZURE_AUTHORITY_HOST per Azure cloud, as go-autorest resolves AZURE_ENVIRONMENT for the reference."""

from __future__ import annotations

import json
from pathlib import Path

from webhook.core.constants import PUBLIC_CLOUD_HOST

_KNOWN_CLOUDS = {
    "AZUREPUBLICCLOUD": PUBLIC_CLOUD_HOST,
    "AZUREUSGOVERNMENTCLOUD": "https://login.microsoftonline.us/",
    "AZURECHINACLOUD": "https://login.chinacloudapi.cn/",
    "AZUREGERMANCLOUD": "https://login.microsoftonline.de/",
}
STACK_CLOUD = "AZURESTACKCLOUD"
KNOWN_CLOUD_NAMES = ("AzurePublicCloud", "AzureUSGovernmentCloud", "AzureChinaCloud", "AzureGermanCloud",
                     "AzureStackCloud")


class CloudError(ValueError):
    """AZURE_ENVIRONMENT (or its file) cannot be resolved; the message says what is accepted."""


def authority_host(environment: str, environment_file: str | None) -> str:
    """Return the authority host (with trailing slash) for a cloud name, case-insensitively.

    AzureStackCloud reads `activeDirectoryEndpoint` from the JSON file at AZURE_ENVIRONMENT_FILEPATH, exactly as
    go-autorest does; the value is used as written (the reference does not add a slash either).
    """
    name = environment.strip().upper()
    if name == "":
        return PUBLIC_CLOUD_HOST
    if name in _KNOWN_CLOUDS:
        return _KNOWN_CLOUDS[name]
    if name == STACK_CLOUD:
        return _stack_authority_host(environment_file)
    raise CloudError(
        f'autorest/azure: There is no cloud environment matching the name "{name}" '
        f"(AZURE_ENVIRONMENT accepts {', '.join(KNOWN_CLOUD_NAMES)}, case-insensitive)"
    )


def _stack_authority_host(environment_file: str | None) -> str:
    if not environment_file:
        raise CloudError("AZURE_ENVIRONMENT=AzureStackCloud needs AZURE_ENVIRONMENT_FILEPATH pointing to the "
                         "cloud's JSON environment file")
    path = Path(environment_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CloudError(f"AZURE_ENVIRONMENT_FILEPATH: cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CloudError(f"AZURE_ENVIRONMENT_FILEPATH: {path} is not valid JSON: {exc}") from exc
    endpoint = data.get("activeDirectoryEndpoint") if isinstance(data, dict) else None
    if not isinstance(endpoint, str) or not endpoint:
        raise CloudError(f"AZURE_ENVIRONMENT_FILEPATH: {path} has no string field activeDirectoryEndpoint")
    return endpoint
