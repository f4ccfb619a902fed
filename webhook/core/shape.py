"""The pod's shape, checked once before anything else reads it.

The API server's typed decoder rejects a pod whose fields have the wrong JSON types; we never decode into types (that
drops fields we do not know, the reference's bug #1312), so the fields the mutation reads are checked here instead,
and a bad one is named in the denial rather than surfacing as a traceback. After `read_pod` the mutation may rely
on: metadata and spec are objects (or absent); names are strings (or absent/null); annotations and labels map
strings to strings; the container and volume lists are lists of objects; each container's env and volumeMounts are
lists of objects whose names are strings (or absent/null); hostNetwork is a boolean.
"""

from __future__ import annotations

from typing import Any

from webhook.core.model import Denial, PodRef


class PodShapeError(ValueError):
    """The object is not a decodable Pod; the message names the offending field."""


def read_pod(pod: Any, request_namespace: str) -> PodRef | Denial:
    """Check the whole pod's shape, then say where it lives, what it is called and which ServiceAccount it runs as;
    or the reference's denial for a pod it cannot decode, naming the first offending field.

    The namespace is the request's. When the request carries none we use the pod's own `metadata.namespace`: the
    reference would look the ServiceAccount up in no namespace at all and deny, but the API server always sets
    `request.namespace` for a namespaced object, so only hand-made reviews (`mutate`, `check`, tests) differ.
    """
    try:
        check_pod_shape(pod)
    except PodShapeError as exc:
        return Denial(f"couldn't decode pod: {exc}", reason="BadPod")
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace = request_namespace or metadata.get("namespace") or ""
    return PodRef(namespace, display_name(pod), spec.get("serviceAccountName") or "default")


def display_name(obj: Any) -> str:
    """What logs and messages call an object: `metadata.name`, or `<generateName>*` when the API server names it
    after admission; "" when it has neither (or is not an object)."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(metadata, dict):
        return ""
    name, prefix = metadata.get("name"), metadata.get("generateName")
    if isinstance(name, str) and name:
        return name
    return f"{prefix}*" if isinstance(prefix, str) and prefix else ""


def check_pod_shape(pod: Any) -> None:
    """Raise PodShapeError naming the first offending field, in the order the fields are listed above."""
    if not isinstance(pod, dict):
        raise PodShapeError(f"request.object must be a Pod object, got {type(pod).__name__}")
    kind = pod.get("kind")
    if kind not in (None, "Pod"):
        raise PodShapeError(f"request.object.kind is {kind!r}; this webhook only mutates Pods")
    metadata = pod.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise PodShapeError("metadata must be an object")
        for key in ("name", "generateName", "namespace"):
            _check_name(metadata.get(key), f"metadata.{key}")
        for key in ("annotations", "labels"):
            _check_string_map(metadata.get(key), f"metadata.{key}")
    spec = pod.get("spec")
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise PodShapeError("spec must be an object")
    _check_name(spec.get("serviceAccountName"), "spec.serviceAccountName")
    if not isinstance(spec.get("hostNetwork"), (bool, type(None))):
        raise PodShapeError("spec.hostNetwork must be a boolean")
    for key in ("containers", "initContainers"):
        containers = spec.get(key)
        _check_list(containers, f"spec.{key}")
        for index, container in enumerate(containers or []):
            where = f"spec.{key}[{index}]"
            _check_named_object(container, where)
            for nested in ("env", "volumeMounts"):
                entries = container.get(nested)
                _check_list(entries, f"{where}.{nested}")
                for position, entry in enumerate(entries or []):
                    _check_named_object(entry, f"{where}.{nested}[{position}]")
    volumes = spec.get("volumes")
    _check_list(volumes, "spec.volumes")
    for index, volume in enumerate(volumes or []):
        _check_named_object(volume, f"spec.volumes[{index}]")


def _check_list(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, list):
        raise PodShapeError(f"{where} must be a list")


def _check_named_object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise PodShapeError(f"{where} must be an object")
    _check_name(value.get("name"), f"{where}.name")


def _check_name(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, str):
        raise PodShapeError(f"{where} must be a string")


def _check_string_map(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise PodShapeError(f"{where} must be an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise PodShapeError(f"{where}[{key!r}] must be a string, got {type(item).__name__}")
