"""The baseline for bench/run.py: a bare aiohttp + orjson handler that decodes the review and allows it.

Same TLS setup, same body limit, same response shape and the same event loop as the webhook (uvloop when it is
installed, as `wi-webhook serve --event-loop auto` does), and nothing else: the ceiling the webhook's own work is
measured against. On the default asyncio loop the same handler costs about a fifth more CPU per review (asyncio's
TLS transport is Python, uvloop's is C), so a baseline on another loop than the webhook's would flatter the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import orjson
from aiohttp import web


async def mutate(request: web.Request) -> web.Response:
    return web.Response(body=allow(await request.read()), content_type="application/json")


def allow(body: bytes) -> bytes:
    """The baseline's whole work per review: decode it, encode an allow."""
    review = orjson.loads(body)
    answer = {"apiVersion": review["apiVersion"], "kind": "AdmissionReview",
              "response": {"uid": review["request"]["uid"], "allowed": True}}
    return orjson.dumps(answer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-dir", required=True)
    parser.add_argument("--reuse-port", action="store_true", help="for several baseline processes on one port")
    parser.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                        help="as wi-webhook serve: uvloop when installed (auto)")
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(f"{args.cert_dir}/tls.crt", f"{args.cert_dir}/tls.key")
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/mutate-v1-pod", mutate)
    web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=context, access_log=None, print=None,
                reuse_port=args.reuse_port or None, loop=event_loop(args.event_loop))


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
