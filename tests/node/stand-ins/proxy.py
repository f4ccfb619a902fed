#!/usr/bin/env python3
"""Stand-in for the reference's azwi-proxy image (mcr.microsoft.com/oss/azure/workload-identity/proxy), which cannot
be pulled here: it accepts the same flags, serves on 127.0.0.1:<proxy-port> in the pod's network namespace, and
`--probe` (the injected postStart hook) succeeds once it listens. The tests check that a real kubelet runs the
container spec the webhook injects (classic or native sidecar), not the proxy's token exchange."""

import argparse
import http.server
import socket
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--proxy-port", type=int, default=8000)
parser.add_argument("--log-level", default="")
parser.add_argument("--probe", action="store_true")
args = parser.parse_args()

if args.probe:
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", args.proxy_port), timeout=1).close()
            sys.exit(0)
        except OSError:
            time.sleep(0.1)
    sys.exit(1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()


print(f"azwi-proxy stand-in listening on 127.0.0.1:{args.proxy_port}", flush=True)
http.server.HTTPServer(("127.0.0.1", args.proxy_port), Handler).serve_forever()
