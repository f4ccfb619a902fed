"""Start-up calls to the API server that `serve` needs before it can answer reviews (today: the server version, for
`--native-sidecar=auto`), retried with back-off while /healthz already answers and /readyz says what is missing.

Why not call them before starting: with the API server down the process died with a traceback (and was restarted
in a loop by the kubelet), and with it hung the call never returned, so /healthz never answered and the kubelet
killed the pod. Now the process stays up, logs each failure with its reason and retries (0.5 s doubling up to
30 s); a hung call is cut by its own request timeout (5 s) and by `timeout` here (6 s: the client may retry
inside one call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("webhook")

T = TypeVar("T")


class StartupProbe(Generic[T]):
    """One blocking call (run in a thread) retried until it succeeds; its result goes to `apply` once."""

    def __init__(self, what: str, call: Callable[[], T], apply: Callable[[T], None], *, timeout: float = 6.0,
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
        if not self.last_error:
            return False, f"waiting for {self.what}: first attempt in progress"
        return False, f"waiting for {self.what}: {self.last_error} (attempt {self.attempts})"

    def _in_thread(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[T]:
        """The call in a daemon thread of its own: one that hangs past `timeout` must not hold up the process's
        exit (asyncio.run waits for its default executor's threads)."""
        future: asyncio.Future[T] = loop.create_future()

        def settle(value: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)  # type: ignore[arg-type]

        def work() -> None:
            try:
                value = self._call()
            except BaseException as exc:  # handed to the event loop, which logs it and retries
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                    loop.call_soon_threadsafe(settle, None, exc)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, value, None)

        threading.Thread(target=work, name="startup-probe", daemon=True).start()
        return future

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.5
        while not stop.is_set():
            self.attempts += 1
            try:
                value = await asyncio.wait_for(self._in_thread(loop), self._timeout)
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


def exit_past_stuck_threads(code: int) -> None:
    """After `serve` has finished: when a thread of ours is still inside a call to an unresponsive API server (a
    watch, a live GET or a probe; daemon threads), end the process at once with `code` instead of running the
    interpreter's finalisation, which aborts (SIGABRT) when it tears OpenSSL down under such a thread. Logs and
    stdio are flushed first; nothing else is left to clean up at this point."""
    stuck = [t.name for t in threading.enumerate() if t.daemon and t.is_alive() and t is not threading.current_thread()
             and t.name.split("-")[0] in ("ServiceAccount", "Namespace", "startup", "cert")]
    if not stuck:
        return
    log.info("exiting past threads still waiting on the API server", extra={"threads": stuck})
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
