"""The one exception the CLI turns into `wi-webhook: <message>` and exit code 2 ("the command could not run").

Kept in its own module so that every CLI helper (argument parsing, the Kubernetes client, `check`) can raise it
without importing webhook.cli.main, which imports them.
"""

from __future__ import annotations

from collections.abc import Sequence


class UsageError(Exception):
    """Bad input or configuration: printed as `wi-webhook: <message>` with exit code 2. The message names the
    file, flag or server at fault and says how to fix it."""


def one_line(message: object) -> str:
    """A message from a library (a YAML parser's, an OS error's) on one line, as CI logs show them best."""
    return " ".join(str(message).split())


def require_stdin(paths: Sequence[str], flag: str) -> None:
    """`-f -` with no standard input (closed, or detached as in some CI runners) is a usage error, not a crash."""
    import sys

    if "-" in paths and (sys.stdin is None or sys.stdin.closed):
        raise UsageError(f"{flag} -: there is no standard input to read manifests from; pipe them in (helm template "
                         f". | wi-webhook ... {flag} -) or pass a file or directory")
