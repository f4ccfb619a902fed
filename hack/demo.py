"""`make demo`: run the real webhook on the embedded default and show what it does to a pod.

Starts `wi-webhook serve` over TLS on 127.0.0.1 with ServiceAccounts from examples/demo (no cluster needed),
sends the example pod as an AdmissionReview exactly as the API server would, prints the JSON patch it answers and
the pod after the patch, then stops the server. Also shows a denial (a pod whose ServiceAccount does not exist).
"""

from __future__ import annotations

import base64
import copy
import sys
import tempfile
from pathlib import Path

import jsonpatch
import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.processes import WebhookProcess  # noqa: E402


def review(pod: dict[str, object], uid: str) -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": uid, "namespace": "demo", "operation": "CREATE", "object": pod}})


def main() -> int:
    pod = yaml.safe_load((ROOT / "examples/demo/pod.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="wi-demo-") as tmp, \
            WebhookProcess(Path(tmp), ["--objects", str(ROOT / "examples/demo/serviceaccounts.yaml"),
                                       "--log-level", "info"]) as server:
        server.wait_ready()
        print(f"wi-webhook serving https://127.0.0.1:{server.port}/mutate-v1-pod "
              f"(ready: {server.get(server.health_port, '/readyz')[1]})\n")
        status, body = server.post(review(pod, "demo-1"))
        response = orjson.loads(body)["response"]
        patch = orjson.loads(base64.b64decode(response["patch"]))
        print(f"HTTP {status}, allowed={response['allowed']}, JSON patch ({len(patch)} operations):")
        for op in patch:
            print("  " + orjson.dumps(op).decode())
        print("\nThe pod after the patch:\n")
        print(yaml.safe_dump(jsonpatch.apply_patch(copy.deepcopy(pod), patch), sort_keys=False))
        ghost = copy.deepcopy(pod)
        ghost["spec"]["serviceAccountName"] = "does-not-exist"
        denied = orjson.loads(server.post(review(ghost, "demo-2"))[1])["response"]
        print(f"A pod whose ServiceAccount is missing: allowed={denied['allowed']}, "
              f"message={denied['status']['message']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
