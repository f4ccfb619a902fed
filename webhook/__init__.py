"""Azure Workload Identity mutating admission webhook."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# Written into the package by the compiled build (setup.py, WI_WEBHOOK_COMPILE=1): the sha256 of the source each
# compiled module was built from.
COMPILED_RECORD = "_compiled.json"


def stale_extensions(package: Path) -> list[str]:
    """Compiled modules in `package` that would run instead of a source they were not built from.

    Python's import system prefers `mutation.cpython-311-x86_64-linux-gnu.so` to `mutation.py` in the same
    directory, so an extension module left in a checkout (a manual `mypyc webhook/mutation.py`, an in-place build)
    would silently shadow every later edit of the source. The compiled wheel keeps the sources beside the extensions
    and records their hashes; an extension whose source is present but unrecorded, or recorded with another hash,
    is stale. An extension without a source beside it shadows nothing.
    """
    extensions: list[str] = []
    for path in package.iterdir():
        suffix = next((s for s in EXTENSION_SUFFIXES if path.name.endswith(s)), None)
        if suffix and (package / (path.name[: -len(suffix)] + ".py")).is_file():
            extensions.append(path.name[: -len(suffix)])
    if not extensions:
        return []  # the usual case: pure Python (development, default install)
    import hashlib
    import json

    record = package / COMPILED_RECORD
    sources: dict[str, str] = json.loads(record.read_text())["sources"] if record.is_file() else {}
    return sorted(name for name in extensions
                  if sources.get(name) != hashlib.sha256((package / f"{name}.py").read_bytes()).hexdigest())


_stale = stale_extensions(Path(__file__).resolve().parent)
if _stale:
    raise ImportError(
        f"compiled module(s) {', '.join(_stale)} in {Path(__file__).resolve().parent} would run instead of their "
        "source (edited since, or never recorded by a compiled build). The compiled build is only ever made as a "
        "wheel (WI_WEBHOOK_COMPILE=1, see setup.py); delete the extension modules (in a checkout: "
        "git clean -fX webhook) or reinstall the wheel.")
