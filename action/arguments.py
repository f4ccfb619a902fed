"""`wi-webhook check`'s arguments for the action's inputs (action.yml), printed NUL-separated for bash's
`mapfile -d ''`: `-f` for each manifest, `--objects`, `--policy`, `--warnings-as-errors`.

Inputs come from the environment: PATHS and OBJECTS (files, directories or globs, separated by spaces or newlines),
POLICY, WARNINGS_AS_ERRORS (true or false).

`check` exits 2 on any document that is not a Kubernetes object (no apiVersion or kind), and the default `paths: .`
holds the repository's workflows. So a directory is searched here, as check would search it (.yaml, .yml, .json,
recursively), for Kubernetes manifests: files that parse and hold a document with apiVersion and kind. Other files
(workflows, Chart.yaml, tsconfig.json, Helm templates that are not YAML until rendered) and hidden directories are
skipped. A directory with no manifest is given to check as it is, which then says there is nothing to check (exit 2:
a mistyped path must not pass CI); a file named in `paths` is always given to check, which names what is wrong
with it.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import yaml

SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class InputError(ValueError):
    """An input the action cannot use; the message names it."""


def is_manifest(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as stream:
            return any(isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc
                       for doc in yaml.load_all(stream, Loader=_Loader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def manifests(path: str) -> list[str]:
    """A file as given; a directory's Kubernetes manifests in check's order, or the directory when it has none."""
    if not os.path.isdir(path):
        return [path]
    found: list[Path] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root, f) for f in files if f.endswith(SUFFIXES))
    return [str(p) for p in sorted(found) if is_manifest(p)] or [path]


def words(value: str) -> list[str]:
    """Paths separated by spaces or newlines; a glob expands to what it matches (kept as it is if nothing does)."""
    expanded: list[str] = []
    for word in value.split():
        matches = sorted(glob.glob(word, recursive=True)) if glob.has_magic(word) else []
        expanded.extend(matches or [word])
    return expanded


def check_arguments(environ: dict[str, str]) -> list[str]:
    args: list[str] = []
    paths = words(environ.get("PATHS", "")) or ["."]
    for path in paths:
        for manifest in manifests(path):
            args += ["-f", manifest]
    for objects in words(environ.get("OBJECTS", "")):
        args += ["--objects", objects]
    if environ.get("POLICY", "").strip():
        args += ["--policy", environ["POLICY"].strip()]
    flag = environ.get("WARNINGS_AS_ERRORS", "").strip().lower()
    if flag not in ("", "true", "false"):
        raise InputError(f"warnings-as-errors: {flag!r} is not true or false")
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
