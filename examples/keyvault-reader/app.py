"""Read one secret from Azure Key Vault with the pod's workload identity (the seed article's walkthrough).

No secret, no connection string: DefaultAzureCredential finds the env vars the webhook injected
(AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST) and exchanges the projected
Kubernetes token for an Entra ID token. The identity needs "Key Vault Secrets User" on the vault.
"""

import os
import time

from azure.identity import DefaultAzureCredential
from azure.keyvault.secrets import SecretClient


def main() -> None:
    client = SecretClient(vault_url=os.environ["KEYVAULT_URL"], credential=DefaultAzureCredential())
    name = os.environ.get("SECRET_NAME", "my-secret")
    while True:
        secret = client.get_secret(name)
        print(f"read secret {name!r} ({len(secret.value or '')} characters) at {time.strftime('%H:%M:%S')}",
              flush=True)
        time.sleep(60)


if __name__ == "__main__":
    main()
