"""The real node itself: Ready, running the project's image in a hostNetwork pod, with a kubelet-projected
service-account token for the Azure audience, readable through the API server's log endpoint (kubelet on
127.0.0.1)."""

from __future__ import annotations

import json

import jwt
from kubernetes import client

from tests.node.kube import logs, namespace, wait_pod_phase
from tests.node.realnode import NodeCluster

AUDIENCE = "api://AzureADTokenExchange"


def test_node_is_ready_and_of_the_built_version(node: NodeCluster) -> None:
    with node.api_client() as api:
        item = client.CoreV1Api(api).read_node(node.node_name)
    assert item.status.node_info.kubelet_version == "v1.37.2"
    assert item.status.node_info.container_runtime_version.startswith("containerd://")
    hostname = [a.address for a in item.status.addresses if a.type == "Hostname"]
    assert hostname == [node.node_name]


def test_the_kubelet_projects_a_token_the_api_server_signed(node: NodeCluster, webhook_image: str) -> None:
    with node.api_client() as api, namespace(api, "node-token") as ns:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "token"},
               "spec": {"hostNetwork": True, "restartPolicy": "Never",
                        "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
                        "containers": [{"name": "app", "image": webhook_image, "imagePullPolicy": "Never",
                                        "command": ["python", "-c",
                                                    "print(open('/var/run/secrets/azure/tokens/t').read())"],
                                        "volumeMounts": [{"name": "t", "mountPath": "/var/run/secrets/azure/tokens",
                                                          "readOnly": True}]}],
                        "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": AUDIENCE, "expirationSeconds": 3600, "path": "t"}}]}}]}}
        client.CoreV1Api(api).create_namespaced_pod(ns, pod)
        wait_pod_phase(api, ns, "token", {"Succeeded"})
        token = logs(api, ns, "token").strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == [AUDIENCE]
    assert claims["iss"] == node.apiserver.issuer
    assert claims["sub"] == f"system:serviceaccount:{ns}:default"
    assert claims["kubernetes.io"]["node"]["name"] == node.node_name, json.dumps(claims)
