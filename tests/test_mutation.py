"""The pure mutation core against the reference's behaviour (`../shared/reference/azure-wi-webhook.md` describes it):
the shape check, the ServiceAccount, the proxy, the token expiration, env and mounts, the volume, the status."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import (
    CLIENT,
    TENANT,
    annotated_sa,
    apply,
    config,
    custom_config,
    env_names,
    env_of,
    mutate,
    mutated,
    pod,
    sa,
    validate,
)
from webhook.core.annotations import go_parse_int
from webhook.core.constants import TOKEN_FILE_PATH
from webhook.core.injected import env_to_inject, volume_name_for
from webhook.core.model import Denial
from webhook.core.shape import read_pod

WI = "azure.workload.identity"
FOUR = ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"]


def ref_of(obj: dict[str, Any], namespace: str) -> Any:
    ref = read_pod(obj, namespace)
    assert not isinstance(ref, Denial), ref
    return ref


def volume(out: dict[str, Any]) -> dict[str, Any]:
    [vol] = [v for v in out["spec"]["volumes"] if v["name"].startswith("azure-workload-identity-reserved-")]
    return vol


# basic injection --------------------------------------------------------------------------------------
def test_injects_env_mount_and_projected_volume() -> None:
    out, result = mutated(pod())
    app = out["spec"]["containers"][0]
    assert env_names(app) == FOUR
    assert env_of(app) == {"AZURE_CLIENT_ID": CLIENT, "AZURE_TENANT_ID": TENANT,
                           "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/wi/token/azure-identity-token",
                           "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"}
    name = "azure-workload-identity-reserved-425c89ed5bb78a7623fae60fd8a6f6"
    assert app["volumeMounts"] == [{"name": name, "mountPath": "/var/run/secrets/azure/wi", "readOnly": True}]
    assert out["spec"]["volumes"] == [{"name": name, "projected": {"sources": [{"serviceAccountToken": {
        "path": "token/azure-identity-token", "expirationSeconds": 3600, "audience": "api://AzureADTokenExchange"}}]}}]
    assert all(op["op"] == "add" for op in result.patch)
    assert result.injected_containers == ["app"]


def test_volume_name_examples_from_reference() -> None:
    assert volume_name_for("pod") == "azure-workload-identity-reserved-425c89ed5bb78a7623fae60fd8a6f6"
    assert volume_name_for("webhook-e2e- (prefix)") == \
        "azure-workload-identity-reserved-72713fa42caa5281bcb6f8a5349f3f"
    assert len(volume_name_for("x" * 300)) == 63


def test_generate_name_pod_hashes_prefix() -> None:
    original = pod(None)
    original["metadata"]["generateName"] = "webhook-e2e-"
    out, _ = mutated(original, check_schema=False)  # a pod without a name is not valid on its own
    assert volume(out)["name"] == "azure-workload-identity-reserved-72713fa42caa5281bcb6f8a5349f3f"


def test_pod_without_name_or_generate_name_still_mutated() -> None:
    out, _ = mutated(pod(None), check_schema=False)
    assert volume(out)["name"] == volume_name_for(" (prefix)")


def test_existing_env_kept_including_value_from() -> None:
    container = {"name": "app", "image": "x", "env": [
        {"name": "AZURE_CLIENT_ID", "value": "mine"},
        {"name": "AZURE_TENANT_ID", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "tenant"}}}]}
    out, _ = mutated(pod(containers=[container]))
    app = out["spec"]["containers"][0]
    assert env_names(app) == FOUR
    assert app["env"][0] == {"name": "AZURE_CLIENT_ID", "value": "mine"}
    assert app["env"][1]["valueFrom"] == {"configMapKeyRef": {"name": "cm", "key": "tenant"}}


def test_env_appended_after_user_env_and_env_from_untouched() -> None:
    container = {"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}],
                 "envFrom": [{"configMapRef": {"name": "cm"}}]}
    out, _ = mutated(pod(containers=[container]))
    app = out["spec"]["containers"][0]
    assert env_names(app) == ["A", *FOUR]
    assert app["envFrom"] == [{"configMapRef": {"name": "cm"}}]


def test_empty_env_list_gets_appended() -> None:
    out, result = mutated(pod(containers=[{"name": "app", "image": "x", "env": []}]))
    assert env_names(out["spec"]["containers"][0]) == FOUR
    assert [op["path"] for op in result.patch[:4]] == ["/spec/containers/0/env/-"] * 4


# annotations ---------------------------------------------------------------------------------------------
def test_missing_client_id_skips_only_that_var() -> None:
    out, _ = mutated(pod(), sa_info=sa())
    assert env_names(out["spec"]["containers"][0]) == FOUR[1:]


def test_empty_client_id_skips_that_var() -> None:
    out, _ = mutated(pod(), sa_info=sa(**{f"{WI}/client-id": ""}))
    assert "AZURE_CLIENT_ID" not in env_names(out["spec"]["containers"][0])


def test_tenant_annotation_wins_even_when_empty() -> None:
    out, _ = mutated(pod(), sa_info=annotated_sa(**{f"{WI}/tenant-id": "other"}))
    assert env_of(out["spec"]["containers"][0])["AZURE_TENANT_ID"] == "other"
    out, _ = mutated(pod(), sa_info=annotated_sa(**{f"{WI}/tenant-id": ""}))
    assert "AZURE_TENANT_ID" not in env_names(out["spec"]["containers"][0])


def test_empty_config_tenant_and_no_annotation_skips_tenant() -> None:
    out, _ = mutated(pod(), cfg=config(tenant_id=""))
    assert "AZURE_TENANT_ID" not in env_names(out["spec"]["containers"][0])


def test_pod_client_id_annotation_is_not_an_override() -> None:
    out, _ = mutated(pod(annotations={f"{WI}/client-id": "pod-level"}))
    assert env_of(out["spec"]["containers"][0])["AZURE_CLIENT_ID"] == CLIENT


def test_use_label_on_service_account_is_ignored_and_pod_label_not_required() -> None:
    original = pod()
    del original["metadata"]["labels"]
    out, _ = mutated(original)  # selection is the MutatingWebhookConfiguration's job, as in the reference
    assert env_names(out["spec"]["containers"][0]) == FOUR


# token expiration --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pod_value", "sa_value", "expected"), [
    (None, None, 3600),
    ("7200", None, 7200),
    (None, "86400", 86400),
    ("3600", "86400", 3600),
    ("", "5000", 5000),
    ("+4000", None, 4000),
])
def test_token_expiration_precedence(pod_value: str | None, sa_value: str | None, expected: int) -> None:
    annotations = {} if pod_value is None else {f"{WI}/service-account-token-expiration": pod_value}
    extra = {} if sa_value is None else {f"{WI}/service-account-token-expiration": sa_value}
    out, result = mutated(pod(annotations=annotations), sa_info=annotated_sa(**extra))
    assert volume(out)["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == expected
    assert result.expiration_seconds == expected


@pytest.mark.parametrize(("value", "message"), [
    ("3599", "token expiration 3599 not valid. Expected value to be between 3600 and 86400"),
    ("86401", "token expiration 86401 not valid. Expected value to be between 3600 and 86400"),
    ("-3600", "token expiration -3600 not valid"),
    ("3600s", 'strconv.ParseInt: parsing "3600s": invalid syntax'),
    (" 3600", 'strconv.ParseInt: parsing " 3600": invalid syntax'),
    ("99999999999999999999", 'parsing "99999999999999999999": value out of range'),
])
def test_token_expiration_denials(value: str, message: str) -> None:
    result = mutate(pod(annotations={f"{WI}/service-account-token-expiration": value}), "ns", annotated_sa(),
                        config())
    assert result.denial is not None and result.denial.code == 400
    assert message in result.denial.message
    assert "service-account-token-expiration" in result.denial.message  # names the annotation and the fix
    assert result.patch == []


@pytest.mark.parametrize(("value", "quoted"), [
    ("3600\n", '"3600\\n"'), ('36"00', '"36\\"00"'), ("36\x0100", '"36\\x0100"'), ("3600\u00ad", '"3600\\u00ad"'),
    ("3600é", '"3600é"'), ("\U0001f600", '"\U0001f600"'), ("\U000e0001", '"\\U000e0001"'),
])
def test_denials_quote_the_value_as_gos_percent_q(value: str, quoted: str) -> None:
    """The reference's message is strconv.ParseInt's, which quotes with strconv.Quote: control and format
    characters escaped, printable ones (any script) kept."""
    result = mutate(pod(annotations={f"{WI}/service-account-token-expiration": value}), "ns", annotated_sa(),
                        config())
    assert result.denial is not None
    assert result.denial.message.startswith(f"strconv.ParseInt: parsing {quoted}: invalid syntax")


def test_token_expiration_from_service_account_denial_names_service_account() -> None:
    result = mutate(pod(), "ns", annotated_sa(**{f"{WI}/service-account-token-expiration": "1"}), config())
    assert result.denial is not None and "ServiceAccount annotation" in result.denial.message


def test_go_parse_int_matches_go() -> None:
    assert go_parse_int("-12", 64) == -12
    assert go_parse_int("2147483647", 32) == 2147483647
    with pytest.raises(ValueError, match="value out of range"):
        go_parse_int("2147483648", 32)
    with pytest.raises(ValueError, match='parsing "": invalid syntax'):
        go_parse_int("", 32)
    with pytest.raises(ValueError, match="invalid syntax"):
        go_parse_int("1_000", 32)
    with pytest.raises(ValueError, match="invalid syntax"):
        go_parse_int("7200\n", 64)  # a YAML block scalar's trailing newline: Go rejects it too
    for text in ("+", "-", "+-5", "\u0663", "\uff17200", "3\u00b2", "٣٦٠٠"):  # other scripts' digits: not Go's
        with pytest.raises(ValueError, match="invalid syntax"):
            go_parse_int(text, 64)
    assert go_parse_int("+3600", 64) == 3600 and go_parse_int("-0", 64) == 0
    assert go_parse_int("-9223372036854775808", 64) == -(2**63) and go_parse_int("-2147483648", 32) == -(2**31)
    assert go_parse_int("0" * 30 + "7", 32) == 7
    for text, bits in (("9223372036854775808", 64), ("-9223372036854775809", 64), ("-2147483649", 32)):
        with pytest.raises(ValueError, match="value out of range"):
            go_parse_int(text, bits)


@settings(max_examples=500, deadline=None)
@given(sign=st.sampled_from(["", "+", "-"]), digits=st.text(alphabet="0123456789", min_size=1, max_size=25),
       bits=st.sampled_from([32, 64]))
def test_go_parse_int_range_is_exact_for_any_length(sign: str, digits: str, bits: int) -> None:
    value = int(sign + digits)
    if -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        assert go_parse_int(sign + digits, bits) == value
    else:
        with pytest.raises(ValueError, match="value out of range"):
            go_parse_int(sign + digits, bits)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("+-0123456789 _x\n\u0663\uff17\u00b2"), max_size=8))
def test_go_parse_int_accepts_exactly_signed_ascii_digits(text: str) -> None:
    try:
        go_parse_int(text, 64)
    except ValueError as exc:
        accepted = "out of range" in str(exc)
    else:
        accepted = True
    assert accepted == bool(re.fullmatch(r"[+-]?[0-9]+", text))


# skip containers ------------------------------------------------------------------------------------
def test_skip_containers_trimmed_and_applies_to_init_containers() -> None:
    containers = [{"name": n, "image": "x"} for n in ("a", "b", "c")]
    init = [{"name": n, "image": "x"} for n in ("i1", "i2")]
    out, result = mutated(pod(containers=containers, init=init,
                              annotations={f"{WI}/skip-containers": " a ; ;i2;  "}))
    spec = out["spec"]
    assert "env" not in spec["containers"][0] and "volumeMounts" not in spec["containers"][0]
    assert env_names(spec["containers"][1]) == FOUR and env_names(spec["containers"][2]) == FOUR
    assert env_names(spec["initContainers"][0]) == FOUR and "env" not in spec["initContainers"][1]
    assert sorted(result.skipped_containers) == ["a", "i2"]
    assert result.injected_containers == ["i1", "b", "c"]  # init containers first


def test_an_empty_skip_entry_skips_unnamed_containers_as_the_reference_does() -> None:
    """`"sidecar;"` splits into "sidecar" and "" in Go; "" matches a container without a name (which decodes as "")."""
    containers = [{"name": "sidecar", "image": "x"}, {"image": "x"}, {"name": None, "image": "y"},
                  {"name": "app", "image": "x"}]
    result = mutate(pod(containers=containers, annotations={f"{WI}/skip-containers": "sidecar;"}), "ns",
                        annotated_sa(), config())
    assert result.skipped_containers == ["sidecar", "", ""] and result.injected_containers == ["app"]
    without = mutate(pod(containers=containers, annotations={f"{WI}/skip-containers": "sidecar"}), "ns",
                         annotated_sa(), config())
    assert without.skipped_containers == ["sidecar"] and without.injected_containers == ["", "", "app"]


def test_skip_entries_are_trimmed_as_go_trims_them() -> None:
    """Go's strings.TrimSpace: Unicode spaces (NBSP, ideographic space, tabs...) but not the \x1c-\x1f separators
    that Python's str.strip() also removes."""
    containers = [{"name": n, "image": "x"} for n in ("app", "\x1fapp", "web", "db")]
    result = mutate(pod(containers=containers, annotations={
        f"{WI}/skip-containers": "\x1fapp;\u00a0web\u3000;\tdb\n"}), "ns", annotated_sa(), config())
    assert result.skipped_containers == ["\x1fapp", "web", "db"] and result.injected_containers == ["app"]


