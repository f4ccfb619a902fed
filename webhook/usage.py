"""The one exception the CLI turns into `wi-webhook: <message>` and exit code 2 ("the command could not run").

Kept in its own module so that every CLI helper (argument parsing, the Kubernetes client, `check`) can raise it
without importing webhook.cli, which imports them.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input or configuration: printed as `wi-webhook: <message>` with exit code 2. The message names the
    file, flag or server at fault and says how to fix it."""
