"""Start-up calls to the API server that `serve` needs before it can answer reviews (today: the server version, for
`--native-sidecar=auto`), retried with back-off while /healthz already answers and /readyz says what is missing.

Why not call them before starting: with the API server down the process died with a traceback (and was restarted
in a loop by the kubelet), and with it hung the call never returned, so /healthz never answered and the kubelet
killed the pod. Now the process stays up, logs each failure with its reason and retries (0.5 s doubling up to
30 s); a hung call is cut by its own request timeout and by `timeout` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("webhook")

T = TypeVar("T")


class StartupProbe(Generic[T]):
    """One blocking call (run in a thread) retried until it succeeds; its result goes to `apply` once."""

    def __init__(self, what: str, call: Callable[[], T], apply: Callable[[T], None], *, timeout: float = 10.0,
                 max_backoff: float = 30.0) -> None:
        self.what = what
        self._call, self._apply = call, apply
        self._timeout, self._max_backoff = timeout, max_backoff
        self.done = False
        self.last_error = ""
        self.attempts = 0

    def status(self) -> tuple[bool, str]:
        if self.done:
            return True, f"{self.what}: done"
        return False, f"waiting for {self.what}: {self.last_error or 'first attempt in progress'}" + (
            f" (attempt {self.attempts})" if self.attempts else "")

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.5
        while not stop.is_set():
            self.attempts += 1
            try:
                value = await asyncio.wait_for(loop.run_in_executor(None, self._call), self._timeout)
            except Exception as exc:
                reason = f"timed out after {self._timeout:.0f}s" if isinstance(exc, TimeoutError) else \
                    f"{type(exc).__name__}: {exc}"
                self.last_error = " ".join(reason.split())[:300]
                log.warning(f"{self.what} failed; retrying", extra={"error": self.last_error, "retry-in": backoff,
                                                                    "attempt": self.attempts})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            self._apply(value)
            self.done = True
            self.last_error = ""
            log.info(f"{self.what} done", extra={"attempts": self.attempts})
            return
