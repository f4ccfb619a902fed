"""The serving path checks a pod's shape in two parts (pod_ref without the containers' env and volumeMounts
entries, then mutate_pod's container walk for those); these properties hold it to the full check up front: for any
pod, the same BadPod denial with the same message, or no shape denial at all, whatever else is wrong with the pod.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_fuzz import WI, containers, env_entries, json_values, pods
from webhook.cli.config import MutationConfig
from webhook.core.model import ServiceAccountInfo
from webhook.core.shape import PodShapeError, bad_pod, check_pod_shape, pod_ref
from webhook.policy.evaluate import admit

CONFIG = MutationConfig(tenant_id="72f988bf-86f1-41af-91ab-2d7cd011db47")
ACCOUNT = ServiceAccountInfo("ns", "sa", {f"{WI}/client-id": "00000000-0000-0000-0000-000000000001"})

# Pods that pass most of the light check, so that the walk's part is exercised: well-formed containers whose env
# and volumeMounts entries are anything, plus the annotations that make other denials race a bad entry.
walked_containers = st.fixed_dictionaries({"name": st.sampled_from(["app", "sidecar", ""])}, optional={
    "env": st.lists(st.one_of(env_entries, json_values), max_size=4),
    "volumeMounts": st.lists(st.one_of(st.fixed_dictionaries({"name": st.one_of(st.text(max_size=5), json_values)}),
                                       json_values), max_size=3)})
walked_pods = st.fixed_dictionaries({
    "metadata": st.fixed_dictionaries({"name": st.just("p")}, optional={"annotations": st.dictionaries(
        st.sampled_from([f"{WI}/skip-containers", f"{WI}/inject-proxy-sidecar", f"{WI}/proxy-sidecar-port",
                         f"{WI}/service-account-token-expiration"]),
        st.sampled_from(["app", "sidecar;app", "true", "false", "x", "70000", "3600", "1"]), max_size=4)}),
    "spec": st.fixed_dictionaries({"serviceAccountName": st.just("sa")}, optional={
        "containers": st.lists(walked_containers, max_size=3),
        "initContainers": st.lists(st.one_of(walked_containers, containers), max_size=2),
        "hostNetwork": st.booleans()}),
})


def full_check_first(pod: Any, account: ServiceAccountInfo | None) -> Any:
    """What the webhook answered when the whole shape was checked before anything else."""
    denial = bad_pod(pod)
    if denial is not None:
        return denial
    return admit(pod, "ns", account, CONFIG).result.denial


def serving_path(pod: Any, account: ServiceAccountInfo | None) -> Any:
    """What it answers now: the handler's light pod_ref, then admit with that ref (mutate_pod walks the rest)."""
    try:
        ref = pod_ref(pod, "ns", entries=False)
    except PodShapeError:
        return bad_pod(pod)  # the handler's shape_denial of the light check's error, which is the full check's
    return admit(pod, "ns", account, CONFIG, None, None, ref).result.denial


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=st.one_of(walked_pods, pods), found=st.booleans())
def test_the_split_shape_check_answers_as_the_full_check(pod: Any, found: bool) -> None:
    account = ACCOUNT if found else None
    original = copy.deepcopy(pod)
    expected = full_check_first(pod, account)
    got = serving_path(pod, account)
    assert pod == original  # nothing modified the pod
    if expected is not None and expected.reason == "BadPod":
        assert got == expected
    else:
        assert got is None or got.reason != "BadPod"
        assert got == expected


@settings(max_examples=300, deadline=None)
@given(pod=st.one_of(walked_pods, pods))
def test_the_light_check_passes_whatever_the_full_check_passes(pod: Any) -> None:
    try:
        check_pod_shape(pod)
    except PodShapeError:
        return
    check_pod_shape(pod, entries=False)


def test_a_bad_env_entry_in_a_skipped_container_is_still_denied() -> None:
    pod = {"metadata": {"name": "p", "annotations": {f"{WI}/skip-containers": "app"}},
           "spec": {"serviceAccountName": "sa", "containers": [{"name": "app", "env": [{"name": 7}]}]}}
    denial = serving_path(pod, ACCOUNT)
    assert denial is not None and denial.reason == "BadPod"
    assert denial.message == "couldn't decode pod: spec.containers[0].env[0].name must be a string"


def test_a_bad_mount_after_an_invalid_proxy_port_is_named_first() -> None:
    """Another denial found before the walk (the proxy port) does not hide a malformed entry."""
    pod = {"metadata": {"name": "p", "annotations": {f"{WI}/inject-proxy-sidecar": "true",
                                                     f"{WI}/proxy-sidecar-port": "x"}},
           "spec": {"serviceAccountName": "sa", "containers": [{"name": "app", "volumeMounts": ["oops"]}]}}
    denial = serving_path(pod, ACCOUNT)
    assert denial is not None and denial.message == \
        "couldn't decode pod: spec.containers[0].volumeMounts[0] must be an object"
    assert full_check_first(pod, ACCOUNT) == denial
