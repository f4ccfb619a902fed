"""The pure mutation core: (pod JSON, ServiceAccount, config) -> JSON Patch ops or a denial.

No I/O and no globals. The pod is the raw request JSON (plain dicts and lists) and is never modified or
re-serialised: every change is an RFC 6902 operation at a precise path, mostly `add`, so fields we do not know
about (new PodSpec fields, native-sidecar `restartPolicy`, ...) survive untouched — the reference's typed
round-trip dropped them (Azure/azure-workload-identity#1312).

Behaviour follows the reference v1.6.0 step by step (see README "Compatibility"); the deliberate differences are:
`inject-proxy-sidecar: "false"` does not inject (#1210), the proxy port is range-checked, proxy containers may get
resources from config (#1441), and denials carry the annotation name and the fix after the reference text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson

from webhook.config import MutationConfig
from webhook.constants import (
    CA_FILE_PATH,
    CA_RELATIVE_PATH,
    CLIENT_ID_ANNOTATION,
    DEFAULT_PROXY_PORT,
    DEFAULT_TOKEN_EXPIRATION,
    ENV_AUTHORITY_HOST,
    ENV_CLIENT_ID,
    ENV_FEDERATED_TOKEN_FILE,
    ENV_KUBERNETES_CA_DATA,
    ENV_KUBERNETES_CA_FILE,
    ENV_KUBERNETES_SNI_NAME,
    ENV_KUBERNETES_TOKEN_PROXY,
    ENV_TENANT_ID,
    INJECT_PROXY_ANNOTATION,
    MAX_TOKEN_EXPIRATION,
    MIN_TOKEN_EXPIRATION,
    MOUNT_PATH,
    PROXY_CONTAINER_NAME,
    PROXY_INIT_CONTAINER_NAME,
    PROXY_PORT_ANNOTATION,
    SKIP_CONTAINERS_ANNOTATION,
    STATUS_ANNOTATION,
    TENANT_ID_ANNOTATION,
    TOKEN_EXPIRATION_ANNOTATION,
    TOKEN_FILE_PATH,
    TOKEN_RELATIVE_PATH,
    VOLUME_NAME_PREFIX,
)
from webhook.memo import IdentityMemo

JSON = Any
PatchOp = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServiceAccountInfo:
    """The part of a ServiceAccount the webhook uses (what the cache keeps, to bound memory: slots, interned
    keys and namespaces, one shared empty mapping)."""

    namespace: str
    name: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""


@dataclass(frozen=True)
class Denial:
    """A reason to reject the pod; `code` becomes the AdmissionResponse status code."""

    message: str
    reason: str
    code: int = 400


class PodRef:
    """What the shell needs before the ServiceAccount lookup: where the pod lives and which SA it runs as.
    (A plain class, not a NamedTuple: one is made per review, and a NamedTuple's `__new__` is interpreted.)"""

    def __init__(self, namespace: str, name: str, service_account: str, entries_checked: bool = True) -> None:
        self.namespace: Final = namespace
        self.name: Final = name
        self.service_account: Final = service_account
        # False when pod_ref(..., entries=False) left the containers' env and volumeMounts entries to mutate_pod.
        self.entries_checked: Final = entries_checked

    def __repr__(self) -> str:
        return f"PodRef({self.namespace!r}, {self.name!r}, {self.service_account!r})"


class MutationResult:
    """The patch (empty when nothing changes) plus facts for logs, metrics, policy and the status annotation.

    The operations are kept encoded, each exactly as `orjson.dumps` encodes it: the server only ever sends the
    patch as JSON, so the hot path writes the bytes once instead of building dicts to encode them later (the
    per-container env and mount operations are spliced from pieces encoded once per ServiceAccount). `patch`
    decodes them for the CLI, `check` and tests.

    A plain class rather than a dataclass: one is made per review, and in the compiled build a dataclass's
    generated `__init__` runs as interpreted Python (about 2 µs), this one as C.
    """

    def __init__(self, encoded_ops: list[bytes] | None = None, denial: Denial | None = None, volume_name: str = "",
                 env_names: list[str] | None = None, injected_containers: list[str] | None = None,
                 skipped_containers: list[str] | None = None, proxy_injected: bool = False,
                 expiration_seconds: int = 0, kept_env: list[tuple[str, str, Any]] | None = None) -> None:
        self.encoded_ops: list[bytes] = [] if encoded_ops is None else encoded_ops
        self.denial = denial
        self.volume_name = volume_name
        self.env_names: list[str] = [] if env_names is None else env_names
        self.injected_containers: list[str] = [] if injected_containers is None else injected_containers
        self.skipped_containers: list[str] = [] if skipped_containers is None else skipped_containers
        self.proxy_injected = proxy_injected
        self.expiration_seconds = expiration_seconds
        # (container, env name, value) for each env entry of an injected container that already sets one of the
        # names the webhook injects (the webhook keeps it): what policy rule WI005 compares, found by the same pass.
        self.kept_env: list[tuple[str, str, Any]] = [] if kept_env is None else kept_env

    def __repr__(self) -> str:
        return (f"MutationResult(patch={self.patch!r}, denial={self.denial!r}, volume_name={self.volume_name!r}, "
                f"injected_containers={self.injected_containers!r}, skipped_containers={self.skipped_containers!r})")

    @classmethod
    def from_patch(cls, patch: list[PatchOp], **facts: Any) -> MutationResult:
        return cls(encoded_ops=[orjson.dumps(op) for op in patch], **facts)

    @property
    def patch_json(self) -> bytes:
        """The JSON Patch document: byte for byte `orjson.dumps(self.patch)`."""
        return b"[" + b",".join(self.encoded_ops) + b"]"

    @property
    def patch(self) -> list[PatchOp]:
        """The operations as JSON values (decoded on each access; the empty list when nothing changes)."""
        return orjson.loads(self.patch_json) if self.encoded_ops else []

    @property
    def allowed(self) -> bool:
        return self.denial is None


class PodShapeError(ValueError):
    """The object is not a decodable Pod; the message names the offending field."""


def pod_ref(pod: JSON, request_namespace: str, entries: bool = True) -> PodRef:
    """Extract namespace, hash name and ServiceAccount name; raises PodShapeError for non-pod shapes.

    `entries=False` (the server's hot path) leaves the containers' env and volumeMounts entries unchecked:
    mutate_pod checks them in the pass that reads them anyway, and answers exactly as if they had been checked
    here (see mutate_pod). Each entry is then read once instead of twice.
    """
    _check_shape(pod, entries)
    checked: dict[str, Any] = pod  # a dict now, so the lookups below are a dict's, not generic method calls
    metadata: dict[str, Any] = checked.get("metadata") or {}
    spec: dict[str, Any] = checked.get("spec") or {}
    name = metadata.get("name") or f"{metadata.get('generateName') or ''} (prefix)"
    namespace = request_namespace or metadata.get("namespace") or ""
    return PodRef(namespace, name, spec.get("serviceAccountName") or "default", entries)


def bad_pod(pod: JSON) -> Denial | None:
    """The denial for a pod that fails the full shape check, or None: what a review gets before any other
    answer."""
    try:
        _check_shape(pod)
    except PodShapeError as exc:
        return shape_denial(exc)
    return None


def shape_denial(exc: PodShapeError) -> Denial:
    """The reference's denial for a pod it cannot decode (the message names the field)."""
    return Denial(f"couldn't decode pod: {exc}", reason="BadPod")


def volume_name_for(pod_name: str) -> str:
    """`azure-workload-identity-reserved-` + 30 hex chars of sha256(pod name): 63 chars, a valid DNS label."""
    return VOLUME_NAME_PREFIX + hashlib.sha256(pod_name.encode("utf-8")).hexdigest()[:30]


def service_account_not_found(name: str) -> Denial:
    return Denial(f'serviceaccounts "{name}" not found', reason="ServiceAccountNotFound")


def mutate_pod(pod: JSON, request_namespace: str, sa: ServiceAccountInfo | None,
               config: MutationConfig, ref: PodRef | None = None) -> MutationResult:
    """Compute the JSON Patch that gives `pod` its workload identity, or the reference's denial.

    `ref` is `pod_ref(pod, request_namespace)` when the caller already computed it (the shape check is then
    not repeated on the hot path), or `pod_ref(pod, request_namespace, entries=False)`, whose unchecked env and
    volumeMounts entries this pass checks (with the same answers as a full check first).
    """
    if ref is None:
        try:
            ref = pod_ref(pod, request_namespace)
        except PodShapeError as exc:
            return MutationResult(denial=shape_denial(exc))
    if ref.entries_checked:
        return _mutate(pod, sa, config, ref)
    # The entries were left to this pass. A malformed one stops it; and any other denial must not come before the
    # shape denial a full check would have given first. Both are rare: the full check then runs, for its message.
    try:
        result: MutationResult | None = _mutate(pod, sa, config, ref)
    except PodShapeError:
        result = None
    if result is None or result.denial is not None:
        denial = bad_pod(pod)
        if denial is not None:
            return MutationResult(denial=denial)
        if result is None:  # the pass rejects only what the full check rejects
            raise AssertionError("mutate_pod: an entry failed the pass but passed the full shape check")
    return result


def _mutate(pod: JSON, sa: ServiceAccountInfo | None, config: MutationConfig, ref: PodRef) -> MutationResult:
    if sa is None:
        return MutationResult(denial=service_account_not_found(ref.service_account))
    metadata: dict[str, Any] = pod.get("metadata") or {}
    annotations: dict[str, str] = metadata.get("annotations") or {}
    spec: dict[str, Any] = pod.get("spec") or {}

    proxy_port: int | None = None
    if wants_proxy(annotations):
        if spec.get("hostNetwork") is True:
            return MutationResult(denial=Denial("hostNetwork is set to true, cannot inject proxy sidecar",
                                                reason="ProxyWithHostNetwork"))
        port = proxy_port_of(annotations)
        if isinstance(port, Denial):
            return MutationResult(denial=port)
        proxy_port = port
    expiration = token_expiration(annotations, sa.annotations)
    if isinstance(expiration, Denial):
        return MutationResult(denial=expiration)

    custom = config.custom_endpoint
    custom_active = custom is not None and annotations.get(custom.annotation_key, "").lower() == "true"
    fragments = _account_fragments(sa, config, custom_active)
    volume_name = volume_name_for(ref.name)
    name_bytes = volume_name.encode()  # ASCII letters, digits and "-" (volume_name_for): its JSON needs no escapes
    name_json = b'"' + name_bytes + b'"'
    projected = fragments.projected.get(expiration)
    if projected is None:  # few pods set an expiration of their own
        projected = _bounded_put(fragments.projected, expiration, _projected_json(expiration, config, custom_active),
                                 16)
    skip = skip_containers(annotations)

    result = MutationResult(volume_name=volume_name, env_names=list(fragments.env_names),
                            proxy_injected=proxy_port is not None, expiration_seconds=expiration)
    ops = result.encoded_ops
    if "metadata" not in pod or pod["metadata"] is None:
        ops.append(orjson.dumps({"op": "add", "path": "/metadata", "value": {"namespace": ref.namespace}}))
        metadata = {"namespace": ref.namespace}
    elif metadata.get("namespace") != ref.namespace:
        ops.append(orjson.dumps({"op": "replace" if "namespace" in metadata else "add",
                                 "path": "/metadata/namespace", "value": ref.namespace}))
    if "spec" not in pod or pod["spec"] is None:
        ops.append(orjson.dumps({"op": "add", "path": "/spec", "value": {}}))

    injector = _ContainerInjector(fragments, volume_name, name_json, skip, result)
    if proxy_port is None:  # the usual case: no container is inserted, so each keeps its index
        for paths, containers in ((_INIT_CONTAINER_PATHS, spec.get("initContainers")),
                                  (_CONTAINER_PATHS, spec.get("containers"))):
            for index, container in enumerate(containers or ()):
                injector.inject_existing(container, _item_path(paths, index), ops)
    else:
        init_list = _ListEditor("/spec/initContainers", spec.get("initContainers"), ops)
        app_list = _ListEditor("/spec/containers", spec.get("containers"), ops)
        if not init_list.has(PROXY_INIT_CONTAINER_NAME):
            init_list.append(injector.inject_new(proxy_init_container(proxy_port, config)))
        sidecar_list = init_list if config.native_sidecar else app_list
        if not sidecar_list.has(PROXY_CONTAINER_NAME):
            sidecar_list.prepend(injector.inject_new(proxy_sidecar_container(proxy_port, config)))
        for editor, paths in ((init_list, _INIT_CONTAINER_PATHS), (app_list, _CONTAINER_PATHS)):
            for index, container in editor.existing():
                injector.inject_existing(container, _item_path(paths, index), ops)

    volume_op = _volume_op(spec.get("volumes"), volume_name, b'{"name":' + name_json + b',"projected":' + projected
                           + b"}")
    if volume_op is not None:
        ops.append(volume_op)
    if config.status_annotation:
        status_op = _status_op(metadata, fragments, volume_name, name_bytes)
        if status_op is not None:
            ops.append(status_op)
    return result


# The JSON Pointers of the first containers, encoded once (a longer list encodes the rest when it meets them).
_INIT_CONTAINER_PATHS = tuple(f"/spec/initContainers/{index}".encode() for index in range(32))
_CONTAINER_PATHS = tuple(f"/spec/containers/{index}".encode() for index in range(32))


def _item_path(paths: tuple[bytes, ...], index: int) -> bytes:
    return paths[index] if index < len(paths) else paths[0][:-1] + str(index).encode()


def status_annotation(sa: ServiceAccountInfo, result: MutationResult, config: MutationConfig) -> str:
    """`wi-webhook/status`: what was injected and from which ServiceAccount annotations (short hash).

    Deterministic for the same inputs, so reinvocation stays a no-op; `check --cluster` can compare the hash with
    the ServiceAccount's current annotations to find pods running with a stale identity.
    """
    return orjson.dumps({"version": config.webhook_version, "env": result.env_names, "volume": result.volume_name,
                         "mountPath": MOUNT_PATH, "serviceAccount": sa.name,
                         "annotationsHash": annotations_hash(sa)}).decode()


_VOLUME_MARK = "\x00volume\x00"  # stands for the per-pod volume name in the memoised status annotation


@dataclass(frozen=True, slots=True)
class _AccountFragments:
    """What a mutation derives from the ServiceAccount and config alone, much of it already encoded: the env vars to
    inject (one entry at a time, closing the op, and as a whole list), the status annotation around the per-pod
    volume name, and the projected volume's sources for each token expiration met."""

    env: tuple[tuple[str, str], ...]
    env_names: tuple[str, ...]
    env_name_set: frozenset[str]  # for the per-entry test: a hash lookup, not four string comparisons
    # Bit n is set when some name in env_names is n characters long: tested before the hash lookup, for most
    # names of a pod's env are not the webhook's and have other lengths (a shift costs less than hashing).
    env_name_lengths: int
    env_ops_tails: tuple[bytes, ...]  # orjson.dumps({"name": ..., "value": ...}) + b"}" for each of `env`
    env_list_json: bytes  # orjson.dumps of the whole env list
    status_head: str  # status_head + json(volume name) + status_tail is status_annotation(...)
    status_tail: str
    status_json_head: bytes  # status_json_head + volume name + status_json_tail is orjson.dumps(status_annotation)
    status_json_tail: bytes
    # _projected_json(expiration, ...) by expiration (pods often set their own): filled by _mutate, a few entries.
    projected: dict[int, bytes]
    # The ops that append all of `env` to the env list at a container's path: filled by _env_append_ops.
    env_append_ops: dict[bytes, tuple[bytes, ...]]


_fragments: IdentityMemo[_AccountFragments] = IdentityMemo()


def _account_fragments(sa: ServiceAccountInfo, config: MutationConfig, custom_active: bool) -> _AccountFragments:
    """Memoised per (ServiceAccount, config) object and custom-endpoint switch: see webhook/memo.py."""
    known = _fragments.get((sa, config), custom_active)
    if known is not None:
        return known
    env = tuple(env_candidates(sa, config, custom_active))
    names = [name for name, _ in env]
    marked = status_annotation(sa, MutationResult(volume_name=_VOLUME_MARK, env_names=names), config)
    mark = orjson.dumps(_VOLUME_MARK).decode()
    head, tail = marked.split(mark)
    json_head, json_tail = orjson.dumps(marked).split(orjson.dumps(mark)[1:-1])
    entries = [{"name": name, "value": value} for name, value in env]
    return _fragments.put((sa, config), custom_active, _AccountFragments(
        env, tuple(names), frozenset(names), sum(1 << size for size in {len(name) for name in names}),
        tuple(orjson.dumps(entry) + b"}" for entry in entries), orjson.dumps(entries), head, tail,
        json_head + b'\\"', b'\\"' + json_tail, {}, {}))


def annotations_hash(sa: ServiceAccountInfo) -> str:
    """12 hex chars of sha256 over the ServiceAccount's `azure.workload.identity/*` annotations (sorted JSON)."""
    return hashlib.sha256(orjson.dumps(dict(sa.annotations), option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _status_op(metadata: dict[str, Any], fragments: _AccountFragments, volume_name: str,
               name_bytes: bytes) -> bytes | None:
    """The op that sets the status annotation (none when it is already set so), encoded as orjson encodes it;
    `name_bytes` is the volume name, encoded."""
    value_json = fragments.status_json_head + name_bytes + fragments.status_json_tail
    annotations = metadata.get("annotations")
    if annotations is None:
        return _STATUS_MAP_OP_HEAD + value_json + b"}}"
    current = annotations.get(STATUS_ANNOTATION)
    if current is None:
        return _STATUS_ADD_OP_HEAD + value_json + b"}"
    if current == fragments.status_head + f'"{volume_name}"' + fragments.status_tail:
        return None
    return _STATUS_REPLACE_OP_HEAD + value_json + b"}"


def _volume_op(volumes: list[Any] | None, name: str, volume_json: bytes) -> bytes | None:
    """The op that adds the token volume (`volume_json`, named `name`), or replaces a same-named one that differs
    (none when it is the same)."""
    if volumes is None:
        return b'{"op":"add","path":"/spec/volumes","value":[' + volume_json + b"]}"
    for index, existing in enumerate(volumes):
        if existing.get("name") == name:
            if _same_volume(orjson.loads(volume_json), existing):
                return None
            return b'{"op":"replace","path":"/spec/volumes/' + str(index).encode() + b'","value":' + volume_json \
                + b"}"
    return b'{"op":"add","path":"/spec/volumes/-","value":' + volume_json + b"}"


def wants_proxy(annotations: Mapping[str, str]) -> bool:
    """Inject the proxy when the annotation is present and not "false" (the reference ignores the value, #1210)."""
    value = annotations.get(INJECT_PROXY_ANNOTATION)
    return value is not None and value.strip().lower() != "false"


def go_parse_int(text: str, bits: int) -> int:
    """strconv.ParseInt(text, 10, bits) with Go's error text, so messages match the reference."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):  # [+-]?[0-9]+ exactly: isdigit alone takes other scripts' digits
        raise ValueError(f"strconv.ParseInt: parsing {_go_quote(text)}: invalid syntax")
    value = int(text)
    if len(digits) <= bits * 3 // 10 - 1:  # below 2**(bits-1) whatever the digits (10**18 < 2**63): no big ints
        return value
    limit = 1 << (bits - 1)
    if not -limit <= value < limit:
        raise ValueError(f"strconv.ParseInt: parsing {_go_quote(text)}: value out of range")
    return value


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def proxy_port_of(annotations: Mapping[str, str]) -> int | Denial:
    if PROXY_PORT_ANNOTATION not in annotations:
        return DEFAULT_PROXY_PORT
    fix = f"set annotation {PROXY_PORT_ANNOTATION} to a port number between 1 and 65535"
    try:
        port = go_parse_int(annotations[PROXY_PORT_ANNOTATION], 32)
    except ValueError as exc:
        return Denial(f"failed to parse proxy sidecar port: {exc} ({fix})", reason="InvalidProxyPort")
    if not 1 <= port <= 65535:
        return Denial(f"proxy sidecar port {port} not valid. Expected value to be between 1 and 65535 ({fix})",
                      reason="InvalidProxyPort")
    return port


def token_expiration(pod_annotations: Mapping[str, str], sa_annotations: Mapping[str, str]) -> int | Denial:
    """Pod annotation beats ServiceAccount annotation beats 3600; must lie in [3600, 86400]."""
    raw, source = pod_annotations.get(TOKEN_EXPIRATION_ANNOTATION, ""), "pod"
    if not raw:
        raw, source = sa_annotations.get(TOKEN_EXPIRATION_ANNOTATION, ""), "ServiceAccount"
    if not raw:
        return DEFAULT_TOKEN_EXPIRATION
    try:
        seconds = go_parse_int(raw, 64)
    except ValueError as exc:
        return Denial(f"{exc} ({_expiration_fix(source)})", reason="InvalidTokenExpiration")
    if not MIN_TOKEN_EXPIRATION <= seconds <= MAX_TOKEN_EXPIRATION:
        return Denial(f"token expiration {seconds} not valid. Expected value to be between "
                      f"{MIN_TOKEN_EXPIRATION} and {MAX_TOKEN_EXPIRATION} ({_expiration_fix(source)})",
                      reason="InvalidTokenExpiration")
    return seconds


def _expiration_fix(source: str) -> str:
    """The fix named in a token expiration denial (formatted only for a denial: the check runs per review)."""
    return (f"set the {source} annotation {TOKEN_EXPIRATION_ANNOTATION} to a whole number of seconds between "
            f"{MIN_TOKEN_EXPIRATION} and {MAX_TOKEN_EXPIRATION}")


_NO_SKIP: frozenset[str] = frozenset()


def skip_containers(annotations: Mapping[str, str]) -> frozenset[str]:
    raw = annotations.get(SKIP_CONTAINERS_ANNOTATION, "")
    if not raw:
        return _NO_SKIP  # the usual case, on every review: no set built
    return frozenset(name.strip() for name in raw.split(";") if name.strip())


def env_candidates(sa: ServiceAccountInfo, config: MutationConfig, custom_active: bool) -> list[tuple[str, str]]:
    """The env vars to inject, in the reference's order, without empty values."""
    tenant = sa.annotations.get(TENANT_ID_ANNOTATION, config.tenant_id)  # present, even empty, wins
    candidates = [
        (ENV_CLIENT_ID, sa.annotations.get(CLIENT_ID_ANNOTATION, "")),
        (ENV_TENANT_ID, tenant),
        (ENV_FEDERATED_TOKEN_FILE, TOKEN_FILE_PATH),
        (ENV_AUTHORITY_HOST, config.authority_host),
    ]
    if custom_active and config.custom_endpoint is not None:
        custom = config.custom_endpoint
        candidates += [
            (ENV_KUBERNETES_TOKEN_PROXY, custom.token_proxy),
            (ENV_KUBERNETES_SNI_NAME, custom.sni_name),
            (ENV_KUBERNETES_CA_FILE, CA_FILE_PATH),
            (ENV_KUBERNETES_CA_DATA, custom.ca_data),
        ]
    return [(name, value) for name, value in candidates if value]


def projected_volume(name: str, expiration: int, config: MutationConfig, custom_active: bool) -> dict[str, Any]:
    custom = config.custom_endpoint if custom_active else None
    sources: list[dict[str, Any]] = [{"serviceAccountToken": {
        "path": TOKEN_RELATIVE_PATH,
        "expirationSeconds": expiration,
        "audience": custom.audience if custom else config.audience,
    }}]
    if custom and custom.ca_configmap_name:
        sources.append({"configMap": {"name": custom.ca_configmap_name,
                                      "items": [{"key": "ca.crt", "path": CA_RELATIVE_PATH}], "optional": False}})
    if custom and custom.ctb_signer_name:
        bundle: dict[str, Any] = {"signerName": custom.ctb_signer_name}
        if custom.ctb_label_selector is not None:
            bundle["labelSelector"] = custom.ctb_label_selector
        bundle.update({"path": CA_RELATIVE_PATH, "optional": False})
        sources.append({"clusterTrustBundle": bundle})
    return {"name": name, "projected": {"sources": sources}}


def _projected_json(expiration: int, config: MutationConfig, custom_active: bool) -> bytes:
    """orjson.dumps of the token volume's `projected` field (the same for every pod but for the expiration)."""
    return orjson.dumps(projected_volume("", expiration, config, custom_active)["projected"])


def _proxy_log_level(config: MutationConfig) -> str:
    return config.log_level if config.log_level in ("", "info", "debug", "trace", "all") else ""


def proxy_init_container(port: int, config: MutationConfig) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": PROXY_INIT_CONTAINER_NAME,
        "image": config.proxy_init_image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
            "privileged": True,
            "runAsNonRoot": False,
            "runAsUser": 0,
        },
        "env": [{"name": "PROXY_PORT", "value": str(port)}],
    }
    if config.proxy_init_resources:
        container["resources"] = config.proxy_init_resources
    return container


def proxy_sidecar_container(port: int, config: MutationConfig) -> dict[str, Any]:
    level = _proxy_log_level(config)
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER_NAME,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "args": [f"--proxy-port={port}", f"--log-level={level}"],
        "ports": [{"containerPort": port}],
        "lifecycle": {"postStart": {"exec": {
            "command": ["/proxy", f"--proxy-port={port}", "--probe", f"--log-level={level}"]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    if config.proxy_resources:
        container["resources"] = config.proxy_resources
    if config.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def _escape(token: str) -> str:
    """RFC 6901 reference token escaping."""
    return token.replace("~", "~0").replace("/", "~1")


_STATUS_PATH = orjson.dumps(f"/metadata/annotations/{_escape(STATUS_ANNOTATION)}")
_STATUS_ADD_OP_HEAD = b'{"op":"add","path":' + _STATUS_PATH + b',"value":'
_STATUS_REPLACE_OP_HEAD = b'{"op":"replace","path":' + _STATUS_PATH + b',"value":'
_STATUS_MAP_OP_HEAD = b'{"op":"add","path":"/metadata/annotations","value":{' + orjson.dumps(STATUS_ANNOTATION) + b":"


def _same_volume(wanted: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """Equal, ignoring `projected.defaultMode` which the API server adds when it re-defaults a patched pod."""
    projected = actual.get("projected")
    if isinstance(projected, dict) and "defaultMode" in projected:
        actual = {**actual, "projected": {k: v for k, v in projected.items() if k != "defaultMode"}}
    return dict(wanted) == dict(actual)


class _ListEditor:
    """Emits add/replace ops for one array of the pod while tracking how earlier ops shifted its indices."""

    def __init__(self, path: str, current: list[Any] | None, ops: list[bytes]) -> None:
        self.path = path
        self._items: list[tuple[bool, Any]] | None = None if current is None else [(False, c) for c in current]
        self._ops = ops

    def has(self, name: str) -> bool:
        return any(item.get("name") == name for _, item in self._items or [])

    def existing(self) -> list[tuple[int, dict[str, Any]]]:
        return [(i, item) for i, (new, item) in enumerate(self._items or []) if not new]

    def append(self, item: Any) -> None:
        self._insert(item, at_start=False)

    def prepend(self, item: Any) -> None:
        self._insert(item, at_start=True)

    def _insert(self, item: Any, *, at_start: bool) -> None:
        if self._items is None:
            self._items = [(True, item)]
            self._ops.append(orjson.dumps({"op": "add", "path": self.path, "value": [item]}))
        elif at_start:
            self._items.insert(0, (True, item))
            self._ops.append(orjson.dumps({"op": "add", "path": f"{self.path}/0", "value": item}))
        else:
            self._items.append((True, item))
            self._ops.append(orjson.dumps({"op": "add", "path": f"{self.path}/-", "value": item}))


_MOUNT_JSON_TAIL = b',"mountPath":' + orjson.dumps(MOUNT_PATH) + b',"readOnly":true}'


def _env_append_ops(fragments: _AccountFragments, where: bytes) -> tuple[bytes, ...]:
    """The ops that append every env var of `fragments` to the env list of the container at `where`, memoised per
    path (bounded; a pod has a few containers): a lookup instead of joining each op."""
    known = fragments.env_append_ops.get(where)
    if known is None:
        head = b'{"op":"add","path":"' + where + b'/env/-","value":'
        known = _bounded_put(fragments.env_append_ops, where, tuple(head + encoded for encoded in
                                                                    fragments.env_ops_tails), 64)
    return known


K = TypeVar("K")
V = TypeVar("V")


def _bounded_put(memo: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store `value` in a per-ServiceAccount memo of `_AccountFragments`, starting it over when it holds `limit`."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


class _ContainerInjector:
    """Adds the env vars and the mount to each container that is not skipped, recording what it did."""

    def __init__(self, fragments: _AccountFragments, volume_name: str, name_json: bytes, skip: frozenset[str],
                 result: MutationResult) -> None:
        self._fragments = fragments
        self._volume_name = volume_name
        self._mount_json = b'{"name":' + name_json + _MOUNT_JSON_TAIL  # orjson.dumps(self._mount())
        self._skip = skip
        self._result = result

    def _mount(self) -> dict[str, Any]:
        return {"name": self._volume_name, "mountPath": MOUNT_PATH, "readOnly": True}

    def _skipped(self, container: dict[str, Any]) -> bool:
        name = container.get("name", "")
        if self._skip and name in self._skip:  # usually empty: no need to hash the name
            self._result.skipped_containers.append(name)
            return True
        self._result.injected_containers.append(name)
        return False

    def inject_new(self, container: dict[str, Any]) -> dict[str, Any]:
        """A container we create gets everything in one `add` op."""
        if not self._skipped(container):
            current: list[dict[str, Any]] = list(container.get("env") or [])
            present = {entry.get("name") for entry in current}
            container["env"] = current + [{"name": name, "value": value} for name, value in self._fragments.env
                                          if name not in present]
            if not container["env"]:
                del container["env"]
            container["volumeMounts"] = [self._mount()]
        return container

    def inject_existing(self, container: dict[str, Any], where: bytes, ops: list[bytes]) -> None:
        """Append the ops for a container of the pod: the env vars it does not set yet, then the mount (added, or
        replacing a same-named mount that differs). Inlined rather than a _ListEditor, and spliced from encoded
        pieces: this runs for every container of every pod.

        Also the shape check of the env and volumeMounts entries (the conditions of _check_container, which
        pod_ref(..., entries=False) leaves to this pass): raises PodShapeError, and mutate_pod runs the full check
        for its message. Skipped containers are checked too.
        """
        current = container.get("env")
        mounts = container.get("volumeMounts")
        if self._skipped(container):
            if not ((current is None or _well_formed(current)) and (mounts is None or _well_formed(mounts))):
                raise PodShapeError(f"{where.decode()}: a malformed env or volumeMounts entry")
            return
        fragments = self._fragments
        present: list[str] = []
        if current is not None:
            if type(current) is not list:
                raise PodShapeError(f"{where.decode()}/env is not a list")
            lengths = fragments.env_name_lengths  # a cheap test first: hashing every name costs more
            for entry in current:
                if type(entry) is not dict:
                    raise PodShapeError(f"{where.decode()}/env: an entry is not an object")
                name = entry.get("name")
                if not isinstance(name, str):
                    if name is None:
                        continue
                    raise PodShapeError(f"{where.decode()}/env: a name is not a string")
                if lengths >> len(name) & 1 and name in fragments.env_name_set:
                    # The user's value is kept (the reference does the same); policy WI005 compares it.
                    self._result.kept_env.append((container.get("name", ""), name, entry.get("value")))
                    present.append(name)
        if not fragments.env_ops_tails:
            pass  # no env var to inject
        elif current is None:  # the whole list in one op
            ops.append(b'{"op":"add","path":"' + where + b'/env","value":' + fragments.env_list_json + b"}")
        elif not present:  # the usual case: the same ops for every pod at this path
            ops.extend(_env_append_ops(fragments, where))
        else:
            ops.extend([op for name, op in zip(fragments.env_names, _env_append_ops(fragments, where), strict=True)
                        if name not in present])
        if mounts is None:
            ops.append(b'{"op":"add","path":"' + where + b'/volumeMounts","value":[' + self._mount_json + b"]}")
            return
        if type(mounts) is not list:
            raise PodShapeError(f"{where.decode()}/volumeMounts is not a list")
        wanted = self._volume_name
        found = -1
        for index, existing in enumerate(mounts):
            if type(existing) is not dict:
                raise PodShapeError(f"{where.decode()}/volumeMounts: an entry is not an object")
            name = existing.get("name")
            if name is not None and not isinstance(name, str):
                raise PodShapeError(f"{where.decode()}/volumeMounts: a name is not a string")
            if found < 0 and name == wanted:
                found = index
        if found < 0:
            ops.append(b'{"op":"add","path":"' + where + b'/volumeMounts/-","value":' + self._mount_json + b"}")
        elif dict(mounts[found]) != self._mount():
            ops.append(b'{"op":"replace","path":"' + where + b"/volumeMounts/" + str(found).encode()
                       + b'","value":' + self._mount_json + b"}")


_LIST_FIELDS = ("containers", "initContainers", "volumes")


def _check_shape(pod: JSON, entries: bool = True) -> None:
    """Reject what the API server's typed decoder would reject, naming the field (never a traceback).

    The first offending field in this order is the one named. `entries=False`: all but the containers' env and
    volumeMounts entries (see pod_ref).
    """
    if not isinstance(pod, dict):
        raise PodShapeError(f"request.object must be a Pod object, got {type(pod).__name__}")
    kind = pod.get("kind")
    if kind not in (None, "Pod"):
        raise PodShapeError(f"request.object.kind is {kind!r}; this webhook only mutates Pods")
    metadata = pod.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise PodShapeError("metadata must be an object")
        # Each field is read once, and spelled out rather than looped over: this runs for every review.
        _check_optional_string(metadata.get("name"), "metadata.", "name")
        _check_optional_string(metadata.get("generateName"), "metadata.", "generateName")
        _check_optional_string(metadata.get("namespace"), "metadata.", "namespace")
        _check_string_map(metadata.get("annotations"), "metadata.", "annotations")
        _check_string_map(metadata.get("labels"), "metadata.", "labels")
    spec = pod.get("spec")
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise PodShapeError("spec must be an object")
    _check_optional_string(spec.get("serviceAccountName"), "spec.", "serviceAccountName")
    host_network = spec.get("hostNetwork")
    if host_network is not None and not isinstance(host_network, bool):
        raise PodShapeError("spec.hostNetwork must be a boolean")
    for key in _LIST_FIELDS:
        items = spec.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise PodShapeError(f"spec.{key} must be a list")
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise PodShapeError(f"spec.{key}[{index}] must be an object")
            name = item.get("name")
            if name is not None and not isinstance(name, str):
                raise PodShapeError(f"spec.{key}[{index}].name must be a string")
            if entries and key != "volumes":
                _check_container(item, key, index)


def _well_formed(items: Any) -> bool:
    """Cheaply, what _check_container accepts: a list of objects whose names are strings, null or absent.

    (The mutation pass relies on the two agreeing: an entry it rejects must fail the full check too.)"""
    if type(items) is not list:
        return False
    for item in items:
        if type(item) is not dict:
            return False
        name = item.get("name")
        if name is not None and type(name) is not str:
            return False
    return True


def _check_container(container: dict[str, Any], list_name: str, position: int) -> None:
    for key in ("env", "volumeMounts"):
        items = container.get(key)
        if items is None or _well_formed(items):
            continue
        where = f"spec.{list_name}[{position}]"  # only built for an error: this runs for every container
        if not isinstance(items, list):
            raise PodShapeError(f"{where}.{key} must be a list")
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise PodShapeError(f"{where}.{key}[{index}] must be an object")
            if item.get("name") is not None and not isinstance(item["name"], str):
                raise PodShapeError(f"{where}.{key}[{index}].name must be a string")


def _check_optional_string(value: JSON, parent: str, field: str) -> None:
    """`parent + field` must be absent, null or a string (the name is only joined for an error)."""
    if value is not None and not isinstance(value, str):
        raise PodShapeError(f"{parent}{field} must be a string")


def _check_string_map(value: JSON, parent: str, field: str) -> None:
    """`parent + field` must be absent or an object of strings (the name is only joined for an error)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise PodShapeError(f"{parent}{field} must be an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise PodShapeError(f"{parent}{field}[{key!r}] must be a string, got {type(item).__name__}")
