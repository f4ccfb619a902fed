"""The pure mutation core: (pod JSON, ServiceAccount, config) -> JSON Patch operations, or a denial.

No I/O and no globals. The pod is the raw request JSON (plain dicts and lists) and is never modified or
re-serialised: every change is an RFC 6902 operation at a precise path, mostly `add`, so fields we do not know
about (new PodSpec fields, native-sidecar `restartPolicy`, ...) survive untouched — the reference's typed
round-trip dropped them (Azure/azure-workload-identity#1312).

The steps follow the reference v1.6.0 (README "Behaviour and compatibility"): the pod's shape (core/shape.py, before
this module is called), ServiceAccount, proxy, token expiration, then env and mount per container (init containers
first), the proxy containers, the projected volume, and our status annotation. Deliberate differences:
`inject-proxy-sidecar: "false"` does not inject (#1210), the proxy port is range-checked, proxy containers may get
resources from config (#1441), and denials name the annotation to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.core.annotations import proxy_port, proxy_requested, skipped_container_names, token_expiration
from webhook.core.constants import STATUS_ANNOTATION
from webhook.core.injected import (
    env_to_inject,
    projected_volume,
    proxy_init_container,
    proxy_sidecar_container,
    status_annotation,
    token_volume_name,
    volume_mount,
)
from webhook.core.model import Denial, MutationConfig, MutationResult, PatchOp, PodRef, ServiceAccountInfo


def service_account_not_found(name: str) -> Denial:
    return Denial(f'serviceaccounts "{name}" not found', reason="ServiceAccountNotFound")


def mutate_pod(pod: dict[str, Any], ref: PodRef, sa: ServiceAccountInfo | None,
               config: MutationConfig) -> MutationResult:
    """The JSON Patch that gives `pod` its workload identity, or the reference's denial.

    `ref` is what `read_pod` returned for this pod: its shape is checked, so every field read here has the type the
    shape check promises. `sa` is None when the pod's ServiceAccount does not exist.
    """
    if sa is None:
        return MutationResult(denial=service_account_not_found(ref.service_account))
    metadata: dict[str, Any] = pod.get("metadata") or {}
    annotations: dict[str, str] = metadata.get("annotations") or {}
    spec: dict[str, Any] = pod.get("spec") or {}

    port: int | None = None
    if proxy_requested(annotations):
        if spec.get("hostNetwork") is True:
            return MutationResult(denial=Denial("hostNetwork is set to true, cannot inject proxy sidecar",
                                                reason="ProxyWithHostNetwork"))
        requested_port = proxy_port(annotations)
        if isinstance(requested_port, Denial):
            return MutationResult(denial=requested_port)
        port = requested_port
    expiration = token_expiration(annotations, sa.annotations)
    if isinstance(expiration, Denial):
        return MutationResult(denial=expiration)

    custom = config.custom_endpoint
    custom_active = custom is not None and annotations.get(custom.annotation_key, "").lower() == "true"
    env = env_to_inject(sa, config, custom_active)
    volume_name = token_volume_name(metadata)
    result = MutationResult(expiration_seconds=expiration)
    patch = result.patch

    if pod.get("metadata") is None:
        patch.append({"op": "add", "path": "/metadata", "value": {"namespace": ref.namespace}})
    elif metadata.get("namespace") != ref.namespace:
        patch.append({"op": "replace" if "namespace" in metadata else "add", "path": "/metadata/namespace",
                      "value": ref.namespace})
    if pod.get("spec") is None:
        patch.append({"op": "add", "path": "/spec", "value": {}})

    containers = _Containers(spec, env, volume_mount(volume_name), skipped_container_names(annotations), result)
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            containers.inject(container, f"/spec/{key}/{index}")
    if port is not None:
        containers.add_missing("initContainers", proxy_init_container(port, config), first=False)
        containers.add_missing("initContainers" if config.native_sidecar else "containers",
                               proxy_sidecar_container(port, config), first=True)

    volume_op = _volume_op(spec.get("volumes"), projected_volume(volume_name, expiration, config, custom_active))
    if volume_op is not None:
        patch.append(volume_op)
    if config.status_annotation:
        status = status_annotation(sa, list(env), volume_name, config)
        status_op = _status_op(metadata.get("annotations"), status)
        if status_op is not None:
            patch.append(status_op)
    return result


class _Containers:
    """Gives each container that is not skipped the env vars it does not set yet and the token mount, and adds the
    proxy containers, recording in `result` which containers were injected or skipped and which injected names the
    user already sets."""

    def __init__(self, spec: Mapping[str, Any], env: dict[str, str], mount: dict[str, Any], skip: frozenset[str],
                 result: MutationResult) -> None:
        self._spec = spec
        self._env = env
        self._mount = mount
        self._skip = skip
        self._result = result
        self._has_list = {key: spec.get(key) is not None for key in ("initContainers", "containers")}

    def _skipped(self, container: Mapping[str, Any]) -> bool:
        name = container.get("name") or ""  # a missing or null name decodes as "" in the reference
        (self._result.skipped_containers if name in self._skip else self._result.injected_containers).append(name)
        return name in self._skip

    def inject(self, container: Mapping[str, Any], path: str) -> None:
        """The ops for one of the pod's containers: the env vars it does not set yet, then the mount (added, or
        replacing a same-named mount that differs)."""
        if self._skipped(container):
            return
        patch = self._result.patch
        env: list[dict[str, Any]] | None = container.get("env")
        present = set()
        for entry in env or []:
            name = entry.get("name")
            if name in self._env:  # the user's value is kept, as the reference does; policy WI005 compares it
                present.add(name)
                self._result.kept_env.append((container.get("name") or "", name, entry.get("value")))
        missing = [{"name": name, "value": value} for name, value in self._env.items() if name not in present]
        if env is None:
            if missing:
                patch.append({"op": "add", "path": f"{path}/env", "value": missing})
        else:
            patch.extend({"op": "add", "path": f"{path}/env/-", "value": entry} for entry in missing)

        mounts: list[dict[str, Any]] | None = container.get("volumeMounts")
        ours = [index for index, mount in enumerate(mounts or []) if mount.get("name") == self._mount["name"]]
        if mounts is None:
            patch.append({"op": "add", "path": f"{path}/volumeMounts", "value": [dict(self._mount)]})
        elif not ours:
            patch.append({"op": "add", "path": f"{path}/volumeMounts/-", "value": dict(self._mount)})
        elif mounts[ours[0]] != self._mount:
            patch.append({"op": "replace", "path": f"{path}/volumeMounts/{ours[0]}", "value": dict(self._mount)})

    def add_missing(self, key: str, container: dict[str, Any], first: bool) -> None:
        """Add a container we create (unless the pod has one of that name: a second run), at the start of the list
        or at its end, with the env and mount in the one `add` op that creates it."""
        if any(existing.get("name") == container["name"] for existing in self._spec.get(key) or []):
            return
        if not self._skipped(container):
            present = {entry["name"] for entry in container.get("env", [])}
            env = container.get("env", []) + [{"name": name, "value": value} for name, value in self._env.items()
                                              if name not in present]
            if env:
                container["env"] = env
            container["volumeMounts"] = [dict(self._mount)]
        if self._has_list[key]:
            self._result.patch.append({"op": "add", "path": f"/spec/{key}/{'0' if first else '-'}", "value": container})
        else:  # the pod has no such list yet: the op creates it
            self._result.patch.append({"op": "add", "path": f"/spec/{key}", "value": [container]})
            self._has_list[key] = True


def _escape(token: str) -> str:
    """RFC 6901 reference token escaping."""
    return token.replace("~", "~0").replace("/", "~1")


def _status_op(annotations: Mapping[str, str] | None, value: str) -> PatchOp | None:
    """The op that sets the status annotation to `value` (none when it is already set so)."""
    if annotations is None:
        return {"op": "add", "path": "/metadata/annotations", "value": {STATUS_ANNOTATION: value}}
    current = annotations.get(STATUS_ANNOTATION)
    if current == value:
        return None
    return {"op": "add" if current is None else "replace",
            "path": f"/metadata/annotations/{_escape(STATUS_ANNOTATION)}", "value": value}


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
