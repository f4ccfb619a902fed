"""A local HTTPS stand-in for Microsoft Entra ID's token endpoint, for workload identity federation.

It plays Entra ID honestly for `azure.identity.WorkloadIdentityCredential`: the credential POSTs
`{AZURE_AUTHORITY_HOST}{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`,
`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, `client_assertion=<the
Kubernetes service-account token>`, `client_id` and `scope`. The fake then, like Entra ID:

1. checks the tenant (AADSTS90002), the application (AADSTS700016), the request's form (AADSTS900144,
   AADSTS7000216, AADSTS70003, AADSTS1002012);
2. reads the assertion (AADSTS50027 if it is not a JWT) and its time range (AADSTS700024);
3. looks for a federated identity credential of that application whose issuer, subject and audience all
   match the assertion (AADSTS70021 otherwise; real Entra may say AADSTS700211 when only the issuer is
   unknown, this fake always says AADSTS70021);
4. fetches the issuer's OIDC discovery document (`{iss}/.well-known/openid-configuration`, whose `issuer` must
   equal `iss`) and its `jwks_uri`, and verifies the RS256 signature with PyJWT (AADSTS50166 if the issuer
   cannot be read, AADSTS50013 on a bad signature or unknown key);
5. only then returns `{"token_type": "Bearer", "expires_in": 3600, "access_token": <JWT signed by the fake>}`.

Errors are Entra-shaped JSON (`error`, `error_description` starting with `AADSTSnnn:`, `error_codes`,
`timestamp`, `trace_id`, `correlation_id`, `error_uri`) with HTTP 400, or 401 for `invalid_client`.
`force_error(code)` makes the next token requests fail with that code whatever they carry.

Trusting it from azure-identity: its requests-based transport honours `REQUESTS_CA_BUNDLE` (and
`CURL_CA_BUNDLE`), not `SSL_CERT_FILE`; `env()` returns `AZURE_AUTHORITY_HOST` and `REQUESTS_CA_BUNDLE`.
`WorkloadIdentityCredential` does no instance or OIDC discovery (it posts straight to the token endpoint);
the discovery endpoints are served anyway for MSAL-based clients:
`GET /{tenant}/v2.0/.well-known/openid-configuration`, `GET /{tenant}/discovery/v2.0/keys`,
`GET /common/discovery/instance`.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from .tls import make_serving_cert

__all__ = [
    "AZURE_TOKEN_AUDIENCE",
    "ERRORS",
    "JWT_BEARER",
    "EntraErrorSpec",
    "FakeEntra",
    "FederatedCredential",
    "TokenRequestRecord",
]

AZURE_TOKEN_AUDIENCE = "api://AzureADTokenExchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DISCOVERY_TIMEOUT_S = 5.0
DISCOVERY_CACHE_S = 300.0


@dataclass(frozen=True)
class EntraErrorSpec:
    status: int
    error: str
    message: str  # str.format template; missing fields are rendered as ''


ERRORS: dict[str, EntraErrorSpec] = {
    "AADSTS90002": EntraErrorSpec(
        400,
        "invalid_request",
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into "
        "the correct cloud. Check with your subscription administrator, this may happen if there are no active "
        "subscriptions for the tenant.",
    ),
    "AADSTS700016": EntraErrorSpec(
        400,
        "unauthorized_client",
        "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen "
        "if the application has not been installed by the administrator of the tenant or consented to by any "
        "user in the tenant. You may have sent your authentication request to the wrong tenant.",
    ),
    "AADSTS70021": EntraErrorSpec(
        400,
        "invalid_request",
        "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. "
        "Assertion Subject: '{sub}'. Assertion Audience: '{aud}'.",
    ),
    "AADSTS700024": EntraErrorSpec(
        401,
        "invalid_client",
        "Client assertion is not within its valid time range. Current time: {now}, assertion valid from "
        "{nbf}, expiry time of assertion {exp}.",
    ),
    "AADSTS50013": EntraErrorSpec(401, "invalid_client", "Assertion failed signature validation. [Reason - {reason}]"),
    "AADSTS50027": EntraErrorSpec(400, "invalid_request", "JWT token is invalid or malformed. [Reason - {reason}]"),
    "AADSTS50166": EntraErrorSpec(
        400, "invalid_request", "Request to External OIDC endpoint failed. [Reason - {reason}]"
    ),
    "AADSTS7000216": EntraErrorSpec(
        401,
        "invalid_client",
        "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
    ),
    "AADSTS900144": EntraErrorSpec(
        400, "invalid_request", "The request body must contain the following parameter: '{param}'."
    ),
    "AADSTS70003": EntraErrorSpec(
        400, "unsupported_grant_type", "The app requested an unsupported grant type '{grant_type}'."
    ),
    "AADSTS1002012": EntraErrorSpec(
        400,
        "invalid_scope",
        "The provided value for scope {scope} is not valid. Client credential flows must have a scope value "
        "with /.default suffixed to the resource identifier (application ID URI).",
    ),
    "AADSTS90033": EntraErrorSpec(503, "temporarily_unavailable", "A transient error has occurred. Please try again."),
}


@dataclass(frozen=True)
class FederatedCredential:
    client_id: str
    tenant_id: str
    issuer: str
    subject: str
    audience: str = AZURE_TOKEN_AUDIENCE


@dataclass(frozen=True)
class TokenRequestRecord:
    """One POST to the token endpoint, as the fake judged it. `code` is "ok" or the AADSTS code."""

    tenant_id: str
    client_id: str
    scope: str
    subject: str
    code: str
    time: float = field(default_factory=time.time)


class _Reject(Exception):
    def __init__(self, code: str, **details: str) -> None:
        super().__init__(code)
        self.code = code
        self.details = details


class _SafeDict(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _entra_time(t: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(time.time() if t is None else t, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], ctx: ssl.SSLContext, fake: FakeEntra
    ) -> None:
        super().__init__(addr, handler)
        self.ssl_ctx = ctx
        self.fake = fake

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the per-connection thread: the TLS handshake must not block the accept loop.
        request.settimeout(10)
        try:
            tls = self.ssl_ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(tls, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _TLSServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        status, body = self.server.fake._handle_get(self.path)
        self._send_json(status, body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, 1 << 20)).decode("utf-8", "replace")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}
        status, body = self.server.fake._handle_post(self.path, form)
        self._send_json(status, body)


class FakeEntra:
    """Fake Entra ID token endpoint on https://127.0.0.1:<port>/ in a background thread.

    `trusted_ca_files`: CA bundles to trust when fetching issuers' discovery documents (e.g. the test
    cluster's `ca_file`); more can be added with `trust_ca_file()`.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        trusted_ca_files: Iterable[Path | str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: int = 3600,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-entra-")
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self._port = port
        self.token_lifetime = token_lifetime
        pair = make_serving_cert(self.workdir, "fake-entra", ips=(host,), dns_names=("localhost",))
        self.ca_file: Path = pair.ca_file
        self._cert_file = pair.cert_file
        self._key_file = pair.key_file
        self._trusted: list[Path] = [Path(p) for p in trusted_ca_files]
        self._lock = threading.Lock()
        self._tenants: set[str] = set()
        self._apps: dict[tuple[str, str], list[FederatedCredential]] = {}
        self._forced: tuple[str, int | None] | None = None
        self._discovery_cache: dict[str, tuple[float, dict[str, Any], dict[str, Any]]] = {}
        self.requests: list[TokenRequestRecord] = []
        self.issued: list[dict[str, Any]] = []  # claims of each access token issued
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeEntra:
        if self._server is not None:
            return self
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self._cert_file), str(self._key_file))
        self._server = _TLSServer((self.host, self._port), _Handler, ctx, self)
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="fake-entra", daemon=True
        )
        self._thread.start()
        self._wait_listening()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeEntra:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait_listening(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex((self.host, self._port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"fake Entra did not listen on {self.host}:{self._port}")

    # ------------------------------------------------------------------ addresses / env

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self._port}"

    @property
    def authority_host(self) -> str:
        """Value for AZURE_AUTHORITY_HOST (with the trailing slash)."""
        return f"{self.url}/"

    def env(self) -> dict[str, str]:
        """Environment for azure-identity to use and trust this endpoint."""
        return {"AZURE_AUTHORITY_HOST": self.authority_host, "REQUESTS_CA_BUNDLE": str(self.ca_file)}

    # ------------------------------------------------------------------ configuration

    def trust_ca_file(self, path: Path | str) -> None:
        with self._lock:
            self._trusted.append(Path(path))

    def add_tenant(self, tenant_id: str) -> None:
        with self._lock:
            self._tenants.add(tenant_id)

    def register(
        self,
        client_id: str,
        tenant_id: str,
        issuer: str,
        subject: str,
        audience: str = AZURE_TOKEN_AUDIENCE,
    ) -> FederatedCredential:
        """Register app `client_id` in `tenant_id` (both created if new) with one more federated credential."""
        fic = FederatedCredential(client_id, tenant_id, issuer, subject, audience)
        with self._lock:
            self._tenants.add(tenant_id)
            creds = self._apps.setdefault((tenant_id, client_id), [])
            if fic not in creds:
                creds.append(fic)
        return fic

    def unregister(self, client_id: str, tenant_id: str) -> None:
        """Delete the application (and its federated credentials); the tenant stays."""
        with self._lock:
            self._apps.pop((tenant_id, client_id), None)

    def force_error(self, code: str | None, count: int | None = None) -> None:
        """Fail the next `count` token requests (all while None) with `code`, e.g. "AADSTS70021".

        `force_error(None)` clears it. Codes: the keys of `ERRORS`.
        """
        if code is not None and code not in ERRORS:
            raise ValueError(f"unknown code {code!r}; known: {sorted(ERRORS)}")
        with self._lock:
            self._forced = None if code is None else (code, count)

    def clear_forced_error(self) -> None:
        self.force_error(None)

    def reset(self) -> None:
        """Forget apps, tenants, forced errors, records and cached discovery documents."""
        with self._lock:
            self._tenants.clear()
            self._apps.clear()
            self._forced = None
            self._discovery_cache.clear()
            self.requests.clear()
            self.issued.clear()

    def jwks(self) -> dict[str, Any]:
        """The public keys the fake signs access tokens with."""
        jwk = RSAAlgorithm.to_jwk(self._signing_key.public_key(), as_dict=True)
        jwk.update({"kid": self._kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    # ------------------------------------------------------------------ HTTP handling

    def _error_body(self, code: str, details: dict[str, str]) -> tuple[int, dict[str, Any]]:
        spec = ERRORS[code]
        now = _entra_time()
        trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        message = spec.message.format_map(_SafeDict(details))
        description = f"{code}: {message} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {now}"
        number = int(code.removeprefix("AADSTS"))
        return spec.status, {
            "error": spec.error,
            "error_description": description,
            "error_codes": [number],
            "timestamp": now,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.authority_host}error?code={number}",
        }

    def _handle_get(self, raw_path: str) -> tuple[int, dict[str, Any]]:
        path = urllib.parse.urlsplit(raw_path).path
        parts = [p for p in path.split("/") if p]
        base = self.url
        if parts[:3] == ["common", "discovery", "instance"]:
            host = f"{self.host}:{self._port}"
            return 200, {
                "tenant_discovery_endpoint": f"{base}/common/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            }
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            tenant = parts[0]
            with self._lock:
                known = tenant in self._tenants or tenant in ("common", "organizations")
            if not known:
                return self._error_body("AADSTS90002", {"tenant": tenant})
            return 200, {
                "issuer": f"{base}/{tenant}/v2.0",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "tenant_region_scope": "EU",
            }
        if len(parts) == 4 and parts[1:] == ["discovery", "v2.0", "keys"]:
            return 200, self.jwks()
        return 404, {"error": "not_found", "error_description": f"no such endpoint: {path}"}

    def _handle_post(self, raw_path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        parts = [p for p in urllib.parse.urlsplit(raw_path).path.split("/") if p]
        if len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"]:
            return 404, {"error": "not_found", "error_description": f"no such endpoint: {raw_path}"}
        tenant = parts[0]
        client_id = form.get("client_id", "")
        scope = form.get("scope", "")
        subject = ""
        try:
            claims = self._peek_claims(form.get("client_assertion", ""))
            subject = str(claims.get("sub", ""))
            code, body = self._token(tenant, form, claims)
            status = 200
        except _Reject as rej:
            code = rej.code
            details = {"tenant": tenant, "client_id": client_id, "scope": scope, **rej.details}
            status, body = self._error_body(code, details)
        with self._lock:
            self.requests.append(TokenRequestRecord(tenant, client_id, scope, subject, code))
        return status, body

    @staticmethod
    def _peek_claims(assertion: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return {}
        return claims if isinstance(claims, dict) else {}

    def _take_forced(self) -> str | None:
        with self._lock:
            if self._forced is None:
                return None
            code, count = self._forced
            if count is not None:
                self._forced = None if count <= 1 else (code, count - 1)
            return code

    def _token(self, tenant: str, form: dict[str, str], claims: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        client_id = form.get("client_id", "")
        scope = form.get("scope", "")
        aud = claims.get("aud", "")
        aud_list = [aud] if isinstance(aud, str) else [str(a) for a in aud or []]
        claim_details = {
            "iss": str(claims.get("iss", "")),
            "sub": str(claims.get("sub", "")),
            "aud": ", ".join(aud_list),
            "now": _entra_time(),
            "nbf": _entra_time(float(claims["nbf"])) if isinstance(claims.get("nbf"), int | float) else "",
            "exp": _entra_time(float(claims["exp"])) if isinstance(claims.get("exp"), int | float) else "",
            "reason": "forced by the test",
            "param": "client_assertion",
            "grant_type": form.get("grant_type", ""),
        }
        forced = self._take_forced()
        if forced is not None:
            raise _Reject(forced, **claim_details)

        with self._lock:
            tenant_known = tenant in self._tenants
            creds = list(self._apps.get((tenant, client_id), []))
        if not tenant_known:
            raise _Reject("AADSTS90002")
        for param in ("grant_type", "client_id", "scope"):
            if not form.get(param):
                raise _Reject("AADSTS900144", param=param)
        if form["grant_type"] != "client_credentials":
            raise _Reject("AADSTS70003", grant_type=form["grant_type"])
        if not creds:
            raise _Reject("AADSTS700016")
        if not form.get("client_assertion"):
            raise _Reject("AADSTS7000216")
        if form.get("client_assertion_type") != JWT_BEARER:
            raise _Reject("AADSTS900144", param="client_assertion_type")
        if not scope.endswith("/.default") or len(scope.split()) != 1:
            raise _Reject("AADSTS1002012")

        try:
            header = jwt.get_unverified_header(form["client_assertion"])
        except jwt.PyJWTError as exc:
            raise _Reject("AADSTS50027", reason=str(exc)) from exc
        if not claims or not isinstance(claims.get("exp"), int | float) or not claims.get("iss"):
            raise _Reject("AADSTS50027", reason="missing iss/exp claims")
        now = time.time()
        nbf = claims.get("nbf", claims.get("iat", now))
        if float(claims["exp"]) <= now or (isinstance(nbf, int | float) and float(nbf) > now + 300):
            raise _Reject("AADSTS700024", **claim_details)

        iss, sub = claim_details["iss"], claim_details["sub"]
        if not any(c.issuer == iss and c.subject == sub and c.audience in aud_list for c in creds):
            raise _Reject("AADSTS70021", **claim_details)

        self._verify_signature(form["client_assertion"], header, iss, aud_list)
        return "ok", self._issue(tenant, client_id, scope)

    def _verify_signature(self, assertion: str, header: dict[str, Any], iss: str, aud_list: Sequence[str]) -> None:
        kid = str(header.get("kid", ""))
        if header.get("alg") != "RS256":
            raise _Reject("AADSTS50013", reason=f"unsupported algorithm {header.get('alg')!r}")
        key: Any = None
        for refresh in (False, True):
            _, jwks = self._discovery(iss, refresh=refresh)
            try:
                key = jwt.PyJWKSet.from_dict(jwks)[kid].key
                break
            except (KeyError, jwt.PyJWKSetError, jwt.InvalidKeyError):
                key = None
        if key is None:
            raise _Reject("AADSTS50013", reason=f"The key was not found. Key id: '{kid}'")
        try:
            jwt.decode(
                assertion,
                key=key,
                algorithms=["RS256"],
                audience=AZURE_TOKEN_AUDIENCE if AZURE_TOKEN_AUDIENCE in aud_list else list(aud_list),
                issuer=iss,
                options={"require": ["exp", "iss", "sub", "aud"]},
                leeway=0,
            )
        except jwt.ExpiredSignatureError as exc:
            raise _Reject("AADSTS700024", reason=str(exc)) from exc
        except jwt.PyJWTError as exc:
            raise _Reject("AADSTS50013", reason=str(exc)) from exc

    def _discovery(self, issuer: str, refresh: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """(openid-configuration, JWKS) of `issuer`, fetched anonymously over verified HTTPS, cached."""
        with self._lock:
            cached = self._discovery_cache.get(issuer)
            trusted = list(self._trusted)
        if cached is not None and not refresh and time.monotonic() - cached[0] < DISCOVERY_CACHE_S:
            return cached[1], cached[2]
        if not issuer.startswith("https://"):
            raise _Reject("AADSTS50166", reason=f"issuer '{issuer}' is not an https URL")
        ctx = ssl.create_default_context()
        for ca in trusted:
            ctx.load_verify_locations(cafile=str(ca))
        config = self._fetch_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration", ctx)
        if config.get("issuer") != issuer:
            raise _Reject(
                "AADSTS50166", reason=f"discovery issuer '{config.get('issuer')}' is not the assertion's '{issuer}'"
            )
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise _Reject("AADSTS50166", reason=f"bad jwks_uri {jwks_uri!r}")
        jwks = self._fetch_json(jwks_uri, ctx)
        with self._lock:
            self._discovery_cache[issuer] = (time.monotonic(), config, jwks)
        return config, jwks

    @staticmethod
    def _fetch_json(url: str, ctx: ssl.SSLContext) -> dict[str, Any]:
        req = urllib.request.Request(url, headers={"Accept": "application/json, application/jwk-set+json"})
        try:
            with urllib.request.urlopen(req, timeout=DISCOVERY_TIMEOUT_S, context=ctx) as resp:
                body = json.loads(resp.read(1 << 20))
        except urllib.error.HTTPError as exc:
            raise _Reject("AADSTS50166", reason=f"GET {url}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise _Reject("AADSTS50166", reason=f"GET {url}: {exc}") from exc
        if not isinstance(body, dict):
            raise _Reject("AADSTS50166", reason=f"GET {url}: not a JSON object")
        return body

    def _issue(self, tenant: str, client_id: str, scope: str) -> dict[str, Any]:
        now = int(time.time())
        resource = scope.removesuffix("/.default")
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{client_id}"))
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"{self.url}/{tenant}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "azp": client_id,
            "appid": client_id,
            "idtyp": "app",
            "oid": object_id,
            "sub": object_id,
            "tid": tenant,
            "ver": "2.0",
            "uti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self._kid, "typ": "JWT"})
        with self._lock:
            self.issued.append(claims)
        return {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": token,
        }
