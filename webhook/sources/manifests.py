"""Reading Kubernetes manifests from files, directories and stdin: multi-document YAML/JSON and `List` kinds.

Errors name the file (and document number) so that `mutate`/`check` can exit 2 with a useful message.
"""

from __future__ import annotations

import sys
from collections.abc import ItemsView, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from webhook.core.constants import ANNOTATION_PREFIX
from webhook.core.mutation import ServiceAccountInfo

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
        yield "<stdin>", sys.stdin.read()
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


def load(paths: Iterable[str]) -> list[Manifest]:
    """All objects in the given files/directories ("-" is stdin), in order."""
    manifests: list[Manifest] = []
    for path in paths:
        for source, text in _files(path):
            try:
                documents = list(_documents(text))
            except yaml.YAMLError as exc:
                raise ManifestError(f"{source}: not valid YAML/JSON: {exc}") from None
            for index, (document, line) in enumerate(documents):
                manifests.extend(_flatten(document, source, index, line))
    return manifests


_MISSING = object()
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Pairs(Mapping[str, str]):
    """A read-only mapping kept as one flat tuple (k1, v1, k2, v2, ...): about 100 bytes for one entry where a
    dict takes 184. The cache holds one per annotated ServiceAccount; lookups scan the few entries."""

    __slots__ = ("_items",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._items = tuple(item for pair in values.items() for item in pair)

    def __getitem__(self, key: str) -> str:
        value: str | object = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return str(value)

    def get(self, key: str, default: Any = None) -> Any:
        keys = self._items[::2]  # searched by the tuple's own methods, in C (reviews read these several times each)
        return self._items[2 * keys.index(key) + 1] if key in keys else default

    def __contains__(self, key: object) -> bool:
        return key in self._items[::2]

    def items(self) -> ItemsView[str, str]:
        return _PairsItems(self)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items[::2])

    def __len__(self) -> int:
        return len(self._items) // 2

    def __repr__(self) -> str:
        return f"Pairs({dict(self)!r})"


class _PairsItems(ItemsView[str, str]):
    """Iterates the pairs straight from the tuple: `dict(sa.annotations.items())` (every status annotation hashes
    the annotations) then costs no per-key lookup."""

    _mapping: Pairs

    def __iter__(self) -> Iterator[tuple[str, str]]:
        items = self._mapping._items
        return zip(items[::2], items[1::2], strict=True)


_EMPTY: Mapping[str, str] = Pairs({})


def service_account_info(obj: dict[str, Any], default_namespace: str = "default") -> ServiceAccountInfo:
    """Shrink a ServiceAccount object to what the webhook uses (its workload identity annotations and labels).

    Namespaces and annotation keys repeat across thousands of ServiceAccounts, so they are interned; identity
    annotations are kept as compact `Pairs`, and objects without any share one empty mapping. About 0.4 KB per
    cached ServiceAccount (bench/memory.py).
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


def _identity_keys(values: Any) -> Mapping[str, str]:
    if not isinstance(values, dict):
        return _EMPTY
    found = {sys.intern(k): str(v) for k, v in values.items()
             if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX + "/")}
    return Pairs(found) if found else _EMPTY
