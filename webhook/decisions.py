"""Remembered admission decisions, for the bursts of identical pods a scale-up sends.

A Deployment scale-up (the 2,000-pod bursts in Azure/azure-workload-identity #1608 and #781) makes the ReplicaSet
controller send the same pod again and again: the pods use `generateName`, and the API server picks their names only
after admission. Their AdmissionReviews differ only in `request.uid`, the managedFields timestamp and the name of
the token volume the API server adds.

The decision is a pure function of the pod, the request namespace, the ServiceAccount, the namespace's policy
overrides, the policy and the mutation config (the functional core). So it can be remembered:
- The key is the pod's JSON bytes plus the request namespace, with two things every pod of a burst has different
  and the decision provably ignores (see `key_view`): `metadata.managedFields` (timestamped to the second) and the
  name of the `kube-api-access-xxxxx` token volume the API server adds. Tests check that such pods get exactly
  the answer a fresh computation gives.
- An entry also records the very objects it was computed from.
- A hit requires the same bytes and the *same objects*, compared by identity. The ServiceAccount and Namespace
  caches replace an object whenever the API server changes it, and a policy reload builds a new Policy. A changed
  input is therefore always a miss: a hit is exactly what a fresh computation would return.

Only pods named by the API server (`generateName`) are remembered; named pods are all different.
Only the answer is shared. The uid, the metrics, the denial log and the audit findings stay per request.
Bounded by entry count and by the bytes of the pods held (LRU).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import orjson

from webhook.admission import decision_tail
from webhook.config import MutationConfig
from webhook.mutation import PodRef, ServiceAccountInfo
from webhook.policy import Decision, NamespaceInfo, Policy

Key = tuple[str, bytes]


class Answer:
    """A decision with its encoded AdmissionResponse fields (all but the uid) and its metrics outcome.

    Shared by every review a remembered decision answers, so never changed after it is made (Final). A plain
    class: one is made per computed review, and a dataclass's generated `__init__` stays interpreted Python in
    the compiled build.
    """

    def __init__(self, decision: Decision, tail: bytes, outcome: str) -> None:
        self.decision: Final = decision
        self.tail: Final = tail  # the encoded response fields after the uid (admission.decision_tail)
        self.outcome: Final = outcome  # mutated | skipped | denied

    @classmethod
    def of(cls, decision: Decision) -> Answer:
        result = decision.result
        outcome = "denied" if result.denial is not None else "mutated" if result.encoded_ops else "skipped"
        return cls(decision, decision_tail(result, decision.warnings, decision.audit_annotations),
                   outcome)


@dataclass(frozen=True, slots=True)
class Remembered:
    """An answer plus the inputs it was computed from (checked by identity)."""

    ref: PodRef
    sa: ServiceAccountInfo
    namespace_info: NamespaceInfo | None
    policy: Policy
    config: MutationConfig
    answer: Answer

    def valid_for(self, sa: ServiceAccountInfo | None, namespace_info: NamespaceInfo | None, policy: Policy,
                  config: MutationConfig) -> bool:
        return (sa is self.sa and namespace_info is self.namespace_info and policy is self.policy
                and config is self.config)


class DecisionCache:
    """LRU of Remembered decisions keyed on (request namespace, pod JSON bytes); not thread-safe (event loop)."""

    def __init__(self, max_entries: int = 512, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, Remembered] = OrderedDict()
        self._bytes = 0

    def key(self, namespace: str, pod: Any) -> Key | None:
        """The lookup key, or None when this pod cannot be remembered (not serialisable, or too large)."""
        if self.max_entries <= 0 or not _generated_name(pod):
            return None
        try:
            raw = orjson.dumps(key_view(pod))
        except (orjson.JSONEncodeError, TypeError):
            return None
        if len(raw) > self.max_bytes // 4:  # one huge pod must not evict everything else
            return None
        return namespace, raw

    def get(self, key: Key) -> Remembered | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Key, entry: Remembered) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(key[1])
        self._entries[key] = entry
        self._bytes += len(key[1])
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            evicted, _ = self._entries.popitem(last=False)
            self._bytes -= len(evicted[1])

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes


# The ServiceAccount admission plugin names the token volume it adds `kube-api-access-` + 5 random characters
# (k8s.io/apiserver names.SimpleNameGenerator), so every pod of a burst carries a different one.
_GENERATED_VOLUME = re.compile(r"kube-api-access-[bcdfghjklmnpqrstvwxz2456789]{5}")
_PLACEHOLDER = "kube-api-access-*"
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def key_view(pod: Any) -> Any:
    """The pod as the key sees it: without `metadata.managedFields` and with the generated `kube-api-access-*`
    volume and mount names replaced by one placeholder. Shallow copies only; the request's dicts are untouched.

    Why this is exact: no part of the decision reads managedFields, and volume and mount names are only ever
    compared with the webhook's own `azure-workload-identity-reserved-*` name (replace-if-same-name) and never
    copied into the answer. Renaming one `kube-api-access-*` name to another cannot change such a comparison.
    """
    if not isinstance(pod, dict):
        return pod
    view = pod
    metadata = pod.get("metadata")
    if isinstance(metadata, dict) and "managedFields" in metadata:
        view = {**pod, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return view
    new_spec: dict[str, Any] | None = None
    volumes = spec.get("volumes")
    renamed = _renamed(volumes) if type(volumes) is list else None
    if renamed is not None:
        new_spec = {**spec, "volumes": renamed}
    for field in _CONTAINER_LISTS:
        containers = spec.get(field)
        if type(containers) is not list:
            continue
        copied: list[Any] | None = None
        for index, container in enumerate(containers):
            mounts = container.get("volumeMounts") if type(container) is dict else None
            renamed = _renamed(mounts) if type(mounts) is list else None
            if renamed is not None:
                copied = copied or list(containers)
                copied[index] = {**container, "volumeMounts": renamed}
        if copied is not None:
            new_spec = new_spec or dict(spec)
            new_spec[field] = copied
    if new_spec is None:
        return view
    return {**view, "spec": new_spec}


def _renamed(items: list[Any]) -> list[Any] | None:
    """A copy of `items` with generated token volume names replaced, or None when there are none."""
    out: list[Any] | None = None
    for index, item in enumerate(items):
        name = item.get("name") if type(item) is dict else None
        if type(name) is str and name.startswith("kube-api-access-") and _GENERATED_VOLUME.fullmatch(name):
            out = out or list(items)
            out[index] = {**item, "name": _PLACEHOLDER}
    return out


def _generated_name(pod: Any) -> bool:
    """Only pods named by the API server (generateName, no name) come in bursts of identical pods: a Deployment's
    ReplicaSet, a Job. Named pods (StatefulSets, hand-made pods) are all different, so they skip the key work."""
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    return isinstance(metadata, dict) and not metadata.get("name") and bool(metadata.get("generateName"))

