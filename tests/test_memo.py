"""The identity memo behind the per-ServiceAccount fragments (webhook/memo.py): a changed input is a new object and
therefore a miss, never a stale value."""

from __future__ import annotations

import orjson

from tests.support import annotated_sa, config, pod
from webhook.memo import IdentityMemo
from webhook.mutation import MutationResult, ServiceAccountInfo, mutate_pod, status_annotation


def test_hits_only_for_the_very_same_objects_and_extra() -> None:
    memo: IdentityMemo[str] = IdentityMemo()
    a, b = annotated_sa(), annotated_sa()
    assert a == b and a is not b
    memo.put((a, "cfg"), True, "value")
    assert memo.get((a, "cfg"), True) == "value"
    assert memo.get((b, "cfg"), True) is None  # equal but another object: a miss
    assert memo.get((a, "cfg"), False) is None
    assert memo.get((a, "other"), True) is None


def test_last_used_entry_is_tried_first_and_never_answers_for_other_inputs() -> None:
    memo: IdentityMemo[str] = IdentityMemo(max_entries=2)
    a, b, c = object(), object(), object()
    memo.put((a,), "x", "a-x")
    memo.put((b,), "x", "b-x")
    for _ in range(3):  # alternating: each get makes its entry the last one
        assert memo.get((a,), "x") == "a-x" and memo.get((a,), "x") == "a-x"
        assert memo.get((b,), "x") == "b-x"
        assert memo.get((b,), "y") is None and memo.get((a, b), "x") is None and memo.get((c,), "x") is None
    memo.put((c,), "x", "c-x")  # full: starts over, but the value just stored is still found
    assert memo.get((c,), "x") == "c-x" and memo.get((a,), "x") is None and memo.get((b,), "x") is None
    assert memo.get((), "x") is None


def test_bounded_by_starting_over() -> None:
    memo: IdentityMemo[int] = IdentityMemo(max_entries=3)
    kept = [object() for _ in range(5)]
    for index, obj in enumerate(kept):
        memo.put((obj,), None, index)
        assert len(memo) <= 3
    assert memo.get((kept[4],), None) == 4
    assert memo.get((kept[0],), None) is None


def _status(result: MutationResult) -> str:
    ops = [op for op in result.patch if op["path"].startswith("/metadata/annotations")]
    value = ops[-1]["value"]
    return str(value["wi-webhook/status"] if isinstance(value, dict) else value)


def test_memoised_status_annotation_equals_the_direct_one_and_follows_a_replaced_service_account() -> None:
    cfg = config(webhook_version="9.9.9")
    for name in ("sa", "é☃-\"quoted\"", "a\\b"):
        account = ServiceAccountInfo("ns", name, {"azure.workload.identity/client-id": "x"})
        first = mutate_pod(pod(name="p1", sa_name=name), "ns", account, cfg)
        second = mutate_pod(pod(name="p2", sa_name=name), "ns", account, cfg)  # served from the memo
        for result in (first, second):
            assert _status(result) == status_annotation(account, result, cfg)
        assert orjson.loads(_status(first))["volume"] != orjson.loads(_status(second))["volume"]
    edited = annotated_sa(client_id="11111111-1111-1111-1111-111111111111")
    before = mutate_pod(pod(), "ns", annotated_sa(), cfg)
    after = mutate_pod(pod(), "ns", edited, cfg)
    assert _status(before) != _status(after)
    assert _status(after) == status_annotation(edited, after, cfg)
    env = next(op["value"] for op in after.patch if op["path"].endswith("/env"))
    assert {"name": "AZURE_CLIENT_ID", "value": "11111111-1111-1111-1111-111111111111"} in env
