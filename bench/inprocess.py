"""The handler's own cost per review, in process: no TLS, no HTTP, no event loop wake-ups (for bench/run.py).

Runs `AdmissionHandler.review` (the code `serve` runs per review, default configuration) and the baseline handler's
work (bench/baseline.py: decode the review, encode an allow) on the same reviews, alternating in short blocks so
that a drift in the host's speed hits both alike, and prints one JSON object: microseconds per review for each (its
fastest block), the median over blocks of handler / baseline (the figure that survives this host's drift, which
reaches 2x between blocks) and the reply sizes. What the server adds on top (TLS, aiohttp, the kernel, and the
cost of a larger reply) is the difference between this and the saturation figures. Run by bench/run.py with this
environment's Python (the sources) and with the compiled build's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from baseline import allow, webhook_handler

from webhook.handler import AdmissionHandler

ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generated-name characters


def reviews(template: bytes, count: int) -> list[bytes]:
    """The template with {{uid}}, {{seq}} and {{rand5}} filled per review, as bench/loadgen fills them."""
    rng = random.Random(0)
    return [template.replace(b"{{uid}}", str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode())
            .replace(b"{{seq}}", str(seq).encode())
            .replace(b"{{rand5}}", "".join(rng.choices(ALPHABET, k=5)).encode()) for seq in range(count)]


async def baseline(body: bytes) -> bytes:
    return allow(body)


async def per_review(answer: Callable[[bytes], Awaitable[bytes]], bodies: list[bytes]) -> float:
    started = time.perf_counter()
    for body in bodies:
        await answer(body)
    return (time.perf_counter() - started) / len(bodies) * 1e6


async def measure(handler: AdmissionHandler, bodies: list[bytes], blocks: int) -> dict[str, float]:
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(blocks):
        theirs.append(await per_review(baseline, bodies))
        ours.append(await per_review(handler.review, bodies))
    return {"baseline_us": min(theirs), "handler_us": min(ours),
            "ratio": statistics.median(mine / base for mine, base in zip(ours, theirs, strict=True)),
            "baseline_reply_bytes": len(await baseline(bodies[0])), "reply_bytes": len(await handler.review(bodies[0]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--body", required=True, type=Path, help="review template, as for bench/loadgen")
    parser.add_argument("--objects", required=True, help="ServiceAccount manifests")
    parser.add_argument("--reviews", type=int, default=2000, help="reviews per block")
    parser.add_argument("--blocks", type=int, default=15)
    args = parser.parse_args()
    handler = webhook_handler(args.objects)
    bodies = reviews(args.body.read_bytes(), args.reviews)
    print(json.dumps(asyncio.run(measure(handler, bodies, args.blocks))))


if __name__ == "__main__":
    main()
