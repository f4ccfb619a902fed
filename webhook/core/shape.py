"""The pod's shape, checked before anything else reads it.

The API server's typed decoder rejects a pod whose fields have the wrong JSON types; we never decode into types (that
drops fields we do not know, the reference's bug #1312), so the fields the mutation reads are checked here instead,
and a bad one is named in the denial rather than surfacing as a traceback. After `check_pod_shape` the mutation may
rely on: metadata and spec are objects (or absent); names are strings (or absent/null); annotations and labels map
strings to strings; the container and volume lists are lists of objects; each container's env and volumeMounts
are lists of objects whose names are strings (or absent/null); hostNetwork is a boolean.
"""

from __future__ import annotations

from typing import Any

from webhook.core.model import Denial, PodRef


class PodShapeError(ValueError):
    """The object is not a decodable Pod; the message names the offending field."""


def check_pod_shape(pod: Any, entries: bool = True) -> None:
    """Raise PodShapeError naming the first offending field, in the order the fields are listed below.

    `entries=False` leaves out the entries of each container's env and volumeMounts (not the lists themselves):
    the serving path has the mutation check those as it walks them (see mutate_pod), so that every review reads
    each of its dozens of env entries once instead of twice."""
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
            if not isinstance(metadata.get(key), NAME_TYPES):
                raise PodShapeError(f"metadata.{key} must be a string")
        for key in ("annotations", "labels"):
            _check_string_map(metadata.get(key), f"metadata.{key}")
    spec = pod.get("spec")
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise PodShapeError("spec must be an object")
    if not isinstance(spec.get("serviceAccountName"), NAME_TYPES):
        raise PodShapeError("spec.serviceAccountName must be a string")
    if not isinstance(spec.get("hostNetwork"), (bool, type(None))):
        raise PodShapeError("spec.hostNetwork must be a boolean")
    for key in ("containers", "initContainers", "volumes"):
        _check_named_objects(spec.get(key), f"spec.{key}", _NESTED[key], entries)


# The lists of named objects inside each entry of the pod's lists, checked right after the entry.
_NESTED = {"containers": ("env", "volumeMounts"), "initContainers": ("env", "volumeMounts"), "volumes": ()}


def pod_ref(pod: Any, request_namespace: str, entries: bool = True) -> PodRef:
    """Check the pod's shape (`entries=False`: all but the containers' env and volumeMounts entries, for a caller
    that passes the ref to mutate_pod, whose walk checks those), then name where it lives, its token volume's hash
    input and its ServiceAccount.

    The namespace is the request's. When the request carries none we use the pod's own `metadata.namespace`: the
    reference would look the ServiceAccount up in no namespace at all and deny, but the API server always sets
    `request.namespace` for a namespaced object, so only hand-made reviews (`mutate`, `check`, tests) differ.
    The hash input is `metadata.name`, or `generateName + " (prefix)"` for pods the API server names after admission
    (as the reference does, so the volume name matches it).
    """
    check_pod_shape(pod, entries)
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    name = metadata.get("name") or f"{metadata.get('generateName') or ''} (prefix)"
    namespace = request_namespace or metadata.get("namespace") or ""
    return PodRef(namespace, name, spec.get("serviceAccountName") or "default")


def shape_denial(exc: PodShapeError) -> Denial:
    """The reference's denial for a pod it cannot decode (the message names the field)."""
    return Denial(f"couldn't decode pod: {exc}", reason="BadPod")


def bad_pod(pod: Any) -> Denial | None:
    """The denial for a pod that fails the shape check, or None."""
    try:
        check_pod_shape(pod)
    except PodShapeError as exc:
        return shape_denial(exc)
    return None


def _check_named_objects(items: Any, where: str, nested: tuple[str, ...] = (), entries: bool = True) -> None:
    """`where` must be absent/null or a list of objects whose `name` is a string, null or absent; each object's
    `nested` fields (a container's env and volumeMounts) likewise, checked right after the object itself (only
    that they are lists, without `entries`)."""
    if items is None:
        return
    if not isinstance(items, list):
        raise PodShapeError(f"{where} must be a list")
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), NAME_TYPES):
            _raise_for_entry(item, f"{where}[{index}]")
        for key in nested:
            if entries:
                _check_named_objects(item.get(key), f"{where}[{index}].{key}")
            elif not isinstance(item.get(key), (list, type(None))):
                raise PodShapeError(f"{where}[{index}].{key} must be a list")


NAME_TYPES = (str, type(None))  # a name is a string, null or absent (also for mutate_pod's walk)


def _raise_for_entry(item: Any, where: str) -> None:
    """Name what is wrong with an entry `_check_named_objects` refused (its path is only formatted for the error: a
    pod has dozens of env entries, each checked on every review)."""
    if not isinstance(item, dict):
        raise PodShapeError(f"{where} must be an object")
    raise PodShapeError(f"{where}.name must be a string")


def _check_string_map(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise PodShapeError(f"{where} must be an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise PodShapeError(f"{where}[{key!r}] must be a string, got {type(item).__name__}")
