"""Remembered admission decisions, for the bursts of identical pods a scale-up sends.

A Deployment scale-up (the 2,000-pod bursts in Azure/azure-workload-identity #1608 and #781) makes the ReplicaSet
controller send the same pod again and again: the pods use `generateName`, and the API server picks their names only
after admission. Their AdmissionReviews differ only in `request.uid`, the managedFields timestamp and the name of
the token volume the API server adds.

The decision is a pure function of the pod, the request namespace, the ServiceAccount, the namespace's policy
overrides, the policy and the mutation config (the functional core). So it can be remembered:
- The key is the request namespace plus the review's own bytes, as the API server sent them, with exactly three
  things every review of a burst has different masked (see `masked_review`): the request uid, the managedFields
  timestamps, and the generated `kube-api-access-xxxxx` token volume name. Each is masked only where the parsed
  review proves every occurrence is that field; otherwise the review is not remembered. Tests check that such pods
  get exactly the answer a fresh computation gives.
- An entry also records the very objects it was computed from.
- A hit requires the same bytes and the *same objects*, compared by identity. The ServiceAccount and Namespace
  caches replace an object whenever the API server changes it, and a policy reload builds a new Policy. A changed
  input is therefore always a miss: a hit is exactly what a fresh computation would return.

Only pods named by the API server (`generateName`) are remembered; named pods are all different.
Only the answer is shared. The uid, the metrics, the denial log and the audit findings stay per request.
Bounded by entry count and by the bytes of the reviews held (LRU).
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

# Reviews larger than this are computed, not remembered. Keying a review (masking, hashing and comparing its bytes)
# costs about 12 instructions per byte: a 200 KB review measured 6.6M instructions per review remembered and 4.3M
# computed. A decision costs about 150k for a three-container pod, whatever the size of the review (its cost is in
# the containers; parsing, which grows with the size, happens either way). Break-even is near 12 KB; real pods with
# managedFields are 3-15 KB. It also keeps one huge review from evicting everything else (as the quarter of
# max_bytes does).
KEYED_REVIEW_BYTES = 16 * 1024


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
        if not decision.findings:  # the usual case: no warnings or audit annotations to gather
            return cls(decision, decision_tail(result), outcome)
        return cls(decision, decision_tail(result, decision.warnings, decision.audit_annotations), outcome)


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
    """LRU of Remembered decisions keyed on (request namespace, masked review bytes); not thread-safe (event
    loop)."""

    def __init__(self, max_entries: int = 512, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, Remembered] = OrderedDict()
        self._bytes = 0

    def key(self, body: bytes, uid: str, namespace: str, pod: Any) -> Key | None:
        """The lookup key for the review `body` (whose parsed uid and object are `uid` and `pod`), or None when
        it cannot be remembered (not a generateName pod, too large, or a field to mask is not provably alone)."""
        if self.max_entries <= 0 or len(body) > min(self.max_bytes // 4, KEYED_REVIEW_BYTES) \
                or not _generated_name(pod):
            return None
        masked = masked_review(body, uid, pod)
        return None if masked is None else (namespace, masked)

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
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_NAME_MASK = "kube-api-access-*"
_NAME_MASK_JSON = orjson.dumps(_NAME_MASK)


def masked_review(body: bytes, uid: str, pod: Any) -> bytes | None:
    """`body` with the request uid, the managedFields timestamps and the generated token volume name masked, or
    None when any of them cannot be masked provably alone.

    Why a hit is exact: the masked bytes are equal only for reviews that differ in nothing but those three, and
    the decision reads none of them. The uid is not part of the pod. No rule reads managedFields. Volume and
    mount names are only compared with the webhook's own `azure-workload-identity-reserved-*` name (replace if
    same name) and never copied into the answer, so renaming one `kube-api-access-*` name to another cannot
    change the decision.

    Why masking the bytes is safe: each masked text is counted first, and masked only when it occurs exactly as
    often as the parsed review has that field with that value (a container or an annotation that happens to carry
    the same text makes the review unremembered). In JSON text an unescaped quote only ever delimits a string, so
    a quoted value cannot match inside another string. Reviews encoded another way (spaces, escapes) just do not
    match, and are not remembered. Cheaper than encoding the parsed pod again (about a third of the work).
    """
    masked = _mask(body, b'"uid":' + orjson.dumps(uid), 1, b'"uid":"*"')
    if masked is None:
        return None
    metadata = pod["metadata"]  # a dict: _generated_name checked it
    managed = metadata.get("managedFields")
    if managed is not None:
        if not isinstance(managed, list):
            return None
        times: dict[str, int] = {}
        for entry in managed:
            stamp = entry.get("time") if isinstance(entry, dict) else None
            if isinstance(stamp, str):
                times[stamp] = times.get(stamp, 0) + 1
        for stamp, count in times.items():
            masked = _mask(masked, b'"time":' + orjson.dumps(stamp), count, b'"time":"*"')
            if masked is None:
                return None
    names = _generated_names(pod.get("spec"))
    if names is None:
        return None
    for name, count in names.items():
        masked = _mask(masked, orjson.dumps(name), count, _NAME_MASK_JSON)
        if masked is None:
            return None
    return masked


def _mask(data: bytes, text: bytes, expected: int, mask: bytes) -> bytes | None:
    """`data` with `text` replaced by `mask`, if it occurs exactly `expected` times (one scan of `data`)."""
    parts = data.split(text)
    return mask.join(parts) if len(parts) == expected + 1 else None


def _generated_names(spec: Any) -> dict[str, int] | None:
    """How often each generated token volume name occurs as a volume or mount name in `spec` (None when the spec
    has the mask itself as a name, which masking would confuse with a generated one)."""
    counts: dict[str, int] = {}
    if not isinstance(spec, dict):
        return counts
    lists: list[Any] = [spec.get("volumes")]
    for field in _CONTAINER_LISTS:
        containers = spec.get(field)
        if isinstance(containers, list):
            for container in containers:
                if isinstance(container, dict):
                    lists.append(container.get("volumeMounts"))
    for items in lists:
        if not isinstance(items, list):
            continue
        for item in items:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name.startswith("kube-api-access-"):
                continue
            count = counts.get(name)
            if count is not None:  # the volume's mounts: the name is matched once per review, not once per use
                counts[name] = count + 1
            elif name == _NAME_MASK:
                return None
            elif _GENERATED_VOLUME.fullmatch(name):
                counts[name] = 1
    return counts


def _generated_name(pod: Any) -> bool:
    """Only pods named by the API server (generateName, no name) come in bursts of identical pods: a Deployment's
    ReplicaSet, a Job. Named pods (StatefulSets, hand-made pods) are all different, so they skip the key work."""
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    return isinstance(metadata, dict) and not metadata.get("name") and bool(metadata.get("generateName"))

