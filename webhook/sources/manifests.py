"""Reading Kubernetes manifests from files, directories and stdin: multi-document YAML/JSON and `List` kinds.

Errors name the file (and document number) so that `mutate`/`check` can exit 2 with a useful message.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from webhook.core.constants import ANNOTATION_PREFIX
from webhook.core.model import ServiceAccountInfo

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """A manifest could not be read or parsed; the message names the file."""


class ObjectShapeError(ValueError):
    """An object's field has the wrong type (e.g. `metadata: x`); the message names the field."""


def shape_problem(obj: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a ServiceAccount or Namespace the webhook reads, or None.

    The API server only stores objects of the right shape, but files given to `--objects` and bodies sent to the
    webhook port may hold anything; each gets an error naming the field rather than a crash.
    """
    metadata = obj.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return f"metadata must be a mapping, got {type(metadata).__name__}"
    for name in ("name", "namespace", "resourceVersion"):
        value = metadata.get(name)
        if value is not None and not isinstance(value, str):
            return f"metadata.{name} must be a string, got {type(value).__name__}"
    for name in ("annotations", "labels"):
        values = metadata.get(name)
        if values is None:
            continue
        if not isinstance(values, dict):
            return f"metadata.{name} must be a mapping of strings, got {type(values).__name__}"
        for key, value in values.items():
            if not isinstance(value, str):
                return f"metadata.{name}[{key!r}] must be a string, got {type(value).__name__}"
    return None


@dataclass(frozen=True)
class Manifest:
    """One object and where it came from (for messages): file, document index (0-based) and first line."""

    obj: dict[str, Any]
    source: str
    index: int
    line: int = 1


def _files(path: str) -> Iterator[tuple[str, str]]:
    if path == "-":
        try:
            text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as exc:  # a detached or unreadable standard input
            raise ManifestError(f"<stdin>: cannot read standard input: {exc}") from None
        yield "<stdin>", text
        return
    target = Path(path)
    if target.is_dir():
        found = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
        for file in found:
            yield from _files(str(file))
        return
    try:
        yield str(target), target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from None


def _flatten(obj: Any, source: str, index: int, line: int) -> Iterator[Manifest]:
    if obj is None:
        return
    if not isinstance(obj, dict):
        raise ManifestError(f"{source}: document {index + 1} (line {line}) is a {type(obj).__name__}, not a "
                            "Kubernetes object")
    kind = obj.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list):
        for item in obj["items"]:
            yield from _flatten(item, source, index, line)
        return
    yield Manifest(obj, source, index, line)


def _documents(text: str) -> Iterator[tuple[Any, int]]:
    """Each YAML/JSON document with the line it starts on (1-based).

    libyaml's loader when PyYAML has it (the wheels do): the pure-Python one took 26 s and 230 MB for 50k
    ServiceAccounts given to `serve --objects`."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield loader.construct_document(node), node.start_mark.line + 1
    finally:
        loader.dispose()


def load(paths: Iterable[str], skipped: list[str] | None = None) -> list[Manifest]:
    """All objects in the given files/directories ("-" is stdin), in order.

    With `skipped` (check --skip-non-manifests, for a pre-commit hook or a scan of a whole repository), a file that
    is not YAML/JSON and a document that is not a Kubernetes object (a mapping with apiVersion and kind: a
    workflow, a Chart.yaml) are named in it and left out instead of being errors."""
    manifests: list[Manifest] = []
    for path in paths:
        for source, text in _files(path):
            try:
                documents = list(_documents(text))
            except yaml.YAMLError as exc:
                if skipped is None:
                    raise ManifestError(f"{source}: not valid YAML/JSON: {exc}") from None
                skipped.append(source)
                continue
            for index, (document, line) in enumerate(documents):
                if skipped is not None and not _is_kubernetes_object(document):
                    if document is not None:
                        skipped.append(f"{source}:{line}")
                    continue
                manifests.extend(_flatten(document, source, index, line))
    return manifests


def _is_kubernetes_object(document: Any) -> bool:
    return isinstance(document, dict) and bool(document.get("apiVersion")) and bool(document.get("kind"))


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def service_account_info(obj: dict[str, Any], default_namespace: str = "default") -> ServiceAccountInfo:
    """Shrink a ServiceAccount object to what the webhook uses: namespace, name, resourceVersion, and ONLY the
    annotations and labels whose key starts with `azure.workload.identity/` (`_identity_keys`).

    Every other key is dropped here, and under `serve` (the cache, `--objects`) this is the only view of a
    ServiceAccount the mutation core and the policy get. So an annotation the webhook reads must keep that prefix,
    or `_identity_keys` must change too; unit tests that build a ServiceAccountInfo by hand skip this filter.

    Why: the cache holds every ServiceAccount of the cluster, whose other annotations (last-applied-configuration)
    can be KBs each. Namespaces and keys repeat across thousands of ServiceAccounts, so they are interned. About
    0.4 KB per cached ServiceAccount (bench/memory.py).
    """
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ObjectShapeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    return ServiceAccountInfo(
        namespace=sys.intern(str(metadata.get("namespace") or default_namespace)),
        name=str(metadata.get("name") or ""),
        annotations=_identity_keys(metadata.get("annotations")),
        labels=_identity_keys(metadata.get("labels")),
        resource_version=str(metadata.get("resourceVersion") or ""),
    )


def _identity_keys(values: Any) -> dict[str, str]:
    """The `azure.workload.identity/*` entries of an annotations or labels mapping (see service_account_info)."""
    if not isinstance(values, dict):
        return {}
    return {sys.intern(k): str(v) for k, v in values.items()
            if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX + "/")}
