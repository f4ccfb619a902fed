"""A local HTTPS stand-in for Azure Key Vault's secret GET, enough for azure-keyvault-secrets' SecretClient.

Like the real service it answers an unauthenticated request with a 401 Bearer challenge naming the authority
and resource, then checks the bearer token: RS256 signature against the (fake) Entra ID's JWKS, expiry, and
whether the token's `appid` has a role assignment on this vault. No assignment → 403 Forbidden with Key Vault's
error shape; unknown secret → 404 SecretNotFound; otherwise the secret.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt

from .tls import make_serving_cert


class FakeKeyVault:
    def __init__(self, workdir: Path, authority: str, tenant: str, jwks: Callable[[], dict[str, Any]],
                 vault_host: str | None = None, address: str = "127.0.0.1") -> None:
        """`vault_host`: a DNS name like `my-vault.vault.localtest` that the client resolves to 127.0.0.1 (e.g. a
        pod's hostAliases). The URL then uses it and the challenge names its parent domain (and port) as the
        resource, as the real service does (`https://vault.azure.net` for `<name>.vault.azure.net`), so
        azure-keyvault-secrets' challenge-resource check passes unchanged. Without it: 127.0.0.1, and the client
        must turn that check off. `address`: where it listens (the pod network's node address for pods there).
        """
        self.authority, self.tenant, self._jwks = authority, tenant, jwks
        self.vault_host = vault_host
        self.secrets: dict[str, str] = {}
        self.readers: set[str] = set()
        names = ("localhost", vault_host) if vault_host else ("localhost",)
        pair = make_serving_cert(workdir, "fake-keyvault", ips=(address,), dns_names=names)
        self.ca_file = pair.ca_file
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                return None

            def do_GET(self) -> None:
                status, body, headers = owner._handle(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        import ssl

        self._server = ThreadingHTTPServer((address, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pair.cert_file, pair.key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://{self.vault_host or '127.0.0.1'}:{self._server.server_address[1]}"

    @property
    def resource(self) -> str:
        """The challenge's resource: the vault host's parent domain, with the (non-default) port the SDK compares."""
        if not self.vault_host:
            return self.url
        return f"https://{self.vault_host.split('.', 1)[1]}:{self._server.server_address[1]}"

    def start(self) -> FakeKeyVault:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()

    def _handle(self, raw_path: str, authorization: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        if not authorization.startswith("Bearer "):
            challenge = f'Bearer authorization="{self.authority}{self.tenant}", resource="{self.resource}"'
            return 401, {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or "
                                                                      "PoP token."}}, {"WWW-Authenticate": challenge}
        try:
            key = jwt.PyJWKSet.from_dict(self._jwks()).keys[0].key
            claims = jwt.decode(authorization.removeprefix("Bearer "), key=key, algorithms=["RS256"],
                                options={"verify_aud": False})
        except jwt.PyJWTError as exc:
            return 401, {"error": {"code": "Unauthorized", "message": f"AKV10022: Invalid token: {exc}"}}, {}
        name = urllib.parse.urlparse(raw_path).path.strip("/").split("/")
        if len(name) < 2 or name[0] != "secrets":
            return 404, {"error": {"code": "NotFound", "message": "not found"}}, {}
        if claims.get("appid") not in self.readers:
            return 403, {"error": {"code": "Forbidden", "message": (
                f"Caller is not authorized to perform action on resource. Caller: appid={claims.get('appid')}. "
                "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'"),
                "innererror": {"code": "ForbiddenByRbac"}}}, {}
        if name[1] not in self.secrets:
            return 404, {"error": {"code": "SecretNotFound", "message": f"A secret with (name/id) {name[1]} was "
                                                                        "not found in this key vault."}}, {}
        return 200, {"value": self.secrets[name[1]], "id": f"{self.url}/secrets/{name[1]}/1",
                     "attributes": {"enabled": True}}, {}