def test_volume_added_even_when_every_container_skipped_or_none() -> None:
    out, _result = mutated(pod(annotations={f"{WI}/skip-containers": "app"}))
    assert "env" not in out["spec"]["containers"][0]
    assert volume(out)
    out, _ = mutated(pod(containers=[]), check_schema=False)  # containers: [] is invalid for the API anyway
    assert volume(out)


# same-name mount and volume replaced, identical ones left alone -------------------------------------
def test_same_name_mount_and_volume_replaced() -> None:
    name = volume_name_for("pod")
    container = {"name": "app", "image": "x",
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": name, "mountPath": "/old"}]}
    original = pod(containers=[container], volumes=[{"name": name, "emptyDir": {}}, {"name": "data", "emptyDir": {}}])
    out, result = mutated(original)
    mounts = out["spec"]["containers"][0]["volumeMounts"]
    assert mounts[0] == {"name": "data", "mountPath": "/data"}
    assert mounts[1] == {"name": name, "mountPath": "/var/run/secrets/azure/wi", "readOnly": True}
    assert out["spec"]["volumes"][0]["projected"] and "emptyDir" not in out["spec"]["volumes"][0]
    assert {op["op"] for op in result.patch} == {"add", "replace"}


def test_reinvocation_after_api_server_defaulting_is_a_no_op() -> None:
    out, _ = mutated(pod())
    defaulted = copy.deepcopy(out)
    defaulted["spec"]["volumes"][0]["projected"]["defaultMode"] = 420
    assert mutate(defaulted, "ns", annotated_sa(), config()).patch == []


# namespace and ServiceAccount --------------------------------------------------------------------------------
def test_namespace_taken_from_request_when_missing() -> None:
    original = pod(namespace=None)
    result = mutate(original, "team-a", annotated_sa(namespace="team-a"), config())
    assert result.patch[0] == {"op": "add", "path": "/metadata/namespace", "value": "team-a"}
    assert apply(original, result)["metadata"]["namespace"] == "team-a"


def test_namespace_overwritten_with_request_namespace() -> None:
    result = mutate(pod(namespace="other"), "ns", annotated_sa(), config())
    assert result.patch[0] == {"op": "replace", "path": "/metadata/namespace", "value": "ns"}


def test_missing_service_account_denied_with_reference_message() -> None:
    result = mutate(pod(sa_name="ghost"), "ns", None, config())
    assert result.denial is not None
    assert result.denial.message == 'serviceaccounts "ghost" not found' and result.denial.code == 400


def test_default_service_account_when_unset() -> None:
    result = mutate(pod(sa_name=None), "ns", None, config())
    assert result.denial is not None and result.denial.message == 'serviceaccounts "default" not found'
    out, _ = mutated(pod(sa_name=None), sa_info=annotated_sa(name="default"))
    assert "serviceAccountName" not in out["spec"]  # never written back


# proxy -------------------------------------------------------------------------------------------------
PROXY = {f"{WI}/inject-proxy-sidecar": "true"}


def test_classic_proxy_layout() -> None:
    init = [{"name": "setup", "image": "x"}]
    out, result = mutated(pod(init=init, annotations={**PROXY, f"{WI}/proxy-sidecar-port": "8080"}),
                          cfg=config(log_level="info"))
    spec = out["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["setup", "azwi-proxy-init"]
    assert [c["name"] for c in spec["containers"]] == ["azwi-proxy", "app"]
    proxy_init, proxy = spec["initContainers"][1], spec["containers"][0]
    assert proxy_init["image"] == "mcr.microsoft.com/oss/azure/workload-identity/proxy-init:v1.6.0"
    assert proxy_init["env"][0] == {"name": "PROXY_PORT", "value": "8080"}
    assert env_names(proxy_init) == ["PROXY_PORT", *FOUR]
    assert proxy_init["securityContext"] == {"capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                                             "privileged": True, "runAsNonRoot": False, "runAsUser": 0}
    assert proxy["args"] == ["--proxy-port=8080", "--log-level=info"]
    assert proxy["ports"] == [{"containerPort": 8080}]
    assert proxy["lifecycle"]["postStart"]["exec"]["command"] == [
        "/proxy", "--proxy-port=8080", "--probe", "--log-level=info"]
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert "restartPolicy" not in proxy and "resources" not in proxy
    assert env_names(proxy) == FOUR and proxy["volumeMounts"][0]["mountPath"] == "/var/run/secrets/azure/wi"
    assert "azwi-proxy" in result.injected_containers


def test_native_sidecar_proxy_layout() -> None:
    init = [{"name": "setup", "image": "x"}]
    out, _ = mutated(pod(init=init, annotations=PROXY), cfg=config(native_sidecar=True))
    spec = out["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["azwi-proxy", "setup", "azwi-proxy-init"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert spec["initContainers"][0]["args"] == ["--proxy-port=8000", "--log-level="]


def test_native_sidecar_without_existing_init_containers() -> None:
    out, _ = mutated(pod(annotations=PROXY), cfg=config(native_sidecar=True))
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["azwi-proxy", "azwi-proxy-init"]


@pytest.mark.parametrize("value", ["true", "", "yes", "True"])
def test_inject_proxy_any_value_but_false(value: str) -> None:
    out, _ = mutated(pod(annotations={f"{WI}/inject-proxy-sidecar": value}))
    assert out["spec"]["containers"][0]["name"] == "azwi-proxy"


@pytest.mark.parametrize("value", ["false", "False", " FALSE "])
def test_inject_proxy_false_does_not_inject(value: str) -> None:
    out, result = mutated(pod(annotations={f"{WI}/inject-proxy-sidecar": value}))
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"] and "initContainers" not in out["spec"]
    assert "azwi-proxy" not in result.injected_containers


def test_proxy_resources_from_config() -> None:
    resources = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
    out, _ = mutated(pod(annotations=PROXY), cfg=config(proxy_resources=resources, proxy_init_resources=resources))
    assert out["spec"]["containers"][0]["resources"] == resources
    assert out["spec"]["initContainers"][0]["resources"] == resources


def test_proxy_existing_containers_not_duplicated_and_skip_applies() -> None:
    annotations = {**PROXY, f"{WI}/skip-containers": "azwi-proxy"}
    out, _ = mutated(pod(annotations=annotations))
    assert "env" not in out["spec"]["containers"][0]
    assert out["spec"]["containers"][0]["name"] == "azwi-proxy"


@pytest.mark.parametrize(("value", "message"), [
    ("abc", 'failed to parse proxy sidecar port: strconv.ParseInt: parsing "abc": invalid syntax'),
    ("0", "proxy sidecar port 0 not valid. Expected value to be between 1 and 65535"),
    ("70000", "proxy sidecar port 70000 not valid"),
    ("-1", "proxy sidecar port -1 not valid"),
    ("", 'parsing "": invalid syntax'),
])
def test_bad_proxy_port_denied(value: str, message: str) -> None:
    result = mutate(pod(annotations={**PROXY, f"{WI}/proxy-sidecar-port": value}), "ns", annotated_sa(), config())
    assert result.denial is not None and message in result.denial.message
    assert f"{WI}/proxy-sidecar-port" in result.denial.message


def test_port_ignored_without_injection() -> None:
    out, _ = mutated(pod(annotations={f"{WI}/proxy-sidecar-port": "abc"}))
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"]


def test_host_network_denied_with_proxy() -> None:
    result = mutate(pod(annotations=PROXY, hostNetwork=True), "ns", annotated_sa(), config())
    assert result.denial is not None
    assert result.denial.message == "hostNetwork is set to true, cannot inject proxy sidecar"
    out, _ = mutated(pod(hostNetwork=True))  # without the proxy, hostNetwork is fine
    assert env_names(out["spec"]["containers"][0]) == FOUR


def test_denial_precedence_sa_then_host_network_then_port_then_expiration() -> None:
    everything = pod(annotations={**PROXY, f"{WI}/proxy-sidecar-port": "x",
                                  f"{WI}/service-account-token-expiration": "1"}, hostNetwork=True)
    assert "not found" in (mutate(everything, "ns", None, config()).denial or _no()).message
    assert "hostNetwork" in (mutate(everything, "ns", annotated_sa(), config()).denial or _no()).message
    everything["spec"]["hostNetwork"] = False
    assert "proxy sidecar port" in (mutate(everything, "ns", annotated_sa(), config()).denial or _no()).message
    everything["metadata"]["annotations"][f"{WI}/proxy-sidecar-port"] = "9000"
    assert "token expiration" in (mutate(everything, "ns", annotated_sa(), config()).denial or _no()).message


def _no() -> Any:
    raise AssertionError("expected a denial")


# custom token endpoint -----------------------------------------------------------------------------------
BINDING = {f"{WI}/use-identity-binding": "TRUE"}


def test_custom_endpoint_env_audience_and_configmap_ca() -> None:
    cfg = custom_config(token_proxy="https://proxy:8443", sni_name="sni.example", ca_configmap_name="wi-ca")
    out, _ = mutated(pod(annotations=BINDING), cfg=cfg)
    env = env_of(out["spec"]["containers"][0])
    assert list(env) == [*FOUR, "AZURE_KUBERNETES_TOKEN_PROXY", "AZURE_KUBERNETES_SNI_NAME",
                         "AZURE_KUBERNETES_CA_FILE"]
    assert env["AZURE_KUBERNETES_CA_FILE"] == "/var/run/secrets/azure/wi/ca-cert/ca.crt"
    sources = volume(out)["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["audience"] == "api://custom"
    assert sources[1] == {"configMap": {"name": "wi-ca", "items": [{"key": "ca.crt", "path": "ca-cert/ca.crt"}],
                                        "optional": False}}


def test_custom_endpoint_cluster_trust_bundle_and_ca_data() -> None:
    selector = {"matchLabels": {"a": "b"}}
    out, _ = mutated(pod(annotations=BINDING), cfg=custom_config(ctb_signer_name="example.com/signer",
                                                                 ctb_label_selector=selector))
    assert volume(out)["projected"]["sources"][1] == {"clusterTrustBundle": {
        "signerName": "example.com/signer", "labelSelector": selector, "path": "ca-cert/ca.crt", "optional": False}}
    out, _ = mutated(pod(annotations=BINDING), cfg=custom_config(ca_data="PEM"))
    assert env_of(out["spec"]["containers"][0])["AZURE_KUBERNETES_CA_DATA"] == "PEM"
    assert len(volume(out)["projected"]["sources"]) == 1


@pytest.mark.parametrize("value", ["false", "yes", ""])
def test_custom_endpoint_needs_true(value: str) -> None:
    out, _ = mutated(pod(annotations={f"{WI}/use-identity-binding": value}), cfg=custom_config(sni_name="s"))
    assert env_names(out["spec"]["containers"][0]) == FOUR
    assert volume(out)["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "api://AzureADTokenExchange"


def test_custom_audience_flag() -> None:
    out, _ = mutated(pod(), cfg=config(audience="api://other"))
    assert volume(out)["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "api://other"


def test_authority_host_from_config() -> None:
    out, _ = mutated(pod(), cfg=config(authority_host="https://login.microsoftonline.us/"))
    assert env_of(out["spec"]["containers"][0])["AZURE_AUTHORITY_HOST"] == "https://login.microsoftonline.us/"


# Raw-JSON patching: unknown fields survive; native sidecars keep restartPolicy (#1312) ----------------------------
def test_unknown_fields_survive_and_no_remove_ops() -> None:
    original = pod(init=[{"name": "istio-proxy", "image": "istio", "restartPolicy": "Always"}],
                   containers=[{"name": "app", "image": "x", "futureContainerField": {"x": [1, 2]}}],
                   futurePodSpecField=True)
    original["futureTopLevel"] = {"kept": "yes"}
    original["metadata"]["futureMeta"] = 1
    result = mutate(original, "ns", annotated_sa(), config())
    out = apply(original, result)
    assert all(op["op"] in ("add", "replace") for op in result.patch)
    assert not any(op["op"] == "replace" for op in result.patch)
    assert out["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    assert out["spec"]["containers"][0]["futureContainerField"] == {"x": [1, 2]}
    assert out["spec"]["futurePodSpecField"] is True and out["futureTopLevel"] == {"kept": "yes"}
    assert out["metadata"]["futureMeta"] == 1
    # Only additions: removing what we added gives back the original exactly.
    for key in ("volumes",):
        del out["spec"][key]
    for container in out["spec"]["initContainers"] + out["spec"]["containers"]:
        del container["env"], container["volumeMounts"]
    del out["metadata"]["annotations"]
    assert out == original


def test_native_sidecar_init_container_schema_valid_with_restart_policy() -> None:
    original = pod(init=[{"name": "sidecar", "image": "x", "restartPolicy": "Always"}])
    out, _ = mutated(original)
    assert out["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    assert env_names(out["spec"]["initContainers"][0]) == FOUR


def test_input_is_never_modified() -> None:
    original = pod(annotations=PROXY, init=[{"name": "i", "image": "x"}])
    snapshot = copy.deepcopy(original)
    mutate(original, "ns", annotated_sa(), config(native_sidecar=True))
    assert original == snapshot


def test_no_spec_at_all() -> None:
    original = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
    result = mutate(original, "ns", annotated_sa(), config())
    out = apply(original, result)
    assert out["spec"]["volumes"][0]["name"] == volume_name_for("p")
    assert out["metadata"]["namespace"] == "ns"
    result = mutate({"kind": "Pod"}, "ns", annotated_sa(), config(status_annotation=False))
    assert apply({"kind": "Pod"}, result)["metadata"] == {"namespace": "ns"}
    result = mutate({"kind": "Pod"}, "ns", annotated_sa(), config())
    assert set(apply({"kind": "Pod"}, result)["metadata"]["annotations"]) == {"wi-webhook/status"}


def test_null_lists_are_treated_as_absent() -> None:
    original = pod(containers=[{"name": "app", "image": "x", "env": None, "volumeMounts": None}], volumes=None,
                   initContainers=None)
    out, _ = mutated(original, check_schema=False)
    assert env_names(out["spec"]["containers"][0]) == FOUR and len(out["spec"]["volumes"]) == 1


def test_token_file_env_names_the_projected_token_where_it_is_mounted() -> None:
    out, _ = mutated(pod())
    container = out["spec"]["containers"][0]
    mount = container["volumeMounts"][0]["mountPath"]
    token_path = volume(out)["projected"]["sources"][0]["serviceAccountToken"]["path"]
    assert env_of(container)["AZURE_FEDERATED_TOKEN_FILE"] == f"{mount}/{token_path}" == TOKEN_FILE_PATH


# Bad shapes are denials that name the field, never exceptions ----------------------------------------------------
@pytest.mark.parametrize(("bad", "field"), [
    ([], "request.object must be a Pod object"),
    ("pod", "request.object must be a Pod object"),
    ({"kind": "Deployment"}, "kind is 'Deployment'"),
    ({"metadata": "x"}, "metadata must be an object"),
    ({"metadata": {"annotations": {"a": 1}}}, "metadata.annotations['a'] must be a string"),
    ({"metadata": {"name": 5}}, "metadata.name must be a string"),
    ({"spec": []}, "spec must be an object"),
    ({"spec": {"containers": {}}}, "spec.containers must be a list"),
    ({"spec": {"containers": ["x"]}}, "spec.containers[0] must be an object"),
    ({"spec": {"initContainers": [{"name": "i", "env": "x"}]}}, "spec.initContainers[0].env must be a list"),
    ({"spec": {"containers": [{"volumeMounts": [1]}]}}, "spec.containers[0].volumeMounts[0] must be an object"),
    ({"spec": {"volumes": [None]}}, "spec.volumes[0] must be an object"),
    ({"spec": {"containers": [{"name": "a", "env": [{"name": ["x"]}]}]}}, "spec.containers[0].env[0].name must be"),
    ({"spec": {"containers": [{"name": "a", "volumeMounts": [{"name": 1}]}]}}, "volumeMounts[0].name must be"),
    ({"spec": {"serviceAccountName": 3}}, "spec.serviceAccountName must be a string"),
    ({"spec": {"hostNetwork": "yes"}}, "spec.hostNetwork must be a boolean"),
])
def test_bad_shapes_denied_with_field(bad: Any, field: str) -> None:
    result = mutate(bad, "ns", annotated_sa(), config())
    assert result.denial is not None and result.denial.code == 400
    assert field in result.denial.message and result.denial.message.startswith("couldn't decode pod")


def test_validate_helper_rejects_unknown_fields() -> None:
    with pytest.raises(Exception, match="futureField"):
        validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                  "spec": {"containers": [{"name": "a", "image": "x"}], "futureField": 1}})


# Status annotation (wi-webhook/status) --------------------------------------------------------------------------
def test_status_annotation_records_what_was_injected() -> None:
    out, result = mutated(pod(annotations={"keep": "me"}), cfg=config(webhook_version="1.2.3"))
    assert out["metadata"]["annotations"]["keep"] == "me"
    status = orjson.loads(out["metadata"]["annotations"]["wi-webhook/status"])
    assert status == {"version": "1.2.3", "env": FOUR, "volume": volume(out)["name"],
                      "mountPath": "/var/run/secrets/azure/wi", "serviceAccount": "sa",
                      "annotationsHash": status["annotationsHash"]}
    assert len(status["annotationsHash"]) == 12
    assert {"op": "add", "path": "/metadata/annotations/wi-webhook~1status",
            "value": out["metadata"]["annotations"]["wi-webhook/status"]} in result.patch


def test_status_hash_follows_service_account_annotations() -> None:
    first, _ = mutated(pod(), sa_info=annotated_sa())
    second, _ = mutated(pod(), sa_info=annotated_sa(client_id="11111111-1111-1111-1111-111111111111"))
    assert orjson.loads(first["metadata"]["annotations"]["wi-webhook/status"])["annotationsHash"] != \
        orjson.loads(second["metadata"]["annotations"]["wi-webhook/status"])["annotationsHash"]
    # A stale status (SA edited, pod re-admitted) is replaced, not duplicated.
    result = mutate(first, "ns", annotated_sa(client_id="11111111-1111-1111-1111-111111111111"), config())
    assert [op["op"] for op in result.patch if "status" in op["path"]] == ["replace"]


def test_status_annotation_can_be_disabled() -> None:
    out, _ = mutated(pod(), cfg=config(status_annotation=False))
    assert "annotations" not in out["metadata"]


def test_status_annotation_with_characters_json_escapes() -> None:
    version = 'v"1\\2/é\u2028\x01'  # quotes, backslash, slash, non-ASCII, a line separator and a control character
    out, _ = mutated(pod(), cfg=config(webhook_version=version))
    assert orjson.loads(out["metadata"]["annotations"]["wi-webhook/status"])["version"] == version


def test_every_container_of_a_long_list_is_injected() -> None:
    def containers(prefix: str, count: int) -> list[dict[str, Any]]:
        return [{"name": f"{prefix}{index}", "image": "x", "env": [{"name": "A", "value": "1"}]}
                for index in range(count)]

    out, result = mutated(pod(containers=containers("c", 70), init=containers("i", 40)))
    for container in out["spec"]["containers"] + out["spec"]["initContainers"]:
        assert env_names(container) == ["A", *FOUR]
        assert [mount["name"] for mount in container["volumeMounts"]] == [volume(out)["name"]]
    assert len(result.injected_containers) == 110


def test_pods_of_one_service_account_get_their_own_expiration_and_volume_name() -> None:
    """Pods that share a ServiceAccount object still differ where they should (the expiration each sets, and the
    name-derived volume), in any order and with repeats."""
    account, cfg = annotated_sa(), config()
    for name, expiration in [("a", None), ("b", "7200"), ("c", None), ("d", "86400"), ("e", "7200"), ("a", None)]:
        annotations = {} if expiration is None else {f"{WI}/service-account-token-expiration": expiration}
        out, _ = mutated(pod(name, annotations=annotations), sa_info=account, cfg=cfg)
        token = volume(out)["projected"]["sources"][0]["serviceAccountToken"]
        assert token["expirationSeconds"] == int(expiration or 3600)
        assert volume(out)["name"] == volume_name_for(name)
        assert out["spec"]["containers"][0]["volumeMounts"][0]["name"] == volume_name_for(name)


def test_an_empty_request_namespace_falls_back_to_the_pods_own() -> None:
    """The API server always sets request.namespace; for a hand-made review without it (`mutate`, tests) we use
    the pod's metadata.namespace rather than deny as the reference would (documented in read_pod)."""
    obj = pod(namespace="team-a")
    assert ref_of(obj, "").namespace == "team-a"
    result = mutate(obj, "", annotated_sa(), config())
    assert result.denial is None and not [op for op in result.patch if op["path"].startswith("/metadata/namespace")]
    assert ref_of(pod(namespace=None), "").namespace == ""


def test_readme_env_table_is_what_gets_injected() -> None:
    """The README's env table lists every env var `env_to_inject` can give a container, in its order: a new one
    fails here until the table has its row."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| Env var | Value |", 1)[1].split("\n\n", 1)[0]
    documented = [name for line in table.splitlines()[2:] for name in re.findall(r"`(AZURE_\w+)`", line.split("|")[1])]
    everything = annotated_sa(**{f"{WI}/tenant-id": TENANT})
    cfg = custom_config(token_proxy="https://proxy", sni_name="sni", ca_data="pem")
    assert documented == list(env_to_inject(everything, cfg, custom_active=True))
