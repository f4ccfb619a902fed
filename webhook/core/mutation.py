"""The pure mutation core: (pod JSON, ServiceAccount, config) -> JSON Patch operations, or a denial.

No I/O and no globals. The pod is the raw request JSON (plain dicts and lists) and is never modified or
re-serialised: every change is an RFC 6902 operation at a precise path, mostly `add`, so fields we do not know
about (new PodSpec fields, native-sidecar `restartPolicy`, ...) survive untouched — the reference's typed
round-trip dropped them (Azure/azure-workload-identity#1312).

The steps follow the reference v1.6.0 in order (README "Compatibility"): shape check, ServiceAccount, proxy, token
expiration, then env and mount per container (init containers first), the projected volume, and our status
annotation. Deliberate differences: `inject-proxy-sidecar: "false"` does not inject (#1210), the proxy port is
range-checked, proxy containers may get resources from config (#1441), and denials name the annotation to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.cli.config import MutationConfig
from webhook.core.annotations import go_parse_int, proxy_port_of, skip_containers, token_expiration, wants_proxy
from webhook.core.constants import PROXY_CONTAINER_NAME, PROXY_INIT_CONTAINER_NAME, STATUS_ANNOTATION
from webhook.core.injected import (
    annotations_hash,
    env_candidates,
    projected_volume,
    proxy_init_container,
    proxy_sidecar_container,
    status_annotation,
    volume_mount,
    volume_name_for,
)
from webhook.core.model import Denial, MutationResult, PatchOp, PodRef, ServiceAccountInfo
from webhook.core.shape import NAME_TYPES, PodShapeError, bad_pod, pod_ref, shape_denial

# The names other modules import from here (the core's one entry point).
__all__ = [
    "Denial", "MutationResult", "PatchOp", "PodRef", "PodShapeError", "ServiceAccountInfo", "annotations_hash",
    "bad_pod", "go_parse_int", "mutate_pod", "pod_ref", "service_account_not_found", "shape_denial",
    "skip_containers", "status_annotation", "volume_name_for",
]


def service_account_not_found(name: str) -> Denial:
    return Denial(f'serviceaccounts "{name}" not found', reason="ServiceAccountNotFound")


def mutate_pod(pod: Any, request_namespace: str, sa: ServiceAccountInfo | None, config: MutationConfig,
               ref: PodRef | None = None) -> MutationResult:
    """Compute the JSON Patch that gives `pod` its workload identity, or the reference's denial.

    `sa` is None when the pod's ServiceAccount does not exist. `ref` is `pod_ref(pod, request_namespace,
    entries=False)` when the caller already has it (the shell computes it to find the ServiceAccount).

    The pod's shape is checked in two parts, each entry read once: `pod_ref(..., entries=False)` checks all but the
    entries of the containers' env and volumeMounts, which the container walk below checks as it reads them. A pod
    that fails either gets the full check's denial (`bad_pod`: the first offending field, in its order), and so
    does a pod denied for another reason before the walk reached a bad entry: the answer is the one a full check
    up front would give (tests/test_shape_split.py holds the two to each other).
    """
    try:
        result = _mutate(pod, request_namespace, sa, config, ref)
    except PodShapeError as exc:  # an env or volumeMounts entry the walk could not read
        return MutationResult(denial=bad_pod(pod) or shape_denial(exc))
    if result.denial is not None and result.denial.reason != "BadPod":
        shape = bad_pod(pod)  # a malformed entry the walk did not reach comes first, as with the full check
        if shape is not None:
            return MutationResult(denial=shape)
    return result


def _mutate(pod: Any, request_namespace: str, sa: ServiceAccountInfo | None, config: MutationConfig,
            ref: PodRef | None) -> MutationResult:
    if ref is None:
        try:
            ref = pod_ref(pod, request_namespace, entries=False)
        except PodShapeError as exc:
            return MutationResult(denial=shape_denial(exc))
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
    env = env_candidates(sa, config, custom_active)
    volume_name = volume_name_for(ref.name)
    result = MutationResult(volume_name=volume_name, env_names=list(env),
                            proxy_injected=proxy_port is not None, expiration_seconds=expiration)
    patch = result.patch

    if pod.get("metadata") is None:
        patch.append({"op": "add", "path": "/metadata", "value": {"namespace": ref.namespace}})
        metadata = {"namespace": ref.namespace}
    elif metadata.get("namespace") != ref.namespace:
        patch.append({"op": "replace" if "namespace" in metadata else "add", "path": "/metadata/namespace",
                      "value": ref.namespace})
    if pod.get("spec") is None:
        patch.append({"op": "add", "path": "/spec", "value": {}})

    injector = _ContainerInjector(env, volume_name, skip_containers(annotations), result)
    init_list = _ListEditor("/spec/initContainers", spec.get("initContainers"), patch)
    app_list = _ListEditor("/spec/containers", spec.get("containers"), patch)
    if proxy_port is not None:
        if not init_list.has(PROXY_INIT_CONTAINER_NAME):
            init_list.append(injector.inject_new(proxy_init_container(proxy_port, config)))
        sidecar_list = init_list if config.native_sidecar else app_list
        if not sidecar_list.has(PROXY_CONTAINER_NAME):
            sidecar_list.prepend(injector.inject_new(proxy_sidecar_container(proxy_port, config)))
    for editor in (init_list, app_list):
        # The pod's own containers, at their index after the containers we put first.
        for index, container in enumerate(editor.current or (), start=editor.prepended):
            injector.inject_existing(container, f"{editor.path}/{index}", patch)

    volume_op = _volume_op(spec.get("volumes"), projected_volume(volume_name, expiration, config, custom_active))
    if volume_op is not None:
        patch.append(volume_op)
    if config.status_annotation:
        status_op = _status_op(metadata.get("annotations"),
                               status_annotation(sa, result.env_names, volume_name, config))
        if status_op is not None:
            patch.append(status_op)
    return result


def _escape(token: str) -> str:
    """RFC 6901 reference token escaping."""
    return token.replace("~", "~0").replace("/", "~1")


_STATUS_PATH = f"/metadata/annotations/{_escape(STATUS_ANNOTATION)}"


def _status_op(annotations: Mapping[str, str] | None, value: str) -> PatchOp | None:
    """The op that sets the status annotation to `value` (none when it is already set so)."""
    if annotations is None:
        return {"op": "add", "path": "/metadata/annotations", "value": {STATUS_ANNOTATION: value}}
    current = annotations.get(STATUS_ANNOTATION)
    if current == value:
        return None
    return {"op": "add" if current is None else "replace",
            "path": _STATUS_PATH, "value": value}


def _volume_op(volumes: list[dict[str, Any]] | None, volume: dict[str, Any]) -> PatchOp | None:
    """The op that adds the token volume, or replaces a same-named one that differs (none when it is the same)."""
    if volumes is None:
        return {"op": "add", "path": "/spec/volumes", "value": [volume]}
    for index, existing in enumerate(volumes):
        if existing.get("name") == volume["name"]:
            if _same_volume(volume, existing):
                return None
            return {"op": "replace", "path": f"/spec/volumes/{index}", "value": volume}
    return {"op": "add", "path": "/spec/volumes/-", "value": volume}


def _same_volume(wanted: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """Equal, ignoring `projected.defaultMode` which the API server adds when it re-defaults a patched pod."""
    projected = actual.get("projected")
    if isinstance(projected, dict) and "defaultMode" in projected:
        actual = {**actual, "projected": {k: v for k, v in projected.items() if k != "defaultMode"}}
    return dict(wanted) == dict(actual)


class _ListEditor:
    """Adds containers to one list of the pod while tracking where the pod's own containers end up: only the proxy
    sidecar is ever put first, so they move by the number of containers put before them."""

    def __init__(self, path: str, current: list[dict[str, Any]] | None, patch: list[PatchOp]) -> None:
        self.path = path
        self.current = current  # the pod's own containers (None: the pod has no such list yet)
        self.prepended = 0  # how many containers we put before them
        self._added: list[str] = []  # the names of the containers we add
        self._patch = patch

    def has(self, name: str) -> bool:
        return name in self._added or any(item.get("name") == name for item in self.current or ())

    def append(self, item: dict[str, Any]) -> None:
        self._add(item, "-")

    def prepend(self, item: dict[str, Any]) -> None:
        self._add(item, "0")
        self.prepended += 1

    def _add(self, item: dict[str, Any], position: str) -> None:
        if self.current is not None or self._added:
            self._patch.append({"op": "add", "path": f"{self.path}/{position}", "value": item})
        else:  # the first container of a list the pod does not have: the op creates the list
            self._patch.append({"op": "add", "path": self.path, "value": [item]})
        self._added.append(item["name"])


class _ContainerInjector:
    """Gives each container that is not skipped the env vars it does not set yet and the token mount, recording
    which containers were injected or skipped and which injected names the user already sets."""

    def __init__(self, env: dict[str, str], volume_name: str, skip: frozenset[str], result: MutationResult) -> None:
        self._env = env
        self._mount = volume_mount(volume_name)
        self._skip = skip
        self._result = result

    def _skipped(self, container: dict[str, Any]) -> bool:
        name = container.get("name") or ""  # a missing or null name decodes as "" in the reference
        if name in self._skip:
            self._result.skipped_containers.append(name)
            return True
        self._result.injected_containers.append(name)
        return False

    def inject_new(self, container: dict[str, Any]) -> dict[str, Any]:
        """A container we create gets everything in the one `add` op that creates it."""
        if not self._skipped(container):
            current: list[dict[str, Any]] = list(container.get("env") or [])
            present = {entry.get("name") for entry in current}
            env = current + [{"name": name, "value": value} for name, value in self._env.items() if name not in present]
            if env:
                container["env"] = env
            container["volumeMounts"] = [dict(self._mount)]
        return container

    def inject_existing(self, container: dict[str, Any], path: str, patch: list[PatchOp]) -> None:
        """Append the ops for a container of the pod: the env vars it does not set yet, then the mount (added, or
        replacing a same-named mount that differs). Raises PodShapeError for an env or volumeMounts entry that is
        not an object with a string (or absent) name, in a skipped container too (see mutate_pod)."""
        current: list[dict[str, Any]] | None = container.get("env")
        mounts: list[dict[str, Any]] | None = container.get("volumeMounts")
        present = set()
        kept: list[tuple[str, Any]] = []  # (name, value) of each entry setting a name we inject, in pod order
        injected = self._env
        for entry in current or ():
            if not isinstance(entry, dict) or not isinstance(name := entry.get("name"), NAME_TYPES):
                raise PodShapeError(f"{path}/env has an entry that is not an object with a string name")
            if name in injected:
                present.add(name)
                kept.append((name, entry.get("value")))
        ours = None  # the index of the mount named like our volume
        for index, mount in enumerate(mounts or ()):
            if not isinstance(mount, dict) or not isinstance(name := mount.get("name"), NAME_TYPES):
                raise PodShapeError(f"{path}/volumeMounts has an entry that is not an object with a string name")
            if name == self._mount["name"] and ours is None:
                ours = index
        if self._skipped(container):
            return

        if kept:
            # The user's values are kept (the reference does the same); policy WI005 compares them.
            container_name = container.get("name") or ""
            self._result.kept_env.extend((container_name, name, value) for name, value in kept)
        if current is None:
            if self._env:
                patch.append({"op": "add", "path": f"{path}/env", "value": [
                    {"name": name, "value": value} for name, value in self._env.items()]})
        else:
            append_path = f"{path}/env/-"
            for name, value in self._env.items():
                if name not in present:
                    patch.append({"op": "add", "path": append_path, "value": {"name": name, "value": value}})

        if mounts is None:
            patch.append({"op": "add", "path": f"{path}/volumeMounts", "value": [dict(self._mount)]})
        elif ours is None:
            patch.append({"op": "add", "path": f"{path}/volumeMounts/-", "value": dict(self._mount)})
        elif mounts[ours] != self._mount:
            patch.append({"op": "replace", "path": f"{path}/volumeMounts/{ours}", "value": dict(self._mount)})
