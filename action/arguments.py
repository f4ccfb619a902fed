"""`wi-webhook check`'s arguments for the action's inputs (action.yml), printed NUL-separated for bash's
`mapfile -d ''`: `--skip-non-manifests`, `-f` for each path, `--objects`, `--policy`, `--warnings-as-errors`.

Inputs come from the environment: PATHS and OBJECTS (files, directories or globs, separated by spaces or newlines;
PATHS defaults to `.`), POLICY, WARNINGS_AS_ERRORS (true or false; anything else is an InputError, exit 2).

check searches each directory itself (.yaml, .yml, .json, recursively, hidden directories included), and
`--skip-non-manifests` leaves out, naming them on stderr, the files that do not parse and the documents that are not
Kubernetes objects (the repository's workflows under the default `paths: .`, Chart.yaml, tsconfig.json). Helm
chart templates are not manifests until rendered, and some parse: a repository with a chart names its manifests in
`paths`. Nothing left to check (a mistyped path, a directory with no manifest) is still check's exit 2: it must
not pass CI.
"""

from __future__ import annotations

import glob
import os
import sys


class InputError(ValueError):
    """An input the action cannot use; the message names it."""


def words(value: str) -> list[str]:
    """Paths separated by spaces or newlines; a glob expands to what it matches (kept as it is if nothing does,
    for check to name)."""
    expanded: list[str] = []
    for word in value.split():
        matches = sorted(glob.glob(word, recursive=True)) if glob.has_magic(word) else []
        expanded.extend(matches or [word])
    return expanded


def check_arguments(environ: dict[str, str]) -> list[str]:
    flag = environ.get("WARNINGS_AS_ERRORS", "").strip().lower()
    if flag not in ("", "true", "false"):
        raise InputError(f"warnings-as-errors: {flag!r} is not true or false")
    args = ["--skip-non-manifests"]
    for path in words(environ.get("PATHS", "")) or ["."]:
        args += ["-f", path]
    for objects in words(environ.get("OBJECTS", "")):
        args += ["--objects", objects]
    if environ.get("POLICY", "").strip():
        args += ["--policy", environ["POLICY"].strip()]
    if flag == "true":
        args.append("--warnings-as-errors")
    return args


def main() -> int:
    try:
        args = check_arguments(dict(os.environ))
    except InputError as exc:
        print(f"wi-webhook action: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{arg}\0" for arg in args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
