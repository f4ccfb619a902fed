"""The baseline for bench/run.py: a bare aiohttp + orjson handler that decodes the review and allows it.

Same TLS setup, same body limit, same response shape and the same event loop as the webhook (uvloop when it is
installed, as `wi-webhook serve --event-loop auto` does), and nothing else: the ceiling the webhook's own work is
measured against. On the default asyncio loop the same handler costs about a fifth more CPU per review (asyncio's
TLS transport is Python, uvloop's is C), so a baseline on another loop than the webhook's would flatter the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from webhook.handler import AdmissionHandler


async def mutate(request: web.Request) -> web.Response:
    return web.Response(body=allow(await request.read()), content_type="application/json")


def allow(body: bytes) -> bytes:
    """The baseline's whole work per review: decode it, encode an allow (also timed by bench/inprocess.py)."""
    review = orjson.loads(body)
    answer = {"apiVersion": review["apiVersion"], "kind": "AdmissionReview",
              "response": {"uid": review["request"]["uid"], "allowed": True, **PATCH}}
    return orjson.dumps(answer)


def webhook_handler(objects: str) -> AdmissionHandler:
    """The webhook's AdmissionHandler as `serve` builds it with the default configuration (AZURE_TENANT_ID from the
    environment), its ServiceAccounts from the manifests `objects`: for the probes, not for the baseline itself,
    hence imported here and not at the top."""
    import os

    from webhook.config import ServeOptions, build_mutation_config
    from webhook.handler import AdmissionHandler
    from webhook.manifests import load
    from webhook.serviceaccounts import StaticServiceAccounts

    config = build_mutation_config(ServeOptions(), os.environ, native_sidecar=False)
    return AdmissionHandler(config, StaticServiceAccounts.from_manifests(load([objects])))


PATCH: dict[str, str] = {}  # --patch-bytes: a fixed patch, so that the reply is as large as the webhook's


def fixed_patch(size: int) -> dict[str, str]:
    """A JSON Patch whose base64 text is about `size` bytes: one annotation added (never applied; only its size
    matters, to tell the cost of a larger reply from the cost of computing it)."""
    if size <= 0:
        return {}
    op = [{"op": "add", "path": "/metadata/annotations/bench", "value": "x" * max(size * 3 // 4 - 60, 0)}]
    return {"patchType": "JSONPatch", "patch": base64.b64encode(orjson.dumps(op)).decode()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-dir", required=True)
    parser.add_argument("--reuse-port", action="store_true", help="for several baseline processes on one port")
    parser.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                        help="as wi-webhook serve: uvloop when installed (auto)")
    parser.add_argument("--patch-bytes", type=int, default=0,
                        help="answer with a fixed patch of about this many base64 bytes (the reply-size control)")
    parser.add_argument("--handler-calls", type=int, default=0, metavar="N",
                        help="a probe, not the baseline: answer with the webhook's own AdmissionHandler (default "
                             "configuration), called N times per request on the same body; needs --objects")
    parser.add_argument("--objects", help="with --handler-calls: the ServiceAccount manifests")
    args = parser.parse_args()
    PATCH.update(fixed_patch(args.patch_bytes))
    answer = mutate if args.handler_calls <= 0 else handler_probe(args.handler_calls, args.objects)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(f"{args.cert_dir}/tls.crt", f"{args.cert_dir}/tls.key")
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/mutate-v1-pod", answer)
    web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=context, access_log=None, print=None,
                reuse_port=args.reuse_port or None, loop=event_loop(args.event_loop))


def handler_probe(calls: int, objects: str | None) -> Callable[[web.Request], Awaitable[web.Response]]:
    """This server with the webhook's handler in place of the bare one: the same process, TLS, aiohttp app and loop
    as the baseline, so its ratio shows what the handler costs where it runs (not `serve`'s own plumbing); and with
    N > 1, what each further call costs when it follows the first on the same body."""
    if not objects:
        raise SystemExit("--handler-calls needs --objects (the ServiceAccount manifests)")
    handler = webhook_handler(objects)

    async def probe(request: web.Request) -> web.Response:
        body = await request.read()
        for _ in range(calls - 1):
            await handler.review(body)
        return web.Response(body=await handler.review(body), content_type="application/json")

    return probe


def event_loop(choice: str) -> asyncio.AbstractEventLoop:
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--event-loop uvloop: the uvloop package is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    main()
